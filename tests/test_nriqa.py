"""pyiqa no-reference metrics (offline builds), NRIQALoss, calculate_nriqa, score_candidates, NR-lite.

Networks are built with ``pretrained=False`` (random weights): no pyiqa weights can be downloaded
here. The large pyiqa networks (musiq, nima, topiq_nr, liqe, clipiqa; 27-150 M parameters) take
tens of seconds each on 2 CPU cores; their forward/gradient tests are skipped with IQA_PLUGIN_FAST_TESTS=1.
"""
import functools
import os
import warnings

import numpy as np
import pytest
import torch

import iqa_plugin  # noqa: F401
from iqa_plugin import scoring
from iqa_plugin import weights as wm
from iqa_plugin.archs.nr_lite_arch import NRLite, build_nr_lite_scorer
from iqa_plugin.losses.nriqa_loss import NRIQALoss
from iqa_plugin.metrics.nriqa_metric import calculate_nriqa
from iqa_plugin.scoring.pyiqa_adapter import (NR_METRICS, WeightFile, build_pyiqa_scorer, metric_info, parse_score_range,
                              pyiqa_config, read_weights, score_candidates)
from iqa_plugin.utils.torchscript_tensors import read_torchscript_tensors

slow = pytest.mark.skipif(bool(os.environ.get('IQA_PLUGIN_FAST_TESTS')),
                          reason='large pyiqa network on CPU (tens of seconds); unset IQA_PLUGIN_FAST_TESTS')

HEAVY = ['musiq', 'nima', 'topiq_nr', 'liqe', 'clipiqa']
LIGHT = ['paq2piq', 'niqe', 'brisque']  # arniqa: see test_arniqa_from_pyiqa_files...


@functools.lru_cache(maxsize=None)
def random_scorer(name):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return build_pyiqa_scorer('cpu', name, pretrained=False)


def image(b=1, size=64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g).mul(0.8).add(0.1).requires_grad_(requires_grad)


# ---------------------------------------------------------------------------------- table


def test_scoring_table_matches_pyiqa():
    """Every pyiqa row has pyiqa's mode, direction and score range; NR_METRICS is derived from the rows."""
    pyiqa_names = [n for n, s in scoring.METRICS.items() if s.pyiqa]
    assert all(scoring.METRICS[n].factory == 'iqa_plugin.scoring.pyiqa_adapter:build_pyiqa_scorer' for n in pyiqa_names)
    assert set(NR_METRICS) == {n for n in pyiqa_names if scoring.METRICS[n].kind == 'nr'}
    assert {'lpips', 'dists'} <= set(pyiqa_names) - set(NR_METRICS)
    for name in pyiqa_names:
        spec, cfg = scoring.METRICS[name], pyiqa_config(name)
        assert cfg['metric_mode'] == spec.kind.upper(), name
        assert spec.lower_better == cfg.get('lower_better', False), name
        if name != 'mad':  # pyiqa gives MAD no upper bound ('0, ~')
            assert spec.score_range == parse_score_range(cfg['score_range']), name
        assert metric_info(name).min_size == spec.min_size


def test_parse_score_range():
    assert parse_score_range('~0, ~100') == (0.0, 100.0)
    assert parse_score_range('1, 5') == (1.0, 5.0)
    with pytest.raises(ValueError, match='cannot parse'):
        parse_score_range('0')


def test_unknown_metric():
    with pytest.raises(ValueError, match="unsupported pyiqa NR metric 'psnr'"):
        build_pyiqa_scorer('cpu', 'psnr', pretrained=False)


# ---------------------------------------------------------------------------------- forward / gradients


def _check_forward_and_grad(name, size):
    s = random_scorer(name)
    assert s.kind == 'nr' and s.output_names == (name,) and not s.training
    assert all(not p.requires_grad for p in s.parameters())
    x = image(1, size, requires_grad=True)
    out = s(x)
    assert list(out) == [name]
    assert out[name].shape == (1,) and torch.isfinite(out[name]).all()
    if s.loss_capable:
        out[name].sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize('name', LIGHT)
def test_forward_and_gradient_light(name):
    _check_forward_and_grad(name, 96 if name == 'niqe' else 64)


@slow
@pytest.mark.parametrize('name', HEAVY)
def test_forward_and_gradient_heavy(name):
    _check_forward_and_grad(name, 224 if name == 'liqe' else 64)


