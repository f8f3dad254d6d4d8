"""``calculate_multigt``: a full-reference validator averaged over every positive ground truth (HGGT's protocol).

The multi-GT models (``iqa_plugin.models.multigt_model``) rewrite each full-reference ``val.metrics`` block
``{type: T, ...}`` into ``{type: calculate_multigt, metric_type: T, ...}`` when the validation data carries
labelled candidates. For every validation image the model records its positive ground truths
(``val_tensors`` extra ``gt_positives``); this function calls metric ``T`` once against each of them and
returns the mean (per image; BasicSR then averages over images). An image without a positive is scored
against its original, as ``T`` alone would. No-reference blocks are left as they are.
"""
import numpy as np
from basicsr.metrics import calculate_metric
from basicsr.utils import tensor2img
from basicsr.utils.registry import METRIC_REGISTRY

from iqa_plugin.utils import val_tensors


@METRIC_REGISTRY.register()
def calculate_multigt(img, img2=None, metric_type=None, **opts):
    """Mean of ``metric_type`` between ``img`` and each positive ground truth (uint8 BGR HWC arrays).

    Args:
        img (ndarray): restored image; img2 (ndarray): the original ground truth (used when there is no
            positive). metric_type (str): the registered full-reference metric. **opts: its options.
    Returns:
        float
    """
    if not metric_type:
        raise ValueError('calculate_multigt needs metric_type: NAME (a registered full-reference metric)')
    positives = val_tensors.extras(img).get('gt_positives') or []
    block = {'type': metric_type, **opts}
    if not positives:
        return calculate_metric({'img': img, 'img2': img2}, block)
    values = []
    for gt in positives:  # (1, 3, H, W) in [0, 1]
        with val_tensors.substitute_gt(gt):
            values.append(float(calculate_metric({'img': img, 'img2': tensor2img([gt])}, block)))
    return float(np.mean(values))


def _metric_of(metric_type=None, **opts):
    fn = METRIC_REGISTRY.get(metric_type) if metric_type in METRIC_REGISTRY else None
    return fn.metric_of(**opts) if hasattr(fn, 'metric_of') else None


calculate_multigt.metric_of = _metric_of
