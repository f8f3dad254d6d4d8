"""A-FINE as a training loss (``type: AFINELoss`` in a BasicSR ``train`` block).

The frozen A-FINE network (``iqa_plugin.archs.afine_arch``) scores the prediction against the target
(the reference); lower A-FINE is better, so the loss is the normalised score itself:

* ``afine_all_scale`` (default): score / 100, in (0, 1);
* ``afine_fr``, ``afine_nr``: (score + 2) / 4, in (0, 1);
* ``afine_all``: (D + 2) / 4 (D is bounded below by about -4 but not above).

Gradients flow to the prediction only; the target is detached and, when it needs no gradient, its CLIP
features are computed without building a graph.
"""
import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from iqa_plugin.archs.afine_arch import MODEL_TYPES, get_frozen_afine
from iqa_plugin.utils.loss_util import check_reduction, weighted_reduce


def normalise_afine(score, model_type):
    """Map an A-FINE term to a loss scale (see the module docstring); shape preserved."""
    if model_type == 'afine_all_scale':
        return score / 100.0
    return (score + 2.0) / 4.0


@LOSS_REGISTRY.register()
class AFINELoss(nn.Module):
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
        super().__init__()
        check_reduction(reduction)
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
        self.loss_weight = float(loss_weight)
        self.reduction = reduction
        self.model_type = model_type
        self._opts = dict(model_type=model_type, weights=weights, weights_path=weights_path,
                          clip_weights=clip_weights, clip_weights_path=clip_weights_path, size_mode=size_mode,
                          amp_dtype=amp_dtype, out_of_range=out_of_range)
        # frozen networks per device in a plain dict: never parameters or state-dict entries of the loss;
        # built now on the CPU so that missing weights fail at construction
        self._nets = {}
        self.afine(torch.device('cpu'))

    def afine(self, device):
        """The shared frozen A-FINE on ``device``."""
        key = str(torch.device(device))
        if key not in self._nets:
            self._nets[key] = get_frozen_afine(device, **self._opts)
        return self._nets[key]

    def per_image(self, pred, target=None):
        """Normalised A-FINE per image (B,), before ``loss_weight``/reduction."""
        net = self.afine(pred.device)
        ref = None if self.model_type == 'afine_nr' or target is None else target.detach()
        score = net.score(pred, ref)
        return normalise_afine(score, self.model_type)

    def forward(self, pred, target=None):
        per_image = self.per_image(pred, target)
        return weighted_reduce(per_image, self.reduction, self.loss_weight)

    def extra_repr(self):
        return f"model_type={self.model_type!r}, loss_weight={self.loss_weight}, reduction={self.reduction!r}"
