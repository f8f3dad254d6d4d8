"""MILO as a BasicSR validator: ``calculate_milo`` is ``calculate_iqa`` with ``metric: milo``
(kept so existing option files run; see ``iqa_plugin.metrics.iqa_metric``)."""
from basicsr.utils.registry import METRIC_REGISTRY

from iqa_plugin.metrics.iqa_metric import table_metric_of, calculate_iqa


OUTPUTS = ('quality_score', 'raw_error')


def _milo_metric_of(weights='milo', **opts):
    name = 'milo-pseudomos' if weights == 'milo-pseudomos' else 'milo'
    return table_metric_of(name, weights=weights, **opts)


@METRIC_REGISTRY.register()
def calculate_milo(img, img2, crop_border=0, output='quality_score', weights='milo', weights_path=None, device=None,
                   input_order='HWC', **kwargs):
    """MILO (lower is better): ``calculate_iqa`` with ``metric: milo``; ``output``: 'quality_score' or
    'raw_error'; ``weights``: 'milo' (official) or 'milo-pseudomos' (shipped)."""
    if output not in OUTPUTS:
        raise ValueError(f"calculate_milo: output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    name, _ = _milo_metric_of(weights)
    return calculate_iqa(img, img2, metric=name, crop_border=crop_border, output=output, device=device,
                         input_order=input_order, weights=weights, weights_path=weights_path, **kwargs)


calculate_milo.metric_of = _milo_metric_of
