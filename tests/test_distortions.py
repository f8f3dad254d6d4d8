"""The distortion engine: reproducibility, ranges, graded levels, signed maps, tiers."""
import itertools

import cv2
import numpy as np
import pytest
import torch

import iqa_plugin  # noqa: F401
from iqa_plugin.labels import distortions as D


def psnr(a, b):
    return float(10 * np.log10(1.0 / max(float(((a - b) ** 2).mean()), 1e-12)))


@pytest.fixture(scope='module')
def img():
    from skimage import data

    return cv2.resize(data.astronaut().astype(np.float32) / 255.0, (64, 64), interpolation=cv2.INTER_AREA)


def test_axes_and_table():
    assert D.AXES[0] == 'sharpness' and len(D.AXES) == len(set(D.AXES)) == 8
    assert set(D.AXIS_SIGNS) == set(D.AXES)
    for spec in D.OPS.values():
        assert spec.axes and all(a in D.AXES for a in spec.axes), spec.name
    # every required family is present
    for name in ('gaussian_blur', 'motion_blur', 'gaussian_noise', 'poisson_noise', 'colour_noise', 'jpeg', 'webp',
                 'jpeg2000', 'resample_nearest', 'resample_bilinear', 'unsharp', 'ringing', 'brighten', 'darken',
                 'contrast_up', 'contrast_down', 'saturate', 'desaturate', 'quantise', 'denoise'):
        assert name in D.OPS
    assert 'jpeg2000' not in D.DEFAULT_TYPES
    assert D.severity_of_level(3) == pytest.approx(0.6)
    with pytest.raises(ValueError, match='level'):
        D.severity_of_level(6)


@pytest.mark.parametrize('op', list(D.OPS))
def test_op_changes_image_keeps_format_and_is_graded(img, op):
    psnrs = []
    for s in (0.2, 0.6, 1.0):
        dist, maps = D.apply(img, op, s)
        assert dist.shape == img.shape and dist.dtype == np.float32
        assert dist.min() >= 0.0 and dist.max() <= 1.0
        assert maps.shape == (len(D.AXES), 64, 64) and maps.dtype == np.float32
        assert not np.array_equal(dist, img), f'{op} at {s} left the image unchanged'
        psnrs.append(psnr(dist, img))
        # deterministic: the same call gives the same output
        again, _ = D.apply(img, op, s)
        np.testing.assert_array_equal(dist, again)
    assert psnrs[0] > psnrs[1] > psnrs[2], f'{op}: PSNR not decreasing with level: {psnrs}'


def test_severity_zero_is_identity(img):
    dist, maps = D.apply(img, 'gaussian_noise', 0.0)
    np.testing.assert_array_equal(dist, img)
    assert not maps.any()


@pytest.mark.parametrize('op,axis,sign', [
    ('gaussian_blur', 'sharpness', -1), ('motion_blur', 'sharpness', -1), ('unsharp', 'sharpness', 1),
    ('ringing', 'sharpness', 1), ('gaussian_noise', 'noise', 1), ('denoise', 'noise', -1),
    ('brighten', 'brightness', 1), ('darken', 'brightness', -1), ('contrast_up', 'contrast', 1),
    ('contrast_down', 'contrast', -1), ('saturate', 'saturation', 1), ('desaturate', 'saturation', -1),
    ('jpeg', 'compression', 1), ('quantise', 'quantisation', 1), ('resample_nearest', 'resampling', 1)])
def test_map_signs(img, op, axis, sign):
    _, maps = D.apply(img, op, 0.5)
    k = D.AXIS_INDEX[axis]
    np.testing.assert_allclose(maps[k], sign * 0.5)
    others = [i for i in range(len(D.AXES)) if D.AXES[i] not in D.OPS[op].axes]
    assert not maps[others].any()


def test_brightness_direction_matches_image(img):
    up, _ = D.apply(img, 'brighten', 0.6)
    down, _ = D.apply(img, 'darken', 0.6)
    assert up.mean() > img.mean() > down.mean()
    blurred, _ = D.apply(img, 'gaussian_blur', 0.6)
    sharp, _ = D.apply(img, 'unsharp', 0.6)
    grad = lambda x: np.abs(np.diff(x, axis=1)).mean()
    assert grad(blurred) < grad(img) < grad(sharp)


