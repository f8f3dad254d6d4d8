"""Relational IQA as a BasicSR metric (``calculate_relational``) and the validation measures of
``RelationalModel`` (``relational_map_l1``, ``relational_kendall``).

BasicSR (``basicsr.metrics.calculate_metric``) calls ``calculate_relational(img=restored, img2=gt, **opt)``
with uint8 BGR HWC arrays; the network comes from ``scoring.get_cached_metric('relational', ...)``,
built once per (weights, device) and shared with ``iqa-plugin score`` and the SR model's tensor validator.
"""
import torch
from basicsr.utils.registry import METRIC_REGISTRY

from iqa_plugin import scoring
from iqa_plugin.utils.image import bgr_uint8_to_tensor, crop_border as crop


def relational_validator(device=None, weights='relational', weights_path=None):
    """The cached ``RelationalScorer``: ``scorer(dist, ref)`` -> ordered dict of (B,) tensors."""
    device = torch.device(device) if device is not None else torch.device('cuda' if torch.cuda.is_available()
                                                                           else 'cpu')
    kwargs = {'weights': weights}
    if weights_path:
        kwargs['weights_path'] = weights_path
    return scoring.get_cached_metric('relational', device, **kwargs)


@METRIC_REGISTRY.register()
def calculate_relational(img, img2, crop_border=0, output='relational', weights='relational', weights_path=None,
                         device=None, input_order='HWC', **kwargs):
    """Relational score s(restored | gt): 0 for identical images, negative otherwise, higher is better.

    Args:
        img (ndarray): restored image, HWC BGR uint8 (BasicSR's convention).
        img2 (ndarray): ground truth, same shape.
        crop_border (int): pixels cropped from each side first.
        output (str): 'relational' (default), 'magnitude' or 'axis_<name>' (mean signed map of one axis).
        weights (str): weights entry, default the packaged 'relational'.
        weights_path (str | None): explicit weights file.
        device (str | None): default CUDA when available, else CPU.
        input_order (str): only 'HWC'.
        **kwargs: other YAML keys (``better``, ...) are ignored.

    Returns:
        float
    """
    if input_order != 'HWC':
        raise ValueError(f"calculate_relational: input_order must be 'HWC', got {input_order!r}")
    if img.shape != img2.shape:
        raise ValueError(f'calculate_relational: image shapes differ: img {img.shape} vs img2 {img2.shape}')
    scorer = relational_validator(device, weights, weights_path)
    if output not in scorer.output_names:
        raise ValueError(f"calculate_relational: output must be one of {', '.join(scorer.output_names)}, "
                         f'got {output!r}')
    img, img2 = crop(img, crop_border), crop(img2, crop_border)
    dev = next(scorer.parameters()).device
    with torch.no_grad():
        out = scorer(bgr_uint8_to_tensor(img, dev), bgr_uint8_to_tensor(img2, dev))
    return float(out[output][0])


@METRIC_REGISTRY.register()
def relational_map_l1(maps_pred, maps_true, **kwargs):
    """Mean absolute error between predicted and true signed maps (any equal shapes); lower is better."""
    if maps_pred.shape != maps_true.shape:
        raise ValueError(f'relational_map_l1: shapes differ: {tuple(maps_pred.shape)} vs {tuple(maps_true.shape)}')
    return float((maps_pred - maps_true).abs().mean())


@METRIC_REGISTRY.register()
def relational_kendall(scores, order, **kwargs):
    """Mean Kendall tau-a between scores (B, T) and a quality order (B, T) (higher = better in both)."""
    from iqa_plugin.models.relational_model import kendall_tau

    scores, order = torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(order, dtype=torch.float64)
    if scores.shape != order.shape or scores.ndim != 2:
        raise ValueError(f'relational_kendall: expected two (B, T) arrays, got {tuple(scores.shape)} and '
                         f'{tuple(order.shape)}')
    return float(kendall_tau(scores, order).mean())
