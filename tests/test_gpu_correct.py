"""GPU-correct by construction, tested on a CPU (cache keys, precision, host syncs).

* one cache entry per device: ``'cuda'``, ``'cuda:0'`` and the current CUDA device are one network, and the
  CPU copy a loss builds at construction (the pre-flight) is released once the scorer lives elsewhere;
* frozen scorers run in float32 outside autocast: under CPU bfloat16 autocast the offline losses, their
  gradients, the validators and AMO's GT choices equal the float32 run;
* a loss in the training step reads nothing back to the host after its first call, and its clamp is
  straight-through (the gradient reaches out-of-range pixels).

CUDA itself is not needed: device keys are tested with ``torch.cuda`` monkeypatched and a fake factory, the
precision rule with CPU autocast (the same autocast machinery as CUDA's), host reads by making every
Python-level read of a tensor value raise.
"""
import warnings

import numpy as np
import pytest
import torch

from iqa_plugin import scoring
from iqa_plugin.losses.milo_loss import MILOLoss
from iqa_plugin.losses.nriqa_loss import NRIQALoss
from iqa_plugin.losses.relational_loss import RelationalLoss
from iqa_plugin.utils import image as image_utils

pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture
def empty_cache(monkeypatch):
    """A fresh, private cache of frozen networks for the test (the process-wide one is left as it was)."""
    monkeypatch.setattr(scoring.cache, '_cache', {})
    monkeypatch.setattr(scoring.cache, '_preflight_only', set(), raising=False)


@pytest.fixture
def fake_factory(monkeypatch, empty_cache):
    """``scoring.create_metric`` replaced by one that records (name, device) and returns a new object."""
    built = []

    def create(name, device=None, **opts):
        built.append((name, str(device)))
        return object()

    monkeypatch.setattr(scoring.cache, 'create_metric', create)
    return built


def _cuda_present(monkeypatch, current=0):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: current)


def _cached_devices():
    return sorted(k[1] for k in scoring.cache._cache)


# ------------------------------------------------------------------------------------- (a) one device key
def test_device_key_normalises(monkeypatch):
    assert scoring.device_key(None) == torch.device('cpu')
    assert scoring.device_key('cpu:0') == torch.device('cpu')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert scoring.device_key('cuda') == torch.device('cuda')  # no CUDA: left as given (building fails there)
    _cuda_present(monkeypatch, current=1)
    assert scoring.device_key('cuda') == torch.device('cuda', 1)
    assert scoring.device_key(torch.device('cuda')) == torch.device('cuda', 1)
    assert scoring.device_key('cuda:0') == torch.device('cuda', 0)
    assert scoring.device_key('meta') == torch.device('meta')


def test_cuda_spellings_share_one_network(monkeypatch, fake_factory):
    _cuda_present(monkeypatch, current=0)
    a = scoring.get_cached_metric('nr-lite', 'cuda')  # validators and AMO
    b = scoring.get_cached_metric('nr-lite', 'cuda:0')  # losses (pred.device)
    c = scoring.get_cached_metric('nr-lite', torch.device('cuda', 0))
    assert a is b is c
    assert fake_factory == [('nr-lite', 'cuda:0')]  # built once, on the explicit device


def test_preflight_copy_released_when_used_elsewhere(fake_factory):
    scoring.preflight_metric('nr-lite')
    assert scoring.cached_devices('nr-lite') == ['cpu']
    scoring.get_cached_metric('nr-lite', 'meta')  # a second device key stands in for a GPU
    assert scoring.cached_devices('nr-lite') == ['meta']
    scoring.preflight_metric('nr-lite')  # a later loss: its pre-flight copy goes at its first use too
    scoring.get_cached_metric('nr-lite', 'meta')
    assert scoring.cached_devices('nr-lite') == ['meta']


def test_cpu_copy_kept_when_someone_uses_it(fake_factory):
    scoring.preflight_metric('nr-lite')
    cpu = scoring.get_cached_metric('nr-lite', 'cpu')  # e.g. a validator on the CPU
    scoring.get_cached_metric('nr-lite', 'meta')
    assert scoring.cached_devices('nr-lite') == ['cpu', 'meta']
    assert scoring.get_cached_metric('nr-lite', 'cpu') is cpu
    # a copy used on the CPU first is not turned into a pre-flight copy by a later pre-flight
    scoring.preflight_metric('nr-lite')
    scoring.get_cached_metric('nr-lite', 'meta')
    assert scoring.get_cached_metric('nr-lite', 'cpu') is cpu and len(fake_factory) == 2


def test_loss_releases_its_cpu_copy(monkeypatch, empty_cache):
    """A loss built (and weight-checked) on the CPU, then run on another device, keeps no CPU network."""
    loss = NRIQALoss(metric='nr-lite')
    assert _cached_devices() == ['cpu']
    real = scoring.create_metric
    monkeypatch.setattr(scoring.cache, 'create_metric',
                        lambda name, device=None, **o: object() if str(device) == 'meta' else real(name, device, **o))
    loss.frozen_scorer(torch.device('meta'))
    assert _cached_devices() == ['meta']


