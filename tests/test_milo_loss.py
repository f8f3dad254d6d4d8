"""MILOLoss / MILOLatentLoss and the curriculum spatial masking."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import iqa_plugin  # noqa: F401
from iqa_plugin.archs.milo_arch import MILO, get_frozen_milo
from iqa_plugin.losses.milo_loss import (MILOLatentLoss, MILOLoss, check_curriculum, curriculum_t,
                                         curriculum_weights)
from iqa_plugin.utils import image as image_utils
from iqa_plugin.utils.image import read_image


@pytest.fixture(scope='session')
def random_latent_weights(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp('milo_loss') / 'random_milo_latent.pth'
    torch.save(MILO(in_channels=4, weights=None).state_dict(), path)
    return str(path)


def _loss(random_milo_weights, **kw):
    # 'milo-pseudomos' is a packaged entry: an explicit file is not hash-checked
    return MILOLoss(weights='milo-pseudomos', weights_path=random_milo_weights, **kw)


def _pair(b=2, c=3, h=32, w=32, seed=0, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(b, c, h, w, generator=g)
    dist = ref + noise * torch.randn(b, c, h, w, generator=g)
    return (dist.clamp(0, 1), ref) if c == 3 else (dist, ref)


# ---------------------------------------------------------------------- MILOLoss
def test_fixture_value_and_gradients(shared_dir):
    path = str(shared_dir / 'weights' / 'milo' / 'MILO.pth')
    fx = shared_dir / 'fixtures' / 'milo'
    dist, ref = read_image(fx / 'dist.png'), read_image(fx / 'ref.png')
    assert MILOLoss(weights_path=path)(dist, ref).item() == pytest.approx(0.0082061952, rel=1e-5)
    dist, ref = dist[..., 100:196, 200:296], ref[..., 100:196, 200:296]  # gradients on a crop: faster
    expected = get_frozen_milo('milo', path, 3, 'cpu').raw_error(dist, ref)
    for detach in (True, False):
        d = dist.clone().requires_grad_(True)
        loss = MILOLoss(weights_path=path, detach_mask=detach)(d, ref)
        assert loss.item() == pytest.approx(float(expected), rel=1e-5)
        loss.backward()
        assert torch.isfinite(d.grad).all() and d.grad.abs().sum() > 0


def test_detached_gradient_formula(random_milo_weights):
    loss = _loss(random_milo_weights, reduction='sum')
    dist, ref = _pair(1)
    d = dist.clone().requires_grad_(True)
    loss(d, ref).backward()
    mask = loss.milo('cpu').mask(dist, ref).detach()
    expected = mask * torch.sign(dist - ref) / dist[0].numel()
    assert torch.allclose(d.grad, expected, rtol=1e-4, atol=1e-10)


def test_full_gradient_differs(random_milo_weights):
    dist, ref = _pair(1)
    grads = []
    for detach in (True, False):
        d = dist.clone().requires_grad_(True)
        _loss(random_milo_weights, detach_mask=detach)(d, ref).backward()
        grads.append(d.grad)
    assert not torch.allclose(grads[0], grads[1])


def test_reductions_and_weight(random_milo_weights):
    dist, ref = _pair(3)
    per = _loss(random_milo_weights, reduction='none')(dist, ref)
    assert per.shape == (3,)
    expected = _loss(random_milo_weights).milo('cpu').raw_error(dist, ref)
    assert torch.allclose(per, expected, rtol=1e-5)
    assert torch.allclose(_loss(random_milo_weights, reduction='sum')(dist, ref), per.sum())
    assert torch.allclose(_loss(random_milo_weights, loss_weight=2.5)(dist, ref), 2.5 * per.mean())
    with pytest.raises(ValueError, match='reduction'):
        _loss(random_milo_weights, reduction='max')


def test_frozen_cached_not_parameters(random_milo_weights):
    a, b = _loss(random_milo_weights), _loss(random_milo_weights, loss_weight=3.0)
    assert list(a.parameters()) == [] and a.state_dict() == {}
    net = a.milo('cpu')
    assert net is b.milo('cpu') is get_frozen_milo('milo-pseudomos', random_milo_weights, 3, 'cpu')
    a.train()
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    a.to('cpu')
    assert a(*_pair(1)).requires_grad is False


def test_build_loss_from_yaml_block(random_milo_weights):
    from basicsr.losses import build_loss
    loss = build_loss({'type': 'MILOLoss', 'loss_weight': 0.5, 'weights': 'milo-pseudomos',
                       'weights_path': random_milo_weights, 'curriculum': {'schedule': 'cosine', 'start': 0.0, 'end': 0.8}})
    assert isinstance(loss, MILOLoss) and loss.curriculum['end'] == 0.8
    with pytest.raises(TypeError):
        build_loss({'type': 'MILOLoss', 'weights_path': random_milo_weights, 'unknown_option': 1})


def test_loss_input_errors(random_milo_weights):
    loss = _loss(random_milo_weights)
    with pytest.raises(ValueError, match=r'\(1, 3, 32, 32\).*\(1, 3, 32, 48\)'):
        loss(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 48))
    with pytest.raises(ValueError, match='NaN'):
        loss(torch.full((1, 3, 32, 32), float('nan')), torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match='minimum side'):
        loss(torch.rand(1, 3, 8, 32), torch.rand(1, 3, 8, 32))
    with pytest.raises(ValueError, match='channels'):
        loss(torch.rand(1, 5, 32, 32), torch.rand(1, 5, 32, 32))
    strict = _loss(random_milo_weights, out_of_range='error')
    with pytest.raises(ValueError, match='values must lie'):
        strict(torch.rand(1, 3, 32, 32) + 1, torch.rand(1, 3, 32, 32))
    dist, ref = _pair(1)
    image_utils._range_warned.clear()  # the warning is given once per input name and process
    with pytest.warns(UserWarning, match='clamping'):
        over = _loss(random_milo_weights)(dist * 2, ref)
    assert torch.allclose(over, _loss(random_milo_weights)((dist * 2).clamp(0, 1), ref))


def test_odd_size_loss(random_milo_weights):
    dist, ref = _pair(1, 3, 97, 131)
    d = dist.clone().requires_grad_(True)
    loss = _loss(random_milo_weights, detach_mask=False)(d, ref)
    loss.backward()
    assert torch.isfinite(d.grad).all()
    assert float(_loss(random_milo_weights)(ref, ref)) == 0.0


# ---------------------------------------------------------------------- curriculum
@pytest.mark.parametrize('schedule,expected', [
    ('linear', (0.0, 0.5, 1.0)), ('cosine', (0.0, 0.5, 1.0)), ('step', (0.0, 0.5, 1.0))])
def test_schedule_values(schedule, expected):
    cfg = check_curriculum({'schedule': schedule})
    assert [curriculum_t(p, **cfg) for p in (0.0, 0.5, 1.0)] == pytest.approx(list(expected))


def test_schedule_start_end():
    assert curriculum_t(0.4, 'cosine', 0.0, 0.8) == pytest.approx(0.5)
    assert curriculum_t(0.9, 'cosine', 0.0, 0.8) == 1.0
    assert curriculum_t(0.1, 'linear', 0.2, 0.6) == 0.0
    assert curriculum_t(0.3, 'linear', 0.2, 0.6) == pytest.approx(0.25)
    assert curriculum_t(0.25, 'cosine', 0.0, 1.0) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    assert curriculum_t(0.3, 'step', 0.0, 1.0, steps=4) == 0.25
    assert curriculum_t(0.49, 'step', 0.5, 0.5) == 0.0 and curriculum_t(0.5, 'step', 0.5, 0.5) == 1.0
    ts = [curriculum_t(p / 20, 'cosine', 0.1, 0.9) for p in range(21)]
    assert ts == sorted(ts)


def test_curriculum_config_errors():
    with pytest.raises(ValueError, match='schedule'):
        check_curriculum({'schedule': 'exp'})
    with pytest.raises(ValueError, match='unknown key'):
        check_curriculum({'shape': 'cosine'})
    with pytest.raises(ValueError, match='start and end'):
        check_curriculum({'end': 1.5})
    with pytest.raises(TypeError):
        check_curriculum('cosine')


def test_weights_move_from_low_to_high_mask():
    mask = torch.ones(1, 1, 16, 16)
    mask[..., :8] = 0.5  # left half: low mask (least visible), right half: high mask
    mask[..., 8:] = 3.0
    w0 = curriculum_weights(mask, 0.0)
    w5 = curriculum_weights(mask, 0.5)
    w1 = curriculum_weights(mask, 1.0)
    for w in (w0, w5, w1):
        assert float(w.mean()) == pytest.approx(1.0)
    assert float(w0[..., :8].mean()) > 1.5 > 0.5 > float(w0[..., 8:].mean())
    assert float(w1[..., 8:].mean()) > 1.5 > 0.5 > float(w1[..., :8].mean())
    assert torch.allclose(w5, torch.ones_like(w5))
    assert float(w1.min()) > 0  # min_weight keeps every pixel in the loss
    flat = curriculum_weights(torch.full((2, 1, 8, 8), 2.0), 1.0)
    assert torch.allclose(flat, torch.ones_like(flat))


def test_loss_curriculum_wiring(random_milo_weights):
    dist, ref = _pair(2, seed=3)
    loss = _loss(random_milo_weights, reduction='none', curriculum={'schedule': 'linear'})
    net = loss.milo('cpu')
    mask = net.mask(dist, ref)
    plain = _loss(random_milo_weights, reduction='none')(dist, ref)
    values = {}
    for p in (0.0, 0.5, 1.0):
        loss.set_progress(p)
        got = loss(dist, ref)
        w = curriculum_weights(mask, p)
        assert torch.allclose(got, (w * mask * (ref - dist).abs()).mean(dim=(1, 2, 3)), rtol=1e-5)
        values[p] = got
    assert torch.allclose(values[0.5], plain, rtol=1e-5)
    loss.set_progress(7)
    assert loss.progress == 1.0 and loss.curriculum_t() == 1.0
    assert _loss(random_milo_weights).curriculum_t() is None


# ---------------------------------------------------------------------- MILOLatentLoss
def test_latent_fixture(shared_dir):
    fx = shared_dir / 'fixtures' / 'milo'
    dist = torch.from_numpy(np.load(fx / 'dist.npy'))[None]
    ref = torch.from_numpy(np.load(fx / 'ref.npy'))[None]
    loss = MILOLatentLoss(weights_path=str(shared_dir / 'weights' / 'milo' / 'MILO_latent.pth'))
    assert float(loss(dist, ref)) == pytest.approx(0.66785508, rel=1e-5)
    assert float(MILOLatentLoss(weights_path=str(shared_dir / 'weights' / 'milo' / 'MILO_latent.pth'),
                                encoder='precomputed')(dist, ref)) == pytest.approx(0.66785508, rel=1e-5)


class FakeVAE(nn.Module):
    """Stands in for diffusers' AutoencoderKL: encode() -> object with latent_dist.mode()."""

    class Config:
        scaling_factor = 0.5
        shift_factor = 0.1

    class _Dist:
        def __init__(self, z):
            self.z = z

        def mode(self):
            return self.z

        def sample(self):
            return self.z + 1.0

    class _Out:
        def __init__(self, z):
            self.latent_dist = FakeVAE._Dist(z)

    def __init__(self):
        super().__init__()
        self.config = self.Config()
        self.conv = nn.Conv2d(3, 4, kernel_size=8, stride=8)
        self.seen = []

    def encode(self, x):
        self.seen.append((float(x.detach().min()), float(x.detach().max())))
        return self._Out(self.conv(x))


