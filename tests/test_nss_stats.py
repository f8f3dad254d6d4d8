"""NRLite's hand-crafted branch (``iqa_plugin/archs/nss_stats.py``) and its standardisation (nr-lite 0.2.0)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import iqa_plugin  # noqa: F401
from iqa_plugin.archs.nr_lite_arch import NRLite, build_nr_lite_scorer
from iqa_plugin.archs.nss_stats import NSSStats, RunningStandardise

NAMES = [f'{k}_s{s}' for s in range(NSSStats.scales)
         for k in ('log_m2', 'log_abs', 'log_kurt', 'corr_h', 'corr_v', 'corr_d1', 'corr_d2', 'log_sigma',
                   'log_sigma_sd')]
NAMES += ['luma_mean', 'log_luma_sd', 'dark_frac', 'bright_frac', 'log_chroma', 'log_rg_sd', 'log_yb_sd', 'blockiness',
          'log_hf']
IDX = {n: i for i, n in enumerate(NAMES)}


def _textured(seed=0, size=64):
    """A smooth-plus-detail test image (3, size, size) in [0, 1]: sums of random sinusoids."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing='ij')
    img = torch.zeros(3, size, size)
    for _ in range(12):
        f = torch.rand(2, generator=g) * 0.8 + 0.05
        ph = torch.rand(1, generator=g) * 6.28
        img += torch.rand(3, 1, 1, generator=g) * torch.sin(f[0] * xx + f[1] * yy + ph)
    img = (img - img.min()) / (img.max() - img.min())
    return img.clamp(0, 1)


def test_feature_count_and_names_match():
    assert len(NAMES) == NSSStats.num_features
    f = NSSStats()(torch.rand(2, 3, 48, 40))
    assert f.shape == (2, NSSStats.num_features) and f.dtype == torch.float32


@pytest.mark.parametrize('value', [0.0, 0.5, 1.0])
def test_flat_images_are_valid_and_finite(value):
    x = torch.full((1, 3, 32, 32), value, requires_grad=True)
    f = NSSStats()(x)
    assert torch.isfinite(f).all()
    f.sum().backward()
    assert torch.isfinite(x.grad).all()
    # no structure: MSCN moments at their floor, blockiness exactly 1 (log 0)
    f = f.detach()
    assert float(f[0, IDX['log_m2_s0']]) == pytest.approx(np.log(1e-4), rel=1e-4)
    assert float(f[0, IDX['blockiness']]) == pytest.approx(0.0, abs=1e-6)


def test_features_respond_to_blur_noise_and_blocking():
    nss = NSSStats()
    x = _textured().unsqueeze(0)
    blur = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode='replicate'), 5, 1)
    noise = (x + 0.08 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    block = F.interpolate(F.avg_pool2d(x, 8), scale_factor=8, mode='nearest')  # 8x8 constant blocks
    f, fb, fn, fk = (nss(t)[0] for t in (x, blur, noise, block))
    assert fb[IDX['log_hf']] < f[IDX['log_hf']] < fn[IDX['log_hf']]
    assert fb[IDX['corr_h_s0']] > f[IDX['corr_h_s0']] > fn[IDX['corr_h_s0']]
    assert fk[IDX['blockiness']] > f[IDX['blockiness']] + 1.0
    grey = x.mean(1, keepdim=True).expand_as(x)
    assert nss(grey)[0, IDX['log_chroma']] < f[IDX['log_chroma']] - 1.0


def test_running_standardise_estimates_then_freezes():
    torch.manual_seed(0)
    data = torch.randn(300, 5) * torch.tensor([1., 2., 3., 4., 5.]) + torch.arange(5.)
    st = RunningStandardise(5, max_count=200).train()
    for chunk in data.split(50):
        st(chunk)
    assert int(st.count) == 200
    ref = data[:200]
    torch.testing.assert_close(st.mean, ref.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st.var, ref.var(0, unbiased=False), rtol=1e-4, atol=1e-5)
    before = st.mean.clone()
    st.eval()(data * 10)
    assert torch.equal(st.mean, before)
    out = st(data[:200])
    torch.testing.assert_close(out.mean(0), torch.zeros(5), atol=1e-4, rtol=0)


@pytest.mark.parametrize('kw', [{'nss': True}, {'nss': True, 'cnn': False}])
def test_nr_lite_with_nss_round_trips_through_the_scorer(kw, tmp_path):
    torch.manual_seed(0)
    net = NRLite(channels=(8, 8, 16, 16, 16), hidden=16, **kw).train()
    net(torch.rand(6, 3, 40, 40))  # fills the standardisation estimates
    assert int(net.nss_norm.count) == 6
    path = tmp_path / 'w.pth'
    torch.save({**net.state_dict(), 'config': net.config()}, path)
    s = build_nr_lite_scorer(weights_path=str(path))
    x = torch.rand(2, 3, 36, 44, requires_grad=True)
    y = s(x)['nr-lite']
    torch.testing.assert_close(y, net.eval()(x))
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in s.parameters())


def test_nr_lite_needs_a_branch():
    with pytest.raises(ValueError, match='CNN branch'):
        NRLite(nss=False, cnn=False)
    assert 'nss' not in NRLite().config() and 'cnn' not in NRLite().config()  # 0.1.0 files keep their config


def test_ema_copy_carries_the_standardisation_buffers(tmp_path):
    from conftest import build_label_free_model

    model = build_label_free_model(tmp_path, 'NRLiteModel',
                                   {'type': 'NRLite', 'channels': [8, 8, 16, 16, 16], 'hidden': 16, 'nss': True},
                                   ema_decay=0.9, optim_g={'type': 'Adam', 'lr': 1e-3}, cross_weight=0.0, total_iter=2)
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 32, 32, generator=g)
    batch = {'ref': ref, 'dist': (ref.unsqueeze(1) + 0.1 * torch.randn(2, 3, 3, 32, 32, generator=g)).clamp(0, 1),
             'pmos': torch.tensor([[-1., 0., 1.]] * 2), 'tier': torch.arange(3).repeat(2, 1)}
    model.feed_data(batch)
    model.optimize_parameters(1)
    live = model.get_bare_model(model.net_g).nss_norm
    assert int(live.count) == 8
    for name in ('mean', 'var', 'count'):
        assert torch.equal(getattr(model.net_g_ema.nss_norm, name), getattr(live, name)), name
