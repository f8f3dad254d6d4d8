"""Relational IQA as a training loss (``RelationalLoss``).

With ``s = s(pred | target)`` the relational score (``iqa_plugin.archs.relational_arch``; 0 when
``pred == target``, negative otherwise, higher is better):

* ``mode='softplus'`` (default): ``loss = softplus(-s) - log 2`` per image: 0 at ``pred == target``,
  about ``-s`` for large errors and with a gradient that never vanishes;
* ``mode='neg'``: ``loss = -s``.

The relational network is frozen (eval mode, ``requires_grad`` False), kept out of ``parameters()`` and
the state dict, and stays in eval mode when ``.train()`` is called on the loss. Gradients flow to ``pred``.
"""
import math

import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY

from iqa_plugin import scoring
from iqa_plugin.losses.frozen_iqa import FrozenIQALoss

_MODES = ('softplus', 'neg')


@LOSS_REGISTRY.register()
class RelationalLoss(FrozenIQALoss):
    """Loss from the relational score of a prediction relative to its target.

    Args:
        loss_weight (float): multiplier.
        reduction (str): 'mean' (over the batch), 'sum' or 'none' ((B,) per image).
        mode (str): 'softplus' (``softplus(-s) - log 2``) or 'neg' (``-s``).
        weights (str): weights entry, default the packaged 'relational'.
        weights_path (str | None): explicit weights file.
        out_of_range (str): inputs outside [0, 1]: 'clamp' (straight-through; warned on the first call),
            'error' or 'ignore' (``FrozenIQALoss``).

    ``forward(pred, target)``: (B, 3, H, W) RGB in [0, 1], H, W >= 16 -> scalar (or (B,) with 'none').
    """

    def __init__(self, loss_weight=1.0, reduction='mean', mode='softplus', weights='relational', weights_path=None,
                 out_of_range='clamp'):
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
        self.mode = mode
        super().__init__(*self.metric_of(weights=weights, weights_path=weights_path), loss_weight=loss_weight,
                         reduction=reduction, out_of_range=out_of_range)

    @classmethod
    def metric_of(cls, weights='relational', weights_path=None, **_):
        return 'relational', {'weights': weights, 'weights_path': weights_path}

    @property
    def net(self):
        """The shared frozen ``RelationalIQANet`` on the CPU."""
        return self.frozen_scorer('cpu').net

    def score(self, pred, target):
        """s(pred | target): (B,), differentiable with respect to ``pred``; float32, outside autocast."""
        dist, ref = self.prepare_pair(pred, target, channels=3, min_size=16)
        net = self.frozen_scorer(dist.device).net
        dtype = next(net.parameters()).dtype
        with scoring.float32_scoring(dist.device.type):
            return net.relational_score(dist.to(dtype), ref.detach().to(dtype))

    def per_image(self, pred, target):
        s = self.score(pred, target)
        return F.softplus(-s) - math.log(2.0) if self.mode == 'softplus' else -s

    def extra_repr(self):
        return super().extra_repr() + f', mode={self.mode!r}'
