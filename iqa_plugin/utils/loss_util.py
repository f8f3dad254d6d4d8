"""Helpers shared by the plugin's losses."""

REDUCTIONS = ('mean', 'sum', 'none')


def check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    return reduction


def weighted_reduce(per_image, reduction, loss_weight):
    """``loss_weight * reduce(per_image)``: per_image is (B,); 'none' keeps it (B,)."""
    if reduction == 'mean':
        per_image = per_image.mean()
    elif reduction == 'sum':
        per_image = per_image.sum()
    return loss_weight * per_image