def test_batch_gives_b_scores():
    s = random_scorer('paq2piq')
    x = image(3, 48)
    out = s(x)['paq2piq']
    assert out.shape == (3,)
    single = torch.stack([s(x[i:i + 1])['paq2piq'][0] for i in range(3)])
    torch.testing.assert_close(out, single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name,size,minimum', [('niqe', 95, 96), ('paq2piq', 31, 32)])
def test_too_small_image_names_minimum(name, size, minimum):
    with pytest.raises(ValueError, match=f'minimum side of {minimum} px'):
        random_scorer(name)(torch.rand(1, 3, size, size + 40))


def test_liqe_minimum_is_224():
    assert metric_info('liqe').min_size == 224


def test_input_validation_reused():
    s = random_scorer('brisque')
    with pytest.raises(ValueError, match='NaN or Inf'):
        s(torch.full((1, 3, 64, 64), float('nan')))
    gray = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(s(gray)['brisque'], s(gray.expand(-1, 3, -1, -1))['brisque'])


def test_qalign_has_no_offline_structure():
    with pytest.raises(ValueError, match='7B-parameter'):
        build_pyiqa_scorer('cpu', 'qalign', pretrained=False)
    with pytest.raises(wm.WeightsError, match='q-future/one-align'):
        build_pyiqa_scorer('cpu', 'qalign', pretrained=True)


# ---------------------------------------------------------------------------------- weights


def test_missing_weights_error_names_file_and_path(tmp_path):
    wf = metric_info('musiq').files()[0]
    expected = tmp_path / 'torch_home' / 'hub' / 'pyiqa' / wf.filename
    assert wf.expected_path() == expected  # follows TORCH_HOME (set by conftest)
    with pytest.raises(wm.WeightsError) as e:
        build_pyiqa_scorer('cpu', 'musiq', pretrained=True)
    msg = str(e.value)
    assert '\n' not in msg
    assert 'musiq_koniq_ckpt-e95806b9.pth' in msg and str(expected) in msg and 'huggingface.co' in msg


def test_failed_download_is_a_one_line_error(monkeypatch):
    import urllib.error
    import urllib.request
    monkeypatch.delenv('IQA_PLUGIN_OFFLINE')

    def no_network(*args, **kwargs):
        raise urllib.error.URLError('no route to host')

    monkeypatch.setattr(urllib.request, 'urlopen', no_network)
    wf = metric_info('topiq_nr').files()[0]
    with pytest.raises(wm.WeightsError, match='download failed') as e:
        build_pyiqa_scorer('cpu', 'topiq_nr', pretrained=True)
    assert str(wf.expected_path()) in str(e.value) and '\n' not in str(e.value)
    assert list(wf.expected_path().parent.iterdir()) == []  # no partial file left behind


def test_missing_clip_file_points_to_clip_cache(tmp_path):
    with pytest.raises(wm.WeightsError) as e:
        build_pyiqa_scorer('cpu', 'clipiqa', pretrained=True)
    assert str(tmp_path / 'torch_home' / 'hub' / 'clip' / 'RN50.pt') in str(e.value)


def test_weights_path_to_saved_random_state_dict(tmp_path):
    a = random_scorer('paq2piq')
    path = tmp_path / 'p2p.pth'
    torch.save({'params': a.net.state_dict()}, path)
    torch.manual_seed(123)
    b = build_pyiqa_scorer('cpu', 'paq2piq', weights_path=str(path))
    x = image(2, 48)
    torch.testing.assert_close(b(x)['paq2piq'], a(x)['paq2piq'])


def test_weights_path_missing_or_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        build_pyiqa_scorer('cpu', 'paq2piq', weights_path=str(tmp_path / 'nope.pth'))
    bad = tmp_path / 'bad.pth'
    torch.save({'conv.weight': torch.zeros(1)}, bad)
    with pytest.raises(wm.WeightsError, match='lacks'):
        build_pyiqa_scorer('cpu', 'paq2piq', weights_path=str(bad))


def test_weights_are_read_without_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))

    path = tmp_path / 'evil.pth'
    torch.save({'params': Evil()}, path)
    with pytest.raises(wm.WeightsError, match='cannot read'):
        read_weights(path)


