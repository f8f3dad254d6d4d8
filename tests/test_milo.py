"""MILO network, scorer, BasicSR metric and bench (losses: test_milo_loss.py)."""
import warnings

import numpy as np
import pytest
import torch

import iqa_plugin  # noqa: F401
from iqa_plugin import scoring
from iqa_plugin.archs.milo_arch import MILO, build_milo_scorer, get_frozen_milo
from iqa_plugin.apps.bench.milo_bench import reference_milo_error
from iqa_plugin.utils import image as image_utils
from iqa_plugin.utils.image import read_image
from iqa_plugin.weights import WeightsError

RAW_ERROR = 0.0082061952
QUALITY_SCORE = 0.1314578
LATENT_RAW_ERROR = 0.66785508
# Identical inputs: the raw error is exactly 0, the quality score scaler(0-map) - scaler(0) only within float32
# rounding (the two scaler calls run on tensors of different shapes, which oneDNN may reduce with other kernels
# on AVX2 and AVX-512 machines); the scaler's outputs are O(1), so a few float32 ulps of 1.
ZERO_TOL = 8 * torch.finfo(torch.float32).eps


@pytest.fixture(scope='session')
def milo_dir(shared_dir):
    return shared_dir / 'weights' / 'milo'


@pytest.fixture(scope='session')
def milo_pth(milo_dir):
    return str(milo_dir / 'MILO.pth')


@pytest.fixture(scope='session')
def fixtures(shared_dir):
    return shared_dir / 'fixtures' / 'milo'


@pytest.fixture(scope='session')
def net(random_milo_weights):
    return MILO(weights=None, weights_path=random_milo_weights)


