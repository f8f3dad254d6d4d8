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

import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from iqa_plugin.utils.image import prepare_pair
from iqa_plugin.utils.loss_util import check_reduction, weighted_reduce

_MODES = ('softplus', 'neg')


@LOSS_REGISTRY.register()
class RelationalLoss(nn.Module):
    """Loss from the relational score of a prediction relative to its target.

    Args:
        loss_weight (float): multiplier.
        reduction (str): 'mean' (over the batch), 'sum' or 'none' ((B,) per image).
        mode (str): 'softplus' (``softplus(-s) - log 2``) or 'neg' (``-s``).
        weights (str): weights entry, default the packaged 'relational'.
        weights_path (str | None): explicit weights file.
        out_of_range (str): inputs outside [0, 1]: 'clamp' (warn once, clamp), 'error' or 'ignore'.

    ``forward(pred, target)``: (B, 3, H, W) RGB in [0, 1], H, W >= 16 -> scalar (or (B,) with 'none').
    """

    def __init__(self, loss_weight=1.0, reduction='mean', mode='softplus', weights='relational', weights_path=None,
                 out_of_range='clamp'):
        super().__init__()
        check_reduction(reduction)
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
        if out_of_range not in ('clamp', 'error', 'ignore'):
            raise ValueError(f"out_of_range must be 'clamp', 'error' or 'ignore', got {out_of_range!r}")
        from iqa_plugin.archs.relational_arch import build_relational_net

        self.loss_weight = float(loss_weight)
        self.reduction = reduction
        self.mode = mode
        self.out_of_range = out_of_range
        # a plain attribute, not a submodule: never in parameters() or the state dict
        object.__setattr__(self, '_net', build_relational_net(weights, weights_path))
        self._net_device = torch.device('cpu')

    @property
    def net(self):
        return self._net

    def train(self, mode=True):
        super().train(mode)
        self._net.eval()  # frozen whatever the training loop asks
        return self

    def _net_on(self, device):
        if self._net_device != device:
            self._net.to(device)
            self._net_device = device
        return self._net

    def score(self, pred, target):
        """s(pred | target): (B,), differentiable with respect to ``pred``."""
        dist, ref = prepare_pair(pred, target, channels=3, min_size=16, out_of_range=self.out_of_range)
        net = self._net_on(dist.device)
        dtype = next(net.parameters()).dtype
        return net.relational_score(dist.to(dtype), ref.detach().to(dtype))

    def forward(self, pred, target):
        s = self.score(pred, target)
        per_image = F.softplus(-s) - math.log(2.0) if self.mode == 'softplus' else -s
        return weighted_reduce(per_image, self.reduction, self.loss_weight)

    def extra_repr(self):
        return f'loss_weight={self.loss_weight}, reduction={self.reduction!r}, mode={self.mode!r}'
