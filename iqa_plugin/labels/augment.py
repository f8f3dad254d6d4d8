"""Augmentation of label-free training groups (a reference patch and its N distorted versions).

``random_crop_group`` and ``augment_group`` apply the same random window / flip / rotation to a
reference batch and its groups, so the pseudo-MOS labels stay valid. Used by
``iqa_plugin.models.label_free_base.LabelFreeModel`` (the base of ``MILOPseudoMOSModel`` and
``NRLiteModel``); the ranking losses and correlations are in ``iqa_plugin.utils.ranking``.
"""
import torch


def random_crop_group(ref, dist, size, generator=None):
    """Same random ``size`` x ``size`` window of a reference batch and its groups:
    ref (B, 3, H, W), dist (B, N, 3, H, W) -> (B, 3, size, size), (B, N, 3, size, size)."""
    h, w = ref.shape[-2:]
    if size >= min(h, w):
        return ref, dist
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    return ref[..., top:top + size, left:left + size], dist[..., top:top + size, left:left + size]


def augment_group(ref, dist, generator=None):
    """Same random flip / 90-degree rotation for a reference batch and its distorted groups.

    ref (B, 3, P, P), dist (B, N, 3, P, P) -> the same shapes (square patches keep their size).
    """
    k = int(torch.randint(0, 4, (1,), generator=generator))
    flip = bool(torch.randint(0, 2, (1,), generator=generator))
    if flip:
        ref, dist = ref.flip(-1), dist.flip(-1)
    if k:
        ref, dist = torch.rot90(ref, k, (-2, -1)), torch.rot90(dist, k, (-2, -1))
    return ref.contiguous(), dist.contiguous()
