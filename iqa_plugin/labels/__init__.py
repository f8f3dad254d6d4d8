"""Label-free training data: ``distortions/`` (the distortion engine: ops, masks, engine, its ``python -m``
benchmark), ``pseudomos`` (the pseudo-MOS cache builder, ``python -m iqa_plugin.labels.pseudomos``),
``pseudomos_ensemble`` (the ensemble of frozen metrics that labels it), ``pseudomos_cache`` (its file format)
and ``augment`` (group augmentation of a distortion group). Imports nothing at package import.
"""
