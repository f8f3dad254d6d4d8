"""Relational IQA as a BasicSR validator (``calculate_relational``: ``calculate_iqa`` with ``metric: relational``,
kept so existing option files run) and the validation measures of ``RelationalModel`` (``relational_map_l1``,
``relational_kendall``)."""
import torch
from basicsr.utils.registry import METRIC_REGISTRY

from iqa_plugin.metrics.iqa_metric import table_metric_of, calculate_iqa


def _relational_metric_of(weights='relational', weights_path=None, **opts):
    return table_metric_of('relational', weights=weights, weights_path=weights_path, **opts)


@METRIC_REGISTRY.register()
def calculate_relational(img, img2, crop_border=0, output='relational', weights='relational', weights_path=None,
                         device=None, input_order='HWC', **kwargs):
    """Relational score s(restored | gt) (higher is better, 0 = identical): ``calculate_iqa`` with
    ``metric: relational``; ``output``: 'relational', 'magnitude' or 'axis_<name>'."""
    return calculate_iqa(img, img2, metric='relational', crop_border=crop_border, output=output, device=device,
                         input_order=input_order, weights=weights, weights_path=weights_path, **kwargs)


calculate_relational.metric_of = _relational_metric_of


@METRIC_REGISTRY.register()
def relational_map_l1(maps_pred, maps_true, **kwargs):
    """Mean absolute error between predicted and true signed maps (any equal shapes); lower is better."""
    if maps_pred.shape != maps_true.shape:
        raise ValueError(f'relational_map_l1: shapes differ: {tuple(maps_pred.shape)} vs {tuple(maps_true.shape)}')
    return float((maps_pred - maps_true).abs().mean())


@METRIC_REGISTRY.register()
def relational_kendall(scores, order, **kwargs):
    """Mean Kendall tau-a between scores (B, T) and a quality order (B, T) (higher = better in both)."""
    from iqa_plugin.utils.ranking import kendall_tau

    scores, order = torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(order, dtype=torch.float64)
    if scores.shape != order.shape or scores.ndim != 2:
        raise ValueError(f'relational_kendall: expected two (B, T) arrays, got {tuple(scores.shape)} and '
                         f'{tuple(order.shape)}')
    return float(kendall_tau(scores, order).mean())