# ------------------------------------------------------------------------------------- (b) float32 scorers
def _pair(b=2, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(b, 3, size, size, generator=g)
    ref = torch.nn.functional.avg_pool2d(ref, 3, 1, 1)  # some structure for the masking network
    pred = (ref + 0.08 * torch.randn(b, 3, size, size, generator=g)).clamp(0, 1)
    return pred, ref


OFFLINE_LOSSES = {
    'milo-pseudomos': lambda: MILOLoss(weights='milo-pseudomos', reduction='none'),
    'relational': lambda: RelationalLoss(reduction='none'),
    'nr-lite': lambda: NRIQALoss(metric='nr-lite', reduction='none'),  # nr-lite 0.2.0: NSS statistics + MLP
}


def _value_and_grad(loss, pred, ref, amp=None):
    """Loss value (forward under ``amp`` autocast when given) and its gradient (backward outside autocast,
    as PyTorch's AMP recipe and NRIQAFinetuneModel run it)."""
    p = pred.clone().requires_grad_(True)
    with torch.autocast('cpu', dtype=amp or torch.bfloat16, enabled=amp is not None):
        out = loss(p, ref)
    out.sum().backward()
    return out.detach(), p.grad


def _close(actual, expected, rel=1e-5):
    """float32 agreement: ~100 float32 ulps of the values' scale (bfloat16 is off by ~1e-3 of it)."""
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rel, atol=rel * scale)


@pytest.mark.parametrize('name', sorted(OFFLINE_LOSSES))
def test_losses_ignore_autocast(name):
    loss = OFFLINE_LOSSES[name]()
    pred, ref = _pair()
    value, grad = _value_and_grad(loss, pred, ref)
    value_amp, grad_amp = _value_and_grad(loss, pred, ref, amp=torch.bfloat16)
    bf16_pred = pred.bfloat16()  # what a generator under autocast hands the loss
    with torch.autocast('cpu', dtype=torch.bfloat16):
        value_bf16_in = loss(bf16_pred, ref).detach()
    assert value_amp.dtype == torch.float32
    _close(value_amp, value)
    _close(grad_amp, grad)
    _close(value_bf16_in, loss(bf16_pred.float(), ref).detach())  # a bf16 input is cast, then scored in float32


def _bgr_uint8(t):
    """(1, 3, H, W) RGB in [0, 1] -> BasicSR's HWC BGR uint8 image."""
    return (t[0].permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8)


@pytest.mark.parametrize('name,size', [('milo-pseudomos', 48), ('nr-lite', 48), ('relational', 48),
                                       ('niqe-fitted', 96)])
def test_validators_ignore_autocast(name, size):
    from iqa_plugin.metrics.iqa_metric import calculate_iqa

    pred, ref = _pair(1, size, seed=3)
    img, img2 = (_bgr_uint8(t) for t in (pred, ref))
    plain = calculate_iqa(img, img2, metric=name, device='cpu')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        amp = calculate_iqa(img, img2, metric=name, device='cpu')
    assert amp == pytest.approx(plain, rel=1e-5, abs=1e-6 * max(abs(plain), 1.0))