def test_truncated_cached_file_is_a_clear_error(tmp_path):
    wf = metric_info('paq2piq').files()[0]
    wf.expected_path().parent.mkdir(parents=True)
    torch.save(random_scorer('paq2piq').net.state_dict(), wf.expected_path())
    data = wf.expected_path().read_bytes()
    wf.expected_path().write_bytes(data[:len(data) // 2])
    with pytest.raises(wm.WeightsError, match=f'cannot read weights file {wf.expected_path()}'):
        build_pyiqa_scorer('cpu', 'paq2piq', pretrained=True)


def test_cached_file_loads(tmp_path):
    wf = metric_info('paq2piq').files()[0]
    wf.expected_path().parent.mkdir(parents=True)
    src = random_scorer('paq2piq')
    torch.save(src.net.state_dict(), wf.expected_path())  # pyiqa's format: a bare state dict
    torch.manual_seed(7)
    s = build_pyiqa_scorer('cpu', 'paq2piq', pretrained=True)
    x = image(1, 48)
    torch.testing.assert_close(s(x)['paq2piq'], src(x)['paq2piq'])


def test_niqe_and_brisque_from_cache(tmp_path):
    import scipy.io
    niqe_file, brisque_file = metric_info('niqe').files()[0], metric_info('brisque').files()[0]
    niqe_file.expected_path().parent.mkdir(parents=True)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(36, 36))
    scipy.io.savemat(niqe_file.expected_path(), {'mu_prisparam': rng.normal(size=(1, 36)),
                                                 'cov_prisparam': a @ a.T + np.eye(36)})
    torch.save((torch.randn(10, dtype=torch.float64), torch.rand(10, 36, dtype=torch.float64)),
               brisque_file.expected_path())
    x = image(1, 96)
    for name in ('niqe', 'brisque'):
        s = build_pyiqa_scorer('cpu', name, pretrained=True)
        assert s.pretrained
        assert torch.isfinite(s(x)[name]).all()
        assert not torch.equal(s(x)[name], random_scorer(name)(x)[name])


def test_arniqa_from_pyiqa_files_including_torchscript_regressor(tmp_path, monkeypatch):
    """ARNIQA ships an encoder checkpoint ('model.' keys) and a TorchScript linear regressor."""
    enc_file, reg_file = metric_info('arniqa').files()
    assert enc_file.expected_path().parent.name == 'checkpoints' and reg_file.filename == 'regressor_koniq10k.pth'
    src = random_scorer('arniqa').net
    encoder = {'model.' + k: v * 1.01 if v.is_floating_point() else v for k, v in src.encoder.state_dict().items()}
    torch.manual_seed(1)
    regressor = torch.nn.Linear(4096, 1)
    # Put them in $IQA_PLUGIN_WEIGHTS_DIR, the other place the files are looked for.
    monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(tmp_path / 'w'))
    (tmp_path / 'w').mkdir()
    torch.save(encoder, tmp_path / 'w' / enc_file.filename)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.jit.script(regressor).save(str(tmp_path / 'w' / reg_file.filename))
    s = build_pyiqa_scorer('cpu', 'arniqa', pretrained=True)
    torch.testing.assert_close(s.net.regressor.weight, regressor.weight.detach())
    key = next(iter(src.encoder.state_dict()))
    torch.testing.assert_close(s.net.encoder.state_dict()[key], encoder['model.' + key])
    x = image(1, 32, requires_grad=True)
    out = s(x)['arniqa']
    assert out.shape == (1,) and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_torchscript_reader_matches_jit_and_refuses_other_globals(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.register_buffer('steps', torch.arange(5))

        def forward(self, x):
            return self.conv(x)

    path = tmp_path / 'net.pt'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.jit.script(Net()).save(str(path))
        ref = torch.jit.load(str(path)).state_dict()
    got = read_torchscript_tensors(path)
    assert set(ref) <= set(got)
    for k in ref:
        assert torch.equal(got[k], ref[k])
    # The same archive with a data.pkl that names os.system: refused, nothing runs.
    import pickle
    import zipfile
    evil = tmp_path / 'evil.pt'
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(evil, 'w') as dst:
        for item in src.namelist():
            data = src.read(item)
            dst.writestr(item, pickle.dumps(os.system, protocol=2) if item.endswith('/data.pkl') else data)
    with pytest.raises(ValueError, match='refusing to load'):
        read_torchscript_tensors(evil)
    plain = tmp_path / 'plain.pt'
    torch.save({'a': torch.ones(1)}, plain)
    with pytest.raises(ValueError, match='not a TorchScript archive'):
        read_torchscript_tensors(plain)


def test_weightfile_name_from_url():
    wf = WeightFile('https://example.org/a/b/liqe_koniq.pt?download=1', 'pyiqa')
    assert wf.filename == 'liqe_koniq.pt'


# ---------------------------------------------------------------------------------- loss


def test_nriqa_loss_normalised_frozen_and_differentiable():
    loss = NRIQALoss(metric='paq2piq', loss_weight=2.0, pretrained=False)
    assert list(loss.parameters()) == [] and len(loss.state_dict()) == 0
    loss.train()
    assert not loss.scorer.training and not loss.scorer.net.training
    assert all(not p.requires_grad for p in loss.scorer.parameters())
    x = image(2, 48, requires_grad=True)
    value = loss(x, None)
    assert value.ndim == 0
    s = loss.scorer(x)['paq2piq']
    lo, hi = loss.scorer.score_range
    torch.testing.assert_close(value, 2.0 * ((hi - s) / (hi - lo)).mean())
    value.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_nriqa_loss_lower_better_direction():
    """A lower-better metric gives (s - lo) / (hi - lo): checked through the scorer's normalize."""
    s = random_scorer('brisque')
    scores = torch.tensor([0.0, 75.0, 150.0])
    torch.testing.assert_close(1 - s.normalize(scores), torch.tensor([0.0, 0.5, 1.0]))


@pytest.mark.parametrize('name', ['niqe', 'brisque'])
def test_nss_metrics_refused_as_loss_but_work_as_validators(name):
    with pytest.raises(ValueError, match=f"'{name}' cannot be a loss.*validator"):
        NRIQALoss(metric=name, pretrained=False)
    img = (np.random.default_rng(0).uniform(0, 255, (96, 96, 3))).astype(np.uint8)
    value = calculate_nriqa(img, img, metric=name, pretrained=False, device='cpu')
    assert isinstance(value, float) and np.isfinite(value)


def test_nriqa_loss_rejects_fr_metric_and_bad_reduction():
    with pytest.raises(ValueError, match='full-reference'):
        NRIQALoss(metric='milo', pretrained=False)
    with pytest.raises(ValueError, match='reduction'):
        NRIQALoss(metric='nr-lite', pretrained=False, reduction='avg')


def test_nriqa_loss_through_registry_with_nr_lite():
    from basicsr.utils.registry import LOSS_REGISTRY
    loss = LOSS_REGISTRY.get('NRIQALoss')(metric='nr-lite', loss_weight=1.0, pretrained=False, reduction='none')
    x = image(3, 40, requires_grad=True)
    v = loss(x, x.detach())
    assert v.shape == (3,) and ((v > 0) & (v < 1)).all()
    v.sum().backward()
    assert x.grad.abs().sum() > 0


def test_nriqa_loss_missing_weights_is_weights_manager_error(monkeypatch, tmp_path):
    monkeypatch.setattr(wm, 'PACKAGE_WEIGHTS_DIR', tmp_path)  # as if the packaged file were missing
    with pytest.raises(wm.WeightsError, match='nr_lite.pth'):
        NRIQALoss(metric='nr-lite')


# ---------------------------------------------------------------------------------- validator


def test_calculate_nriqa_through_basicsr():
    from basicsr.metrics import calculate_metric
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 255, (72, 72, 3)).astype(np.uint8)
    gt = rng.uniform(0, 255, (72, 72, 3)).astype(np.uint8)
    opt = {'type': 'calculate_nriqa', 'metric': 'nr-lite', 'pretrained': False, 'crop_border': 4,
           'better': 'higher', 'device': 'cpu'}
    value = calculate_metric({'img': img, 'img2': gt}, opt)
    assert isinstance(value, float) and 0 < value < 1
    # img2 is ignored; crop_border crops before scoring
    assert calculate_metric({'img': img, 'img2': img}, opt) == pytest.approx(value)
    scorer = scoring.get_cached_metric('nr-lite', device='cpu', pretrained=False)
    x = torch.from_numpy(img[4:-4, 4:-4, ::-1].transpose(2, 0, 1).astype(np.float32) / 255)[None]
    assert scorer(x)['nr-lite'].item() == pytest.approx(value, abs=1e-6)


