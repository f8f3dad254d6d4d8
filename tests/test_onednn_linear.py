"""oneDNN packed linear layers: same values and input gradients as F.linear, repacked when weights change,
never used where a weight trains or under autocast."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from iqa_plugin.utils.onednn_linear import PackedLinear, onednn_linear_available

needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason='this PyTorch build has no oneDNN linear')
EPS32 = torch.finfo(torch.float32).eps


def linear_error_bound(x, w, b=None):
    """Elementwise bound on |fl(F.linear(x, w, b)) - exact| in float32, whatever the summation order,
    blocking or FMA use (Higham, Accuracy and Stability, 3.1): gamma_K * (|x| |w|^T + |b|), with
    gamma_K = K u / (1 - K u), u = eps / 2 and K the in-features (+1 for the bias). The packed oneDNN
    product and F.linear (MKL) each satisfy it on any CPU, so they differ by at most twice it."""
    k = x.shape[-1] + (b is not None)
    u = EPS32 / 2
    gamma = k * u / (1 - k * u)
    mag = F.linear(x.double().abs(), w.double().abs(), None if b is None else b.double().abs())
    return gamma * mag


def assert_within(got, want, bound):
    err = (got.double() - want.double()).abs()
    assert (err <= bound).all(), f'max |diff| {float(err.max()):.3g}, max of (|diff| / bound) {float((err / bound).max()):.3g}'


def _packed_calls(monkeypatch):
    import iqa_plugin.utils.onednn_linear as mod

    calls = []
    real = mod._packed_forward

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(mod, '_packed_forward', counting)
    return calls


@needs_onednn
@pytest.mark.parametrize('shape', [(5, 48), (2, 7, 48), (1, 1, 48)])
def test_values_match_f_linear(shape, monkeypatch):
    calls = _packed_calls(monkeypatch)
    torch.manual_seed(0)
    w, b = torch.randn(40, 48), torch.randn(40)
    x = torch.randn(*shape)
    lin = PackedLinear()
    with torch.no_grad():
        y = lin.linear(x, w, b)
        y_nobias = lin.linear(x, w)
    assert calls, 'the oneDNN path was not taken'
    assert y.shape == (*shape[:-1], 40)
    assert_within(y, F.linear(x, w, b), 2 * linear_error_bound(x, w, b))
    assert_within(y_nobias, F.linear(x, w), 2 * linear_error_bound(x, w))
    # and far from a wrong product: one in-feature dropped moves outputs by far more than the bound
    assert not torch.allclose(y_nobias, F.linear(x[..., 1:], w[:, 1:]), atol=1e-3, rtol=0)


@needs_onednn
def test_gradient_to_input_frozen_weight(monkeypatch):
    calls = _packed_calls(monkeypatch)
    torch.manual_seed(1)
    w, b = torch.randn(16, 24), torch.randn(16)
    x = torch.randn(3, 24, requires_grad=True)
    y = PackedLinear().linear(x, w, b)
    assert calls and y.requires_grad
    (y ** 2).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (F.linear(x2, w, b) ** 2).sum().backward()
    # x.grad = 2 y w: the two y differ by <= 2 e_y (linear_error_bound), carried through |w|, and each
    # product 2 y w adds its own rounding, gamma_16 |2 y| |w| (bounded with the larger |y|)
    e_y = 2 * linear_error_bound(x.detach(), w, b)
    y_abs = F.linear(x.detach().double(), w.double(), b.double()).abs() + e_y
    k = w.shape[0]
    gamma = k * (EPS32 / 2) / (1 - k * (EPS32 / 2))
    bound = 2 * e_y @ w.double().abs() + 2 * gamma * (2 * y_abs) @ w.double().abs()
    assert_within(x.grad, x2.grad, bound)


@needs_onednn
def test_repacks_after_in_place_update():
    torch.manual_seed(2)
    w = torch.randn(8, 12)
    x = torch.randn(4, 12)
    lin = PackedLinear()
    with torch.no_grad():
        before = lin.linear(x, w)
        w.mul_(2.0)  # in-place change: the packed copy must not be stale
        after = lin.linear(x, w)
    # scaling by 2 is exact in float32 and the packed product sums in the same order: the same bits
    assert torch.equal(after, 2.0 * before)
    assert_within(after, F.linear(x, w), 2 * linear_error_bound(x, w))


def test_falls_back_where_not_exact_in_meaning(monkeypatch):
    calls = _packed_calls(monkeypatch)
    torch.manual_seed(3)
    lin = PackedLinear()
    x = torch.randn(4, 12)
    trained = torch.randn(8, 12, requires_grad=True)
    y = lin.linear(x, trained)  # a weight being trained keeps autograd's own linear
    y.sum().backward()
    assert trained.grad is not None
    with torch.no_grad():
        lin.linear(x.double(), torch.randn(8, 12, dtype=torch.float64))  # not float32
        with torch.autocast('cpu', dtype=torch.bfloat16):
            lin.linear(x, torch.randn(8, 12))  # autocast decides the dtype
        PackedLinear(enabled=False).linear(x, torch.randn(8, 12))
    assert not calls


@needs_onednn
def test_clip_tower_same_tokens_and_deepcopy():
    from iqa_plugin.archs.clip_vit_arch import CLIPVisionTower

    torch.manual_seed(4)
    tower = CLIPVisionTower(width=64, layers=2, patch_size=16, grid=2).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        fast = tower(x)
        with tower.packed_linear.disabled():
            plain = tower(x)
        assert tower.packed_linear.enabled
        copied = copy.deepcopy(tower)(x)
    # float32 rounding relative to the features' scale: each of the 2 blocks accumulates over
    # K = 64 (qkv), 64 (q.k, one head), 7 (attn.v, tokens), 64 (out proj), 64 (fc1), 256 (fc2); errors of
    # random sign give sqrt(2 * 519) * eps relative error (the parity reasoning of test_afine.py)
    rel = math.sqrt(2 * (64 + 64 + 7 + 64 + 64 + 256)) * EPS32
    for f, p, c in zip(fast, plain, copied):
        err, scale = float((f - p).abs().max()), float(p.abs().max())
        assert err <= rel * scale, (err, rel * scale)
        torch.testing.assert_close(c, f, rtol=0, atol=0)  # a deep copy repacks the same weights: same bits
    assert not any('packed' in k for k in tower.state_dict())