def _pair(b=2, h=48, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(b, 3, h, w, generator=g)
    dist = (ref + 0.1 * torch.randn(b, 3, h, w, generator=g)).clamp(0, 1)
    return dist, ref


# ---------------------------------------------------------------------- parity with the official release
def test_weights_layout(milo_dir):
    for name, cin in (('MILO.pth', 7), ('MILO_latent.pth', 9)):
        sd = torch.load(milo_dir / name, map_location='cpu', weights_only=True)
        assert set(sd) == set(MILO(in_channels=(cin - 1) // 2, weights=None).state_dict())
        assert sd['mask_finder_1.netBasic.0.weight'].shape == (32, cin, 3, 3)


def test_parity_image(milo_pth, fixtures):
    milo = MILO(weights='milo', weights_path=milo_pth)
    out = milo(read_image(fixtures / 'dist.png'), read_image(fixtures / 'ref.png'))
    assert out.raw_error.shape == (1,) and out.quality_score.shape == (1,)
    assert out.quality_map.shape == (1, 1, 384, 512) and out.mask.shape == (1, 1, 384, 512)
    assert float(out.raw_error) == pytest.approx(RAW_ERROR, rel=1e-5)
    assert float(out.quality_score) == pytest.approx(QUALITY_SCORE, rel=1e-5)
    assert 0 < float(out.mask.min()) and float(out.mask.max()) < 4


def test_parity_latent(milo_dir, fixtures):
    milo = MILO(in_channels=4, weights='milo-latent', weights_path=str(milo_dir / 'MILO_latent.pth'))
    dist = torch.from_numpy(np.load(fixtures / 'dist.npy'))[None]
    ref = torch.from_numpy(np.load(fixtures / 'ref.npy'))[None]
    assert float(milo.raw_error(dist, ref)) == pytest.approx(LATENT_RAW_ERROR, rel=1e-5)


def test_weights_dir_env_and_scorer(milo_dir, fixtures, monkeypatch):
    monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(milo_dir))
    scorer = scoring.create_metric('milo')
    assert scorer.output_names == ('quality_score', 'raw_error') and scorer.lower_better and scorer.kind == 'fr'
    out = scorer(read_image(fixtures / 'dist.png'), read_image(fixtures / 'ref.png'))
    assert list(out) == ['quality_score', 'raw_error']
    assert float(out['quality_score']) == pytest.approx(QUALITY_SCORE, rel=1e-5)
    assert float(out['raw_error']) == pytest.approx(RAW_ERROR, rel=1e-5)


def test_official_hash_checked(milo_dir):
    # the latent file given for the RGB entry fails the sha256 check
    with pytest.raises(WeightsError, match='sha256'):
        MILO(weights='milo', weights_path=str(milo_dir / 'MILO_latent.pth'))
    with pytest.raises(WeightsError, match='4-channel'):
        MILO(in_channels=3, weights=None, weights_path=str(milo_dir / 'MILO_latent.pth'))


def test_pseudomos_missing_is_clear(monkeypatch, tmp_path):
    from iqa_plugin import weights
    monkeypatch.setattr(weights, 'PACKAGE_WEIGHTS_DIR', tmp_path)  # as before the file ships
    with pytest.raises(WeightsError, match='milo-pseudomos'):
        scoring.create_metric('milo-pseudomos')


def test_pseudomos_packaged():
    from iqa_plugin.weights import PACKAGE_WEIGHTS_DIR
    shipped = PACKAGE_WEIGHTS_DIR / 'milo_pseudomos.pth'
    assert shipped.is_file(), f'shipped weights file missing: {shipped} (committed in iqa_plugin/weights/files/)'
    scorer = scoring.create_metric('milo-pseudomos')
    dist, ref = _pair(2, 32, 32)
    out = scorer(dist, ref)
    assert out['quality_score'].shape == (2,) and float(scorer(ref, ref)['quality_score'].abs().max()) <= ZERO_TOL


def test_missing_official_weights_offline():
    with pytest.raises(WeightsError, match='MILO.pth'):
        build_milo_scorer('cpu')  # offline (conftest), nothing in the isolated cache


# ---------------------------------------------------------------------- geometry, batching, gradients
@pytest.mark.parametrize('hw', [(97, 131), (16, 16), (17, 33), (63, 64), (31, 200)])
def test_odd_sizes_match_plain_reference(net, hw):
    dist, ref = _pair(1, *hw)
    out = net(dist, ref)
    assert out.mask.shape == (1, 1, *hw) and out.quality_map.shape == (1, 1, *hw)
    expected = reference_milo_error(net.state_dict(), dist, ref)
    assert torch.allclose(out.raw_error, expected, rtol=1e-5, atol=1e-8)
    same = net(ref, ref)
    assert float(same.raw_error) == 0.0 and abs(float(same.quality_score)) <= ZERO_TOL
    assert 0 < float(out.mask.min()) and float(out.mask.max()) < 4


def test_odd_size_official(milo_pth):
    milo = MILO(weights_path=milo_pth)
    dist, ref = _pair(1, 97, 131)
    out = milo(dist, ref)
    assert torch.allclose(out.raw_error, reference_milo_error(milo.state_dict(), dist, ref), rtol=1e-5)
    assert abs(float(milo(ref, ref).quality_score)) <= ZERO_TOL
    assert float(out.quality_score) > 0


def test_batch_equals_singles(net):
    dist, ref = _pair(2, 33, 47)
    both = net(dist, ref)
    for i in range(2):
        one = net(dist[i:i + 1], ref[i:i + 1])
        assert torch.allclose(both.raw_error[i], one.raw_error[0], rtol=1e-5)
        assert torch.allclose(both.quality_score[i], one.quality_score[0], rtol=1e-5)
    assert both.raw_error.shape == (2,)


def test_gradient_to_dist(net):
    dist, ref = _pair(2, 32, 32)
    dist.requires_grad_(True)
    net.raw_error(dist, ref).sum().backward()
    assert torch.isfinite(dist.grad).all() and dist.grad.abs().sum() > 0


def test_channels_last_same_scores(net):
    dist, ref = _pair(2, 37, 29)
    a = net.raw_error(dist, ref)
    m = net.mask(dist, ref, channels_last=True)
    b = net.error_map(dist, ref, m).mean(dim=(1, 2, 3))
    assert torch.allclose(a, b, rtol=1e-4)


def test_frozen_and_trainable(random_milo_weights):
    frozen = MILO(weights=None, weights_path=random_milo_weights)
    assert frozen.frozen and not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.training and not any(m.training for m in frozen.modules())
    trainable = MILO(in_channels=3, weights=None)
    assert not trainable.frozen and all(p.requires_grad for p in trainable.parameters())
    trainable.train()
    assert trainable.training
    dist, ref = _pair(1, 32, 32)
    trainable(dist, ref).quality_score.sum().backward()  # trainable end to end (label-free training)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable.parameters())
    assert sum(p.numel() for p in trainable.parameters()) < 50_000


def test_frozen_cache_shared(random_milo_weights):
    a = get_frozen_milo(None, random_milo_weights, 3, 'cpu')
    assert get_frozen_milo(None, random_milo_weights, 3, 'cpu') is a
    with pytest.raises(ValueError, match='weights'):
        get_frozen_milo(None, None)


def test_registered_arch():
    from basicsr.utils.registry import ARCH_REGISTRY
    assert ARCH_REGISTRY.get('MILO') is MILO
    net = ARCH_REGISTRY.get('MILO')(in_channels=4, weights=None)
    assert net.mask_finder_1.netBasic[0].in_channels == 9


# ---------------------------------------------------------------------- input errors (scorer)
@pytest.fixture
def scorer(random_milo_weights):
    return build_milo_scorer('cpu', weights='milo-pseudomos', weights_path=random_milo_weights)


def test_bad_inputs(scorer):
    dist, ref = _pair(1, 32, 32)
    with pytest.raises(ValueError, match=r'\(1, 3, 32, 32\).*\(1, 3, 32, 40\)'):
        scorer(dist, torch.rand(1, 3, 32, 40))
    with pytest.raises(ValueError, match='channels'):
        scorer(torch.rand(1, 4, 32, 32), torch.rand(1, 4, 32, 32))
    bad = dist.clone()
    bad[0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match='NaN'):
        scorer(bad, ref)
    with pytest.raises(ValueError, match='minimum side'):
        scorer(torch.rand(1, 3, 15, 32), torch.rand(1, 3, 15, 32))
    with pytest.raises(ValueError, match='ref is required'):
        scorer(dist)


def test_grayscale_replicated(scorer):
    g = torch.rand(1, 1, 32, 32)
    out = scorer(g, g)
    assert abs(float(out['quality_score'])) <= ZERO_TOL


def test_out_of_range(scorer, random_milo_weights):
    dist, ref = _pair(1, 32, 32)
    image_utils._range_warned.clear()  # the warning is given once per input name and process
    with pytest.warns(UserWarning, match='clamping'):
        out = scorer(dist * 1.5, ref)
    clamped = scorer((dist * 1.5).clamp(0, 1), ref)
    assert torch.allclose(out['raw_error'], clamped['raw_error'])
    strict = build_milo_scorer('cpu', weights='milo-pseudomos', weights_path=random_milo_weights, out_of_range='error')
    with pytest.raises(ValueError, match=r'\[0.0, 1.0\]'):
        strict(dist * 1.5, ref)


def test_scorer_frozen_no_grad(scorer):
    scorer.train()
    assert not scorer.training and not scorer.net.training
    assert not any(p.requires_grad for p in scorer.parameters())
    dist, ref = _pair(1, 32, 32)
    with torch.no_grad():
        assert not scorer(dist.requires_grad_(True), ref)['raw_error'].requires_grad
    scorer(dist, ref)['quality_score'].sum().backward()  # differentiable when asked (pyiqa as_loss)
    assert torch.isfinite(dist.grad).all() and dist.grad.abs().sum() > 0


def test_unknown_scorer_option(random_milo_weights):
    with pytest.raises(TypeError, match='bogus'):
        build_milo_scorer('cpu', weights_path=random_milo_weights, bogus=1)


# ---------------------------------------------------------------------- BasicSR metric
def test_calculate_milo_through_basicsr(milo_pth, fixtures, monkeypatch):
    import cv2
    from basicsr.metrics import calculate_metric

    scoring.clear_cache()
    built = []
    real = scoring.create_metric
    monkeypatch.setattr(scoring.cache, 'create_metric', lambda *a, **k: built.append(a) or real(*a, **k))
    sr = cv2.imread(str(fixtures / 'dist.png'))  # uint8 BGR HWC, as BasicSR hands them
    gt = cv2.imread(str(fixtures / 'ref.png'))
    opt = {'type': 'calculate_milo', 'weights_path': milo_pth, 'better': 'lower', 'device': 'cpu'}
    q = calculate_metric({'img': sr, 'img2': gt}, opt)
    assert isinstance(q, float) and q == pytest.approx(QUALITY_SCORE, rel=1e-5)
    sr, gt = sr[100:196, 200:296], gt[100:196, 200:296]  # smaller crops for the rest: faster
    scorer = scoring.get_cached_metric('milo', torch.device('cpu'), weights='milo', weights_path=milo_pth)
    dist = read_image_array(sr)
    ref = read_image_array(gt)
    out = scorer(dist, ref)
    assert calculate_metric({'img': sr, 'img2': gt}, {**opt, 'output': 'raw_error'}) == pytest.approx(
        float(out['raw_error']), rel=1e-6)
    cropped = calculate_metric({'img': sr, 'img2': gt}, {**opt, 'crop_border': 4})
    assert cropped == pytest.approx(float(scorer(dist[..., 4:-4, 4:-4], ref[..., 4:-4, 4:-4])['quality_score']),
                                    rel=1e-6)
    assert abs(calculate_metric({'img': gt, 'img2': gt}, opt)) <= ZERO_TOL
    assert len(built) == 1  # one network for all calls, shared with the tensor validator
    scoring.clear_cache()


def read_image_array(bgr):
    from iqa_plugin.utils.image import bgr_uint8_to_tensor
    return bgr_uint8_to_tensor(bgr)


def test_calculate_milo_errors(random_milo_weights):
    from iqa_plugin.metrics.milo_metric import calculate_milo
    img = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match='output'):
        calculate_milo(img, img, output='mos', weights_path=random_milo_weights, device='cpu')
    with pytest.raises(ValueError, match=r'\(32, 32, 3\).*\(32, 40, 3\)'):
        calculate_milo(img, np.zeros((32, 40, 3), np.uint8), weights_path=random_milo_weights, device='cpu')


# ---------------------------------------------------------------------- bench
def test_bench_small(milo_dir, monkeypatch, capsys):
    from iqa_plugin.apps.bench import BENCHES
    from iqa_plugin.apps.bench.milo_bench import main
    assert BENCHES['milo'] == 'iqa_plugin.apps.bench.milo_bench:main'
    monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(milo_dir))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = main(['--batch', '1', '--size', '32', '--repeats', '1', '--warmup', '0', '--threads', '2',
                    '--variants', 'detach_cl,full,lpips_vgg'])
    assert set(res['ms']) == {'reference', 'full', 'detach_cl', 'lpips_vgg'}
    assert res['ratio'] > 0 and res['default'] == 'detach_cl'
    assert res['max_score_diff'] < 1e-6
    assert 'lpips_vgg' in capsys.readouterr().out
