"""A-FINE as a training loss (``type: AFINELoss`` in a BasicSR ``train`` block).

The frozen A-FINE network (``iqa_plugin.archs.afine_arch``) scores the prediction against the target
(the reference); lower A-FINE is better, so the loss is the normalised score itself:

* ``afine_all_scale`` (default): score / 100, in (0, 1);
* ``afine_fr``, ``afine_nr``: (score + 2) / 4, in (0, 1);
* ``afine_all``: (D + 2) / 4 (D is bounded below by about -4 but not above).

Gradients flow to the prediction only; the target is detached and, when it needs no gradient, its CLIP
features are computed without building a graph.
"""
from basicsr.utils.registry import LOSS_REGISTRY

from iqa_plugin.archs.afine_arch import MODEL_TYPES
from iqa_plugin.losses.frozen_iqa import FrozenIQALoss

# the scoring-table row (score range for the normalisation) of each A-FINE output
_ROWS = {'afine_all_scale': 'afine', 'afine_all': 'afine_all', 'afine_fr': 'afine_fr', 'afine_nr': 'afine_nr'}


def normalise_afine(score, model_type):
    """Map an A-FINE term to a loss scale (see the module docstring); shape preserved."""
    from iqa_plugin.scoring import get_spec

    lo, hi = get_spec(_ROWS[model_type]).score_range
    return (score - lo) / (hi - lo)


@LOSS_REGISTRY.register()
class AFINELoss(FrozenIQALoss):
    """A-FINE loss (lower A-FINE = better = lower loss).

    Args:
        loss_weight (float): multiplier.
        model_type (str): 'afine_all_scale' (default), 'afine_all', 'afine_fr' or 'afine_nr'
            (no-reference: the target is ignored).
        weights_path (str | None): explicit ``afine.pth``.
        clip_weights_path (str | None): explicit OpenAI ``ViT-B-32.pt``.
        reduction (str): 'mean', 'sum' or 'none' (per image, (B,)).
        weights (str): weights entry for A-FINE ('afine').
        clip_weights (str): weights entry for CLIP ('clip-vit-b-32', or 'none' to take the ViT from
            ``finetuned_clip`` alone).
        size_mode (str): 'resize' or 'reflect' for sizes that are not multiples of 32.
        amp_dtype (str | None): 'bf16'/'fp16' autocast of CLIP (meant for CUDA; works on CPU).
        out_of_range (str): 'clamp' (warn once, clamp), 'error' or 'ignore'.

    ``forward(pred, target)``: (B, 3, H, W) RGB in [0, 1] (target may have batch 1) -> scalar
    (or (B,) with reduction 'none').
    """

    def __init__(self, loss_weight=1.0, model_type='afine_all_scale', weights_path=None, clip_weights_path=None,
                 reduction='mean', weights='afine', clip_weights='clip-vit-b-32', size_mode='resize', amp_dtype=None,
                 out_of_range='clamp'):
        self.model_type = model_type
        name, opts = self.metric_of(model_type=model_type, weights_path=weights_path,
                                    clip_weights_path=clip_weights_path, weights=weights, clip_weights=clip_weights,
                                    size_mode=size_mode, amp_dtype=amp_dtype, out_of_range=out_of_range)
        super().__init__(name, opts, loss_weight=loss_weight, reduction=reduction, out_of_range=out_of_range)

    @classmethod
    def metric_of(cls, model_type='afine_all_scale', weights='afine', weights_path=None, clip_weights='clip-vit-b-32',
                  clip_weights_path=None, size_mode='resize', amp_dtype=None, out_of_range='clamp', **_):
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
        # the options of get_frozen_afine, so the loss and the validator share one network
        return _ROWS[model_type], dict(model_type=model_type, weights=weights, weights_path=weights_path,
                                       clip_weights=clip_weights, clip_weights_path=clip_weights_path,
                                       size_mode=size_mode, amp_dtype=amp_dtype, out_of_range=out_of_range)

    def afine(self, device):
        """The shared frozen A-FINE on ``device``."""
        return self.frozen_scorer(device)

    def per_image(self, pred, target=None):
        """Normalised A-FINE per image (B,), before ``loss_weight``/reduction."""
        net = self.afine(pred.device)
        ref = None if self.model_type == 'afine_nr' or target is None else target.detach()
        return self.normalise(net.score(pred, ref))

    def extra_repr(self):
        return super().extra_repr() + f", model_type={self.model_type!r}"