def test_calculate_nriqa_rejects_fr_metric():
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match='full-reference'):
        calculate_nriqa(img, img, metric='milo')


# ---------------------------------------------------------------------------------- score_candidates


@pytest.mark.parametrize('name', ['paq2piq', 'nr-lite'])
def test_score_candidates_shape_and_equality(name):
    s = random_scorer(name) if name != 'nr-lite' else build_nr_lite_scorer(pretrained=False)
    b, n = (2, 2) if name == 'paq2piq' else (2, 3)
    cands = torch.rand(b, n, 3, 40, 48, generator=torch.Generator().manual_seed(3))
    out = score_candidates(s, cands, chunk_size=3)
    assert out.shape == (b, n) and out.dtype == torch.float32
    per_image = torch.stack([torch.stack([s(cands[i, j:j + 1])[name][0] for j in range(n)]) for i in range(b)])
    torch.testing.assert_close(out, per_image, rtol=1e-4, atol=1e-5)
    if name == 'nr-lite':
        torch.testing.assert_close(score_candidates(s, cands, chunk_size=1), out, rtol=1e-4, atol=1e-5)


def test_score_candidates_orients_lower_better_and_normalizes():
    s = random_scorer('brisque')
    cands = torch.rand(1, 2, 3, 48, 48, generator=torch.Generator().manual_seed(4))
    raw = torch.stack([s(cands[0, i])['brisque'][0] for i in range(2)])[None]
    torch.testing.assert_close(score_candidates(s, cands), -raw)
    torch.testing.assert_close(score_candidates(s, cands, normalize=True), s.normalize(raw))