def test_mask_localises_distortion_and_map(img):
    mask = np.zeros((64, 64), np.float32)
    mask[:, 32:] = 1.0
    mask[:, 28:32] = np.linspace(0, 1, 6)[1:5]
    dist, maps = D.apply(img, 'gaussian_noise', 0.8, mask=mask)
    np.testing.assert_array_equal(dist[:, :28], img[:, :28])  # untouched where the mask is 0
    assert not np.allclose(dist[:, 32:], img[:, 32:])
    k = D.AXIS_INDEX['noise']
    np.testing.assert_allclose(maps[k], 0.8 * mask, rtol=1e-6)
    assert not maps[:, :, :28].any()
    with pytest.raises(ValueError, match='mask shape'):
        D.apply(img, 'jpeg', 0.5, mask=np.ones((10, 10), np.float32))


@pytest.mark.parametrize('kind', D.MASK_KINDS)
def test_random_masks(kind):
    m = D.random_mask(64, 48, np.random.default_rng(1), kind)
    assert m.shape == (64, 48) and m.dtype == np.float32
    assert m.min() >= 0 and m.max() <= 1
    assert 0.05 < m.mean() < 0.95
    np.testing.assert_array_equal(m, D.random_mask(64, 48, np.random.default_rng(1), kind))


def test_maps_add_in_composition(img):
    eng = D.DistortionEngine()
    plan = [D.OpCall('gaussian_blur', 0.3, 1), D.OpCall('resample_bilinear', 0.4, 2), D.OpCall('brighten', 0.5, 3)]
    dist, maps, info = eng.render(img, plan)
    np.testing.assert_allclose(maps[D.AXIS_INDEX['sharpness']], -0.3 - 0.5 * 0.4, rtol=1e-6)
    np.testing.assert_allclose(maps[D.AXIS_INDEX['resampling']], 0.4, rtol=1e-6)
    np.testing.assert_allclose(maps[D.AXIS_INDEX['brightness']], 0.5, rtol=1e-6)
    assert [o['op'] for o in info['ops']] == ['gaussian_blur', 'resample_bilinear', 'brighten']
    # sequential: same as applying the ops one after the other
    step, _ = D.apply(img, 'gaussian_blur', 0.3, rng=1)
    step, _ = D.apply(step, 'resample_bilinear', 0.4, rng=2)
    step, _ = D.apply(step, 'brighten', 0.5, rng=3)
    np.testing.assert_array_equal(dist, step)


def test_sample_reproducible_and_independent_of_global_rng(img):
    a = D.DistortionEngine(seed=7).sample(img)
    np.random.seed(123)
    torch.manual_seed(123)
    np.random.random(10)
    b = D.DistortionEngine(seed=7).sample(img)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    # info replays the sample exactly
    dist, maps, _ = D.DistortionEngine().render(img, D.plan_from_info(a[2]))
    np.testing.assert_array_equal(dist, a[0])
    np.testing.assert_array_equal(maps, a[1])
    c = D.DistortionEngine(seed=8).sample(img)
    assert not np.array_equal(a[0], c[0])
    # explicit generators / int seeds
    eng = D.DistortionEngine()
    np.testing.assert_array_equal(eng.sample(img, rng=5)[0], eng.sample(img, rng=np.random.default_rng(5))[0])
    # the engine's own generator advances: consecutive samples differ
    e = D.DistortionEngine(seed=1)
    assert not np.array_equal(e.sample(img)[0], e.sample(img)[0])


def test_sample_structure(img):
    eng = D.DistortionEngine(max_ops=3, spatial_prob=0.5, seed=0)
    n_spatial = 0
    for i in range(40):
        _, maps, info = eng.sample(img)
        ops = info['ops']
        assert 1 <= len(ops) <= 3
        primaries = [D.OPS[o['op']].primary_axis for o in ops]
        assert len(set(primaries)) == len(primaries)
        stages = [D.OPS[o['op']].stage for o in ops]
        assert stages == sorted(stages)
        assert all(0.1 <= o['severity'] <= 1.0 for o in ops)
        n_spatial += sum(o['spatial'] for o in ops)
        # with one global op the map is constant and equals the signed severity on the primary axis
        if len(ops) == 1 and not ops[0]['spatial']:
            spec = D.OPS[ops[0]['op']]
            k = D.AXIS_INDEX[spec.primary_axis]
            np.testing.assert_allclose(maps[k], spec.axes[spec.primary_axis] * ops[0]['severity'], rtol=1e-6)
    assert n_spatial > 0
    fixed = D.DistortionEngine(seed=0).sample(img, severity=0.7)[2]
    assert all(o['severity'] == pytest.approx(0.7) for o in fixed['ops'])


