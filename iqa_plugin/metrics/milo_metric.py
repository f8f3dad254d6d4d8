"""MILO as a BasicSR validation metric (``calculate_milo``) and the batched tensor validator.

BasicSR (``basicsr.metrics.calculate_metric``) calls ``calculate_milo(img=restored, img2=gt, **opt)``
with uint8 BGR HWC arrays. The network comes from ``scoring.get_cached_metric``: built once per
(weights, device) and reused for every image and every validation.

For batched validation on tensors (the plugin's SR model) use the scorer from the scoring table::

    scorer = scoring.get_cached_metric('milo', device)        # MILOScorer, frozen, eval
    out = scorer(sr, gt)                                       # (B, 3, H, W) RGB in [0, 1]
    out['quality_score'], out['raw_error']                     # (B,) each, lower is better

``milo_validator`` below is that call with the options of ``calculate_milo``.
"""
import torch
from basicsr.utils.registry import METRIC_REGISTRY

from iqa_plugin import scoring
from iqa_plugin.utils.image import bgr_uint8_to_tensor, crop_border as crop

OUTPUTS = ('quality_score', 'raw_error')


def _metric_name(weights):
    # the table entry whose defaults match, so the cache key is shared with ``iqa-plugin score``
    return 'milo-pseudomos' if weights == 'milo-pseudomos' else 'milo'


def _default_device():
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def milo_validator(device=None, weights='milo', weights_path=None):
    """The cached batched MILO scorer (``MILOScorer``): ``scorer(dist, ref)`` -> ordered dict of (B,) tensors."""
    device = torch.device(device) if device is not None else _default_device()
    return scoring.get_cached_metric(_metric_name(weights), device, weights=weights, weights_path=weights_path)


@METRIC_REGISTRY.register()
def calculate_milo(img, img2, crop_border=0, output='quality_score', weights='milo', weights_path=None,
                   device=None, input_order='HWC', **kwargs):
    """MILO between a restored image and its ground truth (lower is better).

    Args:
        img (ndarray): restored image, HWC BGR, uint8 in [0, 255] (BasicSR's convention).
        img2 (ndarray): ground truth, same shape.
        crop_border (int): pixels cropped from each side of both images first.
        output (str): 'quality_score' (mean MILO quality map, 0 = identical) or 'raw_error'.
        weights (str): weights entry ('milo' or 'milo-pseudomos').
        weights_path (str | None): explicit weights file.
        device (str | None): default CUDA when available, else CPU.
        input_order (str): only 'HWC' is supported (BasicSR's metric images).
        **kwargs: other YAML keys (``better``, ...) are ignored.

    Returns:
        float
    """
    if output not in OUTPUTS:
        raise ValueError(f"calculate_milo: output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if input_order != 'HWC':
        raise ValueError(f"calculate_milo: input_order must be 'HWC', got {input_order!r}")
    if img.shape != img2.shape:
        raise ValueError(f'calculate_milo: image shapes differ: img {img.shape} vs img2 {img2.shape}')
    img, img2 = crop(img, crop_border), crop(img2, crop_border)
    scorer = milo_validator(device, weights, weights_path)
    dev = next(scorer.parameters()).device
    dist = bgr_uint8_to_tensor(img, dev)
    ref = bgr_uint8_to_tensor(img2, dev)
    return float(scorer(dist, ref)[output][0])