def _candidates(b=3, n=4, size=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.avg_pool2d(torch.rand(b, 1, 3, size, size, generator=g).flatten(0, 1), 3, 1, 1)
    base = base.view(b, 1, 3, size, size)
    noise = torch.randn(b, n, 3, size, size, generator=g) * torch.linspace(0.0, 0.06, n).view(1, n, 1, 1, 1)
    return (base + noise).clamp(0, 1)


def test_amo_choices_ignore_autocast():
    from iqa_plugin.models.gt_sampling import build_gt_strategy
    from iqa_plugin.scoring.scorer import score_candidates

    amo = build_gt_strategy({'type': 'amo', 'scorer': {'type': 'nr-lite'}}, device='cpu')
    batch = {'gt_candidates': _candidates()}
    scores = amo.score(batch)
    idx, _ = amo.pick(batch)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        scores_amp = amo.score(batch)
        idx_amp, _ = amo.pick(batch)
        direct = score_candidates('nr-lite', batch['gt_candidates'], device='cpu')
    _close(scores_amp, scores)
    _close(direct, scores)
    assert torch.equal(idx_amp, idx)
    with pytest.raises(ValueError, match='float32'):
        score_candidates('nr-lite', batch['gt_candidates'], device='cpu', amp=True)


def test_finetune_amp_autocasts_only_the_trained_forward(tmp_path, monkeypatch):
    """NRIQAFinetuneModel (train.amp: bf16): net_g's forward runs under autocast; the loss it feeds gets float32
    and the backward runs outside autocast (under it, the frozen scorer's backward would run in bfloat16)."""
    from test_lora import RRDB, batch, model_opt, save_base

    from iqa_plugin.models.nriqa_finetune_model import NRIQAFinetuneModel

    save_base(tmp_path / 'base.pth', RRDB)
    model = NRIQAFinetuneModel(model_opt(tmp_path, tmp_path / 'base.pth', amp='bf16'))
    seen = {}

    def inside_net_g(module, args, out):
        seen['net_g forward'] = torch.is_autocast_enabled('cpu')

    model.get_bare_model(model.net_g).conv_first.register_forward_hook(inside_net_g)
    real_forward = NRIQALoss.forward

    def loss_forward(self, pred, target=None, weight=None):
        seen['loss input'] = pred.dtype
        return real_forward(self, pred, target, weight)

    real_backward = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        seen['backward'] = torch.is_autocast_enabled('cpu')
        return real_backward(self, *args, **kwargs)

    monkeypatch.setattr(NRIQALoss, 'forward', loss_forward)
    monkeypatch.setattr(torch.Tensor, 'backward', backward)
    model.feed_data(batch())
    model.optimize_parameters(1)
    assert seen == {'net_g forward': True, 'loss input': torch.float32, 'backward': False}
    assert not torch.is_autocast_enabled('cpu')  # nothing left switched on after the step


# ------------------------------------------------------------------------------------- (c) input checks
_HOST_READS = ('__bool__', '__float__', '__int__', 'item', 'tolist')


def _refuse_host_reads(mp):
    def refuse(self, *args, **kwargs):
        raise AssertionError('a tensor value was read back to the host in the training step')

    for attr in _HOST_READS:
        mp.setattr(torch.Tensor, attr, refuse)


@pytest.mark.parametrize('name', sorted(OFFLINE_LOSSES))
def test_loss_step_reads_nothing_back(name, monkeypatch):
    loss = OFFLINE_LOSSES[name]()
    pred, ref = _pair()
    loss(pred, ref)  # the first call checks values (NaN/Inf, range): allowed to read once
    p = pred.clone().requires_grad_(True)
    with monkeypatch.context() as mp:
        _refuse_host_reads(mp)
        out = loss(p, ref)
        out.sum().backward()
    assert p.grad is not None


def test_prepare_image_without_value_checks_reads_nothing(monkeypatch):
    x = torch.rand(2, 3, 32, 32) * 1.4 - 0.2
    with monkeypatch.context() as mp:
        _refuse_host_reads(mp)
        mp.setattr(torch, 'isfinite', lambda *a, **k: pytest.fail('isfinite called'))
        y = image_utils.prepare_image(x, check_values=False)
    assert float(y.min()) == 0.0 and float(y.max()) == 1.0
    with pytest.raises(AssertionError, match='read back'), monkeypatch.context() as mp:
        _refuse_host_reads(mp)  # the full check does read: it is for user-facing entry points
        image_utils.prepare_image(x.clamp(0, 1))


@pytest.mark.parametrize('check_values', [True, False])
def test_clamp_is_straight_through(check_values):
    x = torch.tensor([-0.5, 0.25, 1.5, 3.0]).view(1, 1, 2, 2).expand(1, 3, 2, 2).clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        y = image_utils.prepare_image(x, min_size=1, **({} if check_values else {'check_values': False}))
    assert torch.equal(y.detach(), x.detach().clamp(0, 1))  # the scorer sees clamped values, exactly
    (y * torch.arange(12.0).view(1, 3, 2, 2)).sum().backward()
    assert torch.equal(x.grad, torch.arange(12.0).view(1, 3, 2, 2))  # identity gradient, clamped pixels too


def test_loss_gradient_reaches_out_of_range_pixels():
    loss = MILOLoss(weights='milo-pseudomos')
    pred, ref = _pair(1, 32)
    loss(pred, ref)  # first call done
    over = pred.clone()
    over[..., :8, :8] = 1.3  # a generator overshooting white in one corner
    p = over.clone().requires_grad_(True)
    value = loss(p, ref)
    value.backward()
    assert p.grad[..., :8, :8].abs().sum() > 0
    assert float(value) == pytest.approx(float(loss(over.clamp(0, 1), ref)), rel=1e-6)  # value: as if clamped


def test_loss_checks_values_on_first_call_only():
    nan = torch.full((1, 3, 32, 32), float('nan'))
    pred, ref = _pair(1, 32)
    with pytest.raises(ValueError, match='NaN'):
        MILOLoss(weights='milo-pseudomos')(nan, ref)  # first call: a broken pipeline is caught at once
    loss = MILOLoss(weights='milo-pseudomos')
    loss(pred, ref)
    assert torch.isnan(loss(nan, ref))  # later calls read nothing: NaN reaches the loss value (and the log)
    strict = MILOLoss(weights='milo-pseudomos', out_of_range='error')
    strict(pred, ref)
    with pytest.raises(ValueError, match='values must lie'):  # 'error' was asked for: checked every call
        strict(pred + 1, ref)
