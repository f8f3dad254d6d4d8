"""The distortion engine: graded, seeded image distortions with signed per-axis intensity maps.

Everything that trains a metric label-free (MILO on pseudo-MOS, the relational networks, ``nr-lite``)
draws its training pairs from here. See ``docs/distortions.md`` for the parameter of each operation
at each level, the axes and the measured speed.

Modules (this package re-exports their public names):

* ``ops``: the operations ``fn(img, severity, rng)`` and their table ``OPS`` (``OpSpec``);
* ``masks``: smooth random spatial masks (``random_mask``, ``MASK_KINDS``);
* ``engine``: the axes and levels, ``apply`` (one deterministic operation), ``DistortionEngine``
  (seeded plans, rendering, ordinal tiers) and numpy <-> torch conversion;
* ``cli``: ``python -m iqa_plugin.labels.distortions`` (throughput, or ``--table`` of parameters per level).

Conventions
-----------
* Images are float32 numpy arrays, HWC, RGB, values in [0, 1]; every operation returns the same
  shape, dtype and range. ``sample_tensor`` wraps the engine for (3, H, W) torch tensors.
* ``severity`` is a float in [0, 1]: 0 leaves the image untouched, 1 is the strongest setting.
  The five graded levels 1..5 are severities 0.2, 0.4, 0.6, 0.8, 1.0 (``severity_of_level``).
* Each distorted image comes with ``maps``, a float32 (K, H, W) array, K = ``len(AXES)``: the signed
  intensity of the distortion on each axis relative to the reference. One operation with severity
  ``s`` adds ``sign * weight * s * mask`` on each of its axes (``OPS[name].axes``), where ``mask`` is
  1 everywhere for a global operation and a smooth (H, W) field in [0, 1] for a spatially varying one
  (0 where the image is untouched). Operations applied in sequence add on their axes, so values lie
  in [-max_ops, max_ops].
* Randomness comes only from ``numpy.random.Generator`` objects passed in (or the engine's own,
  seeded at construction): the global numpy / torch / random states are never read or changed.
"""
from iqa_plugin.labels.distortions.cli import level_table, main, smooth_test_image
from iqa_plugin.labels.distortions.engine import (AXES, AXIS_INDEX, AXIS_SIGNS, LEVELS, DistortionEngine, OpCall, apply,
                                           check_image, image_to_tensor, plan_from_info, severity_of_level,
                                           tensor_to_image)
from iqa_plugin.labels.distortions.masks import MASK_KINDS, random_mask
from iqa_plugin.labels.distortions.ops import DEFAULT_TYPES, OPS, OpSpec

__all__ = ['AXES', 'AXIS_INDEX', 'AXIS_SIGNS', 'DEFAULT_TYPES', 'LEVELS', 'MASK_KINDS', 'OPS', 'DistortionEngine',
           'OpCall', 'OpSpec', 'apply', 'check_image', 'image_to_tensor', 'level_table', 'main', 'plan_from_info',
           'random_mask', 'severity_of_level', 'smooth_test_image', 'tensor_to_image']
