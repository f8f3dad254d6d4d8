"""A-FINE validator for BasicSR: ``type: calculate_afine`` in ``val.metrics`` (set ``better: lower``).

BasicSR calls ``calculate_afine(img=restored, img2=gt, **options)`` with uint8 BGR HWC arrays. The
network is built once per (options, device) and reused (``scoring.get_cached_metric``, shared with
``AFINELoss`` when the options match); the encodings of the references are kept between calls
(``ref_cache_mib``).
"""
import torch
from basicsr.utils.registry import METRIC_REGISTRY

from iqa_plugin.archs.afine_arch import MODEL_TYPES, get_frozen_afine
from iqa_plugin.utils.image import bgr_uint8_to_tensor
from iqa_plugin.utils.image import crop_border as _crop


@METRIC_REGISTRY.register()
def calculate_afine(img, img2=None, model_type='afine_all_scale', crop_border=0, weights_path=None,
                    clip_weights_path=None, weights='afine', clip_weights='clip-vit-b-32', size_mode='resize',
                    ref_cache_mib=256, device=None, **kwargs):
    """A-FINE of ``img`` against the reference ``img2`` (lower is better).

    Args:
        img (ndarray): restored image, HWC BGR uint8 (BasicSR's convention).
        img2 (ndarray | None): reference (ground truth), same size; not needed for ``afine_nr``.
        model_type (str): 'afine_all_scale' (0-100, default), 'afine_all', 'afine_fr' or 'afine_nr'.
        crop_border (int): pixels removed from each side of both images first.
        weights_path, clip_weights_path (str | None): explicit ``afine.pth`` / ``ViT-B-32.pt``.
        weights, clip_weights (str): weights-manager entries ('afine', 'clip-vit-b-32'; 'none' skips CLIP).
        size_mode (str): 'resize' or 'reflect' for sizes that are not multiples of 32.
        ref_cache_mib (float): MiB of reference encodings kept between calls (BasicSR scores the same
            ground truths at every validation, so later rounds encode only the restored images);
            about 12 MiB per 512x512 reference. 0 disables it.
        device (str | None): default CUDA when available, else CPU.
        **kwargs: other YAML keys (``better``, ...) are ignored.
    Returns:
        float: the score of the chosen term.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    net = get_frozen_afine(device, model_type=model_type, weights=weights, weights_path=weights_path,
                           clip_weights=clip_weights, clip_weights_path=clip_weights_path, size_mode=size_mode)
    net.ref_cache.ensure(ref_cache_mib)
    dist = bgr_uint8_to_tensor(_crop(img, crop_border), device=device)
    ref = None
    if model_type != 'afine_nr':
        if img2 is None:
            raise ValueError(f"calculate_afine with model_type '{model_type}' needs the reference img2")
        ref = bgr_uint8_to_tensor(_crop(img2, crop_border), device=device)
    with torch.inference_mode():
        return float(net.score(dist, ref)[0])


# ------------------------------------------------------------------------------------------------
# pairwise (2AFC) validators of AFINEModel: called with the scores of a whole validation set

def _as_tensor(x):
    return x.detach().float().flatten().cpu() if torch.is_tensor(x) else torch.as_tensor(x, dtype=torch.float32).flatten()


@METRIC_REGISTRY.register()
def calculate_2afc_accuracy(d1, d2, label, **kwargs):
    """2AFC accuracy of lower-is-better scores ``d1``, ``d2`` (N,) against labels P(first better) (N,).

    Pairs labelled 0.5 (ties) are skipped; a predicted tie counts as half correct. NaN when no pair
    is left. ``**kwargs`` (``better``) are ignored. Higher is better.
    """
    d1, d2, label = _as_tensor(d1), _as_tensor(d2), _as_tensor(label)
    keep = label != 0.5
    if not bool(keep.any()):
        return float('nan')
    d1, d2, label = d1[keep], d2[keep], label[keep]
    pred_first = (d1 < d2).float() + 0.5 * (d1 == d2).float()
    truth_first = (label > 0.5).float()
    return float((pred_first * truth_first + (1 - pred_first) * (1 - truth_first)).mean())


@METRIC_REGISTRY.register()
def calculate_pairwise_fidelity(d1, d2, label, **kwargs):
    """Mean fidelity loss of the Thurstone probabilities Phi((d2 - d1)/sqrt 2) against ``label``; lower is better."""
    from iqa_plugin.archs.afine_arch import fidelity_loss, thurstone_prob

    d1, d2, label = _as_tensor(d1), _as_tensor(d2), _as_tensor(label)
    return float(fidelity_loss(thurstone_prob(d1, d2), label).mean())