def test_score_candidates_by_name_and_bad_input():
    out = score_candidates('nr-lite', torch.rand(1, 2, 3, 32, 32), device='cpu', pretrained=False)
    assert out.shape == (1, 2)
    with pytest.raises(ValueError, match=r'\(B, N, 3, H, W\)'):
        score_candidates('nr-lite', torch.rand(2, 3, 32, 32), pretrained=False)
    with pytest.raises(ValueError, match='minimum side of 32'):
        score_candidates('nr-lite', torch.rand(1, 2, 3, 16, 32), device='cpu', pretrained=False)


def test_score_candidates_float32_under_autocast():
    s = build_nr_lite_scorer(pretrained=False)
    cands = torch.rand(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    fp32 = score_candidates(s, cands)
    with torch.autocast('cpu', dtype=torch.bfloat16):  # an enclosing autocast is switched off (float32 scores)
        under = score_candidates(s, cands)
    assert under.dtype == torch.float32 and under.shape == (2, 2)
    torch.testing.assert_close(under, fp32, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match='float32'):
        score_candidates(s, cands, amp=True)


# ---------------------------------------------------------------------------------- NR-lite


def test_nr_lite_arch():
    from basicsr.utils.registry import ARCH_REGISTRY
    net = ARCH_REGISTRY.get('NRLite')()
    n_params = sum(p.numel() for p in net.parameters())
    assert 50_000 <= n_params <= 200_000
    x = torch.rand(2, 3, 37, 53, requires_grad=True)
    y = net(x)
    assert y.shape == (2,) and ((y > 0) & (y < 1)).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match='minimum side of 32'):
        net(torch.rand(1, 3, 31, 64))
    with pytest.raises(ValueError, match='5 widths'):
        NRLite(channels=(8, 16))


def test_nr_lite_scorer_loads_basicsr_checkpoint(tmp_path):
    torch.manual_seed(0)
    net = NRLite(channels=(8, 16, 16, 24, 32), hidden=16)
    path = tmp_path / 'nr_lite.pth'
    torch.save({'params': net.state_dict(), 'config': net.config()}, path)
    s = build_nr_lite_scorer(weights_path=str(path))
    assert s.pretrained and s.lower_better is False and s.score_range == (0.0, 1.0)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(s(x)['nr-lite'], net.eval()(x))
    via_table = scoring.create_metric('nr-lite', weights_path=str(path))
    torch.testing.assert_close(via_table(x)['nr-lite'], net(x))


def test_file_pyiqa_loads_non_strictly_must_still_hold_every_tensor(empty_weights_dir):
    """pyiqa loads DISTS's (and LPIPS's, TOPIQ's) file with strict=False: a file without the calibrated tensors
    would leave random ones; it is refused naming the file and the tensor."""
    import torchvision

    calibration, backbone = metric_info('dists').files()
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), empty_weights_dir / backbone.filename)
    torch.save({'alpha': torch.rand(1, 1475, 1, 1)}, empty_weights_dir / calibration.filename)
    with pytest.raises(wm.WeightsError, match=f'{calibration.filename} lacks beta'):
        scoring.create_metric('dists')
