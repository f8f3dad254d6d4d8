"""No-reference validators for BasicSR: ``calculate_nriqa`` is ``calculate_iqa`` with a no-reference
``metric`` (kept so existing option files run; see ``iqa_plugin.metrics.iqa_metric``). The score is in
the metric's own scale and direction."""
from basicsr.utils.registry import METRIC_REGISTRY

from iqa_plugin import scoring
from iqa_plugin.metrics.iqa_metric import table_metric_of, calculate_iqa


def _nriqa_metric_of(metric='musiq', weights_path=None, pretrained=True, **opts):
    if scoring.get_spec(metric).kind != 'nr':
        raise ValueError(f"calculate_nriqa needs a no-reference metric; '{metric}' is full-reference")
    return table_metric_of(metric, weights_path=weights_path, pretrained=bool(pretrained), **opts)


@METRIC_REGISTRY.register()
def calculate_nriqa(img, img2=None, metric='musiq', crop_border=0, weights_path=None, pretrained=True, device=None,
                    **kwargs):
    """No-reference quality of ``img`` (the reference is ignored): ``calculate_iqa`` with a no-reference
    ``metric``; the score is in the metric's own scale and direction."""
    name, opts = _nriqa_metric_of(metric, weights_path, pretrained)
    return calculate_iqa(img, None, metric=name, crop_border=crop_border, device=device, **opts, **kwargs)


calculate_nriqa.metric_of = _nriqa_metric_of
