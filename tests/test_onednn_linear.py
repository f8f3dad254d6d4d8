"""oneDNN packed linear layers: same values and input gradients as F.linear, repacked when weights change,
never used where a weight trains or under autocast."""
import copy

import pytest
import torch
import torch.nn.functional as F

from iqa_plugin.utils.onednn_linear import PackedLinear, onednn_linear_available

needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason='this PyTorch build has no oneDNN linear')


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
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_nobias, F.linear(x, w), rtol=1e-5, atol=1e-5)


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
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)


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
    torch.testing.assert_close(after, 2.0 * before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after, F.linear(x, w), rtol=1e-5, atol=1e-5)


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
    for f, p, c in zip(fast, plain, copied):
        torch.testing.assert_close(f, p, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c, f, rtol=0, atol=0)
    assert not any('packed' in k for k in tower.state_dict())