def test_latent_precomputed(random_latent_weights):
    loss = MILOLatentLoss(weights='milo-pseudomos', weights_path=random_latent_weights, reduction='none')
    dist, ref = _pair(2, 4, 16, 24)
    d = dist.clone().requires_grad_(True)
    out = loss(d, ref)
    assert out.shape == (2,)
    assert torch.allclose(out, loss.milo('cpu').raw_error(dist, ref), rtol=1e-5)
    out.sum().backward()
    assert torch.isfinite(d.grad).all() and d.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='channels'):
        loss(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match='minimum side'):
        loss(torch.rand(1, 4, 8, 16), torch.rand(1, 4, 8, 16))


def test_latent_injected_encoder(random_latent_weights):
    torch.manual_seed(0)
    vae = FakeVAE()
    loss = MILOLatentLoss(weights='milo-pseudomos', weights_path=random_latent_weights, encoder=vae)
    assert list(loss.parameters()) == [] and not any(p.requires_grad for p in vae.parameters())
    loss.train()
    assert not vae.training
    dist, ref = _pair(1, 3, 128, 128)
    d = dist.clone().requires_grad_(True)
    value = loss(d, ref)
    with torch.no_grad():
        zd = (vae.conv(dist * 2 - 1) - 0.1) * 0.5
        zr = (vae.conv(ref * 2 - 1) - 0.1) * 0.5
    assert value.item() == pytest.approx(float(loss.milo('cpu').raw_error(zd, zr)), rel=1e-5)
    assert min(lo for lo, _ in vae.seen) >= -1 and max(hi for _, hi in vae.seen) <= 1
    assert min(lo for lo, _ in vae.seen) < -0.5  # images were mapped to [-1, 1]
    value.backward()
    assert torch.isfinite(d.grad).all() and d.grad.abs().sum() > 0
    # the hook: swap encoders, override the scaling factor
    plain = MILOLatentLoss(weights='milo-pseudomos', weights_path=random_latent_weights)
    plain.set_encoder(vae, scaling_factor=1.0, shift_factor=0.0)
    with torch.no_grad():
        expected = loss.milo('cpu').raw_error(vae.conv(dist * 2 - 1), vae.conv(ref * 2 - 1))
    assert float(plain(dist, ref)) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match='scaling_factor'):
        plain.set_encoder(type('NoScale', (), {'encode': lambda self, x: x})())


def test_latent_encoder_wrong_channels(random_latent_weights):
    class Enc:
        scaling_factor = 1.0

        def encode(self, x):
            return x[:, :, ::8, ::8]

    loss = MILOLatentLoss(weights='milo-pseudomos', weights_path=random_latent_weights, encoder=Enc())
    with pytest.raises(ValueError, match='4 channels'):
        loss(torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128))


def test_latent_diffusers_encoder_errors(random_latent_weights):
    kw = dict(weights='milo-pseudomos', weights_path=random_latent_weights)
    with pytest.raises(ValueError, match='type'):
        MILOLatentLoss(encoder={'type': 'taesd', 'path': 'x'}, **kw)
    with pytest.raises(ValueError, match='path'):
        MILOLatentLoss(encoder={'type': 'diffusers'}, **kw)
    try:
        import diffusers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match='pip install diffusers'):
            MILOLatentLoss(encoder={'type': 'diffusers', 'path': '/nonexistent', 'subfolder': 'vae'}, **kw)
    with pytest.raises(ValueError, match='encoder must be'):
        MILOLatentLoss(encoder=42, **kw)
