"""No-reference IQA validators for BasicSR: ``type: calculate_nriqa`` in ``val.metrics``.

BasicSR calls ``calculate_nriqa(img=restored, img2=gt, **options)`` with uint8 BGR HWC arrays;
the reference is ignored. The metric network is built once per (metric, device, options) and
reused (``scoring.get_cached_metric``). The score is returned in the metric's own scale and
direction: set ``better: lower`` in the YAML for ``niqe`` and ``brisque``.
"""
import torch

from basicsr.utils.registry import METRIC_REGISTRY

from iqa_plugin.scoring import get_cached_metric, get_spec
from iqa_plugin.utils.image import bgr_uint8_to_tensor, crop_border as _crop


@METRIC_REGISTRY.register()
def calculate_nriqa(img, img2=None, metric='musiq', crop_border=0, weights_path=None, pretrained=True, device=None,
                    **kwargs):
    """No-reference quality of ``img``.

    Args:
        img (ndarray): restored image, HWC BGR, uint8 in [0, 255] (BasicSR's convention).
        img2: ground truth, ignored (accepted because BasicSR always passes it).
        metric (str): scoring-table name of a no-reference metric (default ``musiq``).
        crop_border (int): pixels removed from each side first.
        weights_path (str | None): explicit weights file.
        pretrained (bool): False uses random weights (tests only).
        device (str | None): default CUDA when available, else CPU.
        **kwargs: other YAML keys (``better``, ...) are ignored.
    Returns:
        float: the metric's score (its own scale; ``lower_better`` metrics: lower is better).
    """
    if get_spec(metric).kind != 'nr':
        raise ValueError(f"calculate_nriqa needs a no-reference metric; '{metric}' is full-reference")
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    opts = {'pretrained': bool(pretrained)}
    if weights_path:
        opts['weights_path'] = str(weights_path)
    scorer = get_cached_metric(metric, device=device, **opts)
    x = bgr_uint8_to_tensor(_crop(img, crop_border), device=device)
    with torch.inference_mode():
        return float(scorer(x)[scorer.output_names[0]][0])