def test_tiers_are_ordered(img):
    eng = D.DistortionEngine(seed=3)
    means = np.zeros(5)
    for seed in range(6):
        tiers = eng.make_tiers(img, 5, rng=seed)
        assert [t[2]['tier'] for t in tiers] == list(range(5))
        base = [t[2]['base_severity'] for t in tiers]
        assert base == sorted(base)
        ops0 = [o['op'] for o in tiers[0][2]['ops']]
        for _, maps, info in tiers:
            assert [o['op'] for o in info['ops']] == ops0  # same chain, only the severity grows
        p = [psnr(d, img) for d, _, _ in tiers]
        means += np.array(p) / 6
        assert p[0] > p[-1]
        # map magnitudes grow with the tier
        mags = [np.abs(m).sum() for _, m, _ in tiers]
        assert all(x < y for x, y in itertools.pairwise(mags))
    assert all(x > y for x, y in itertools.pairwise(means)), means


def test_tensor_wrapper_matches_numpy(img):
    x = torch.from_numpy(img.transpose(2, 0, 1).copy())
    dist_t, maps_t, _ = D.DistortionEngine(seed=2).sample_tensor(x)
    dist, maps, _ = D.DistortionEngine(seed=2).sample(img)
    assert dist_t.shape == (3, 64, 64) and maps_t.shape == (len(D.AXES), 64, 64)
    np.testing.assert_array_equal(dist_t.numpy().transpose(1, 2, 0), dist)
    np.testing.assert_array_equal(maps_t.numpy(), maps)
    d, m, infos = D.DistortionEngine(seed=2).make_tiers_tensor(x, 3)
    assert d.shape == (3, 3, 64, 64) and m.shape == (3, len(D.AXES), 64, 64) and len(infos) == 3


def test_input_validation(img):
    with pytest.raises(ValueError, match='unknown distortion'):
        D.apply(img, 'sepia', 0.5)
    with pytest.raises(ValueError, match='severity'):
        D.apply(img, 'jpeg', 1.5)
    with pytest.raises(ValueError, match='3 channels'):
        D.apply(np.zeros((32, 32, 4), np.float32), 'jpeg', 0.5)
    with pytest.raises(ValueError, match='NaN'):
        D.apply(np.full((32, 32, 3), np.nan, np.float32), 'jpeg', 0.5)
    with pytest.raises(ValueError, match='minimum side'):
        D.apply(np.zeros((8, 32, 3), np.float32), 'jpeg', 0.5)
    with pytest.raises(TypeError, match='float'):
        D.apply((img * 255).astype(np.uint8), 'jpeg', 0.5)
    with pytest.warns(UserWarning, match='clamping'):
        D.apply(img * 1.5, 'jpeg', 0.5)
    gray, _ = D.apply(img[:, :, :1].copy(), 'gaussian_blur', 0.5)
    assert gray.shape == (64, 64, 3)
    with pytest.raises(ValueError, match='types'):
        D.DistortionEngine(types=[])
    with pytest.raises(ValueError, match='unknown distortion'):
        D.DistortionEngine(types=['blurr'])
    with pytest.raises(ValueError, match='severity_range'):
        D.DistortionEngine(severity_range=(0.5, 0.2))


def test_command_line_table():
    """``python -m iqa_plugin.labels.distortions --table`` (the package's __main__ -> distortions.cli) prints one row
    per operation with the parameters of levels 1..5."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, '-m', 'iqa_plugin.labels.distortions', '--table', '--size', '32'],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = [r for r in res.stdout.splitlines() if r.startswith('| `')]
    assert [r.split('`')[1] for r in rows] == list(D.OPS)
    assert 'level 5 (s=1)' in res.stdout and 'quality=5' in rows[list(D.OPS).index('jpeg')]


def test_smooth_test_image():
    img = D.smooth_test_image(40)
    assert img.shape == (40, 40, 3) and img.dtype == np.float32 and 0 <= img.min() <= img.max() <= 1
    np.testing.assert_array_equal(img, D.smooth_test_image(40))
