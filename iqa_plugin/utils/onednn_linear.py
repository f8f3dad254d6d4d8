"""Frozen float32 linear layers on the CPU through oneDNN with pre-packed weights.

Why: on the CPUs this project is developed on (AMD Zen 2, AVX2), PyTorch's default float32 matrix
product for ``F.linear`` (MKL) reaches 65-125 GFLOP/s on two cores for a ViT-B's layer shapes,
while oneDNN with its weights reordered once into its blocked layout reaches about 160 GFLOP/s,
the same results to float32 rounding (``iqa-plugin bench afine`` measures both). PyTorch ships the
two operators used here (``torch.ops.mkldnn._reorder_linear_weight`` and
``torch.ops.mkldnn._linear_pointwise``, the ones its own CPU inference compiler emits for frozen
linear layers).

``PackedLinear.linear(x, weight, bias)`` behaves like ``F.linear``. It takes the oneDNN path only
where that is exact in meaning: CPU, float32, no autocast, and a weight that is not being trained
(``requires_grad`` False or gradients off), outside ``torch.jit.trace`` and ``torch.compile`` (which
see the plain ``F.linear``). The input may require a gradient (a frozen network used
as a loss): the backward pass is then ``grad_out @ weight`` with PyTorch's own product. Packed copies
cost as much memory as the weights themselves; they are made on first use, replaced when a weight
changes (``.to()``, ``load_state_dict``, an in-place update), and never saved in a state dict.
"""
import contextlib

import torch
import torch.nn.functional as F

_OPS = torch.ops.mkldnn


def onednn_linear_available():
    """True when this PyTorch build has oneDNN with the packed-linear operators."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(_OPS, '_linear_pointwise') \
            and hasattr(_OPS, '_reorder_linear_weight')
    except (AttributeError, RuntimeError):
        return False


_AVAILABLE = onednn_linear_available()
_PACK_HINT = 512  # rows the packing is tuned for; measured to matter little between 50 and 1600 rows


def _packed_forward(x, packed, bias, out_features):
    return _OPS._linear_pointwise(x, packed, bias, 'none', [], '').view(*x.shape[:-1], out_features)


class _PackedLinearFn(torch.autograd.Function):
    """y = x W^T + b with a packed W; gradient to x only (W and b are frozen)."""

    @staticmethod
    def forward(ctx, x, packed, weight, bias):
        ctx.save_for_backward(weight)
        return _packed_forward(x, packed, bias, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        return grad_out.matmul(weight), None, None, None


class PackedLinear:
    """Cache of oneDNN-packed weights for one module's frozen linear layers (see the module docstring).

    Args:
        enabled (bool): False always uses ``F.linear``.
    """

    def __init__(self, enabled=True):
        self.enabled = bool(enabled) and _AVAILABLE
        self._packed = {}

    def __deepcopy__(self, memo):  # packed oneDNN tensors can't be deep-copied; a copy repacks lazily
        return PackedLinear(self.enabled)

    def __getstate__(self):
        return {'enabled': self.enabled}

    def __setstate__(self, state):
        self.__init__(state.get('enabled', True))

    def clear(self):
        self._packed.clear()

    @contextlib.contextmanager
    def disabled(self):
        """Use plain ``F.linear`` inside the block (e.g. to compare with it or to count its FLOPs)."""
        enabled, self.enabled = self.enabled, False
        try:
            yield self
        finally:
            self.enabled = enabled

    def usable(self, x, weight, bias=None):
        frozen = [weight] if bias is None else [weight, bias]
        return (self.enabled and x.device.type == 'cpu' and weight.device.type == 'cpu'
                and x.dtype == torch.float32 and all(t.dtype == torch.float32 for t in frozen)
                and not (torch.is_grad_enabled() and any(t.requires_grad for t in frozen))
                and not torch.is_autocast_enabled('cpu') and x.shape[-1] == weight.shape[1] and x.numel() > 0
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling())  # tracers/compilers: plain ops

    def packed(self, weight):
        key = id(weight)
        stamp = (weight.data_ptr(), weight._version, tuple(weight.shape))
        entry = self._packed.get(key)
        if entry is None or entry[0] != stamp:
            with torch.no_grad():
                entry = (stamp, _OPS._reorder_linear_weight(weight.detach(), _PACK_HINT))
            self._packed[key] = entry
        return entry[1]

    def linear(self, x, weight, bias=None):
        """``F.linear(x, weight, bias)`` for x (..., in) -> (..., out), through oneDNN when usable."""
        if not self.usable(x, weight, bias):
            return F.linear(x, weight, bias)
        packed = self.packed(weight)
        bias = None if bias is None else bias.detach()
        if torch.is_grad_enabled() and x.requires_grad:
            return _PackedLinearFn.apply(x, packed, weight.detach(), bias)
        return _packed_forward(x, packed, bias, weight.shape[0])
