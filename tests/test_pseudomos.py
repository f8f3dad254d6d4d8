"""Pseudo-MOS ensemble, normalisation, cache files and the BasicSR dataset."""
import cv2
import numpy as np
import pytest
import torch

import iqa_plugin  # noqa: F401
from iqa_plugin.labels import distortions as D
from iqa_plugin.labels import pseudomos as P

pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def img():
    from skimage import data

    return cv2.resize(data.astronaut().astype(np.float32) / 255.0, (64, 64), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope='module')
def ensemble():
    return P.PseudoMOS()


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp('refs')
    for i, im in enumerate([data.astronaut(), data.coffee(), data.chelsea()]):
        cv2.imwrite(str(d / f'{i}.png'), cv2.resize(im, (96, 72), interpolation=cv2.INTER_AREA)[:, :, ::-1])
    cv2.imwrite(str(d / 'small.png'), cv2.resize(data.camera(), (40, 40)))  # grayscale, smaller than a patch
    return d


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


# ---------------------------------------------------------------------------------------------
def test_normalize_zscore_per_group():
    raw = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [100.0, 5.0], [300.0, 5.0]])
    groups = torch.tensor([0, 0, 0, 1, 1])
    z = P.normalize_scores(raw, groups, 'zscore')
    for g in (0, 1):
        zg = z[groups == g]
        torch.testing.assert_close(zg.mean(0), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(z[:3, 0], z[:3, 1])  # scale-free
    assert z[3, 1] == 0 and z[4, 1] == 0  # constant column -> 0
    assert z[4, 0] > z[3, 0]


def test_normalize_rank_and_global():
    raw = torch.tensor([[0.3], [0.1], [0.1], [0.9]])
    r = P.normalize_scores(raw, None, 'rank')[:, 0]
    torch.testing.assert_close(r, torch.tensor([2 / 3, 0.5 / 3, 0.5 / 3, 1.0]))
    g = P.normalize_scores(raw, torch.tensor([0, 0, 1, 1]), 'global')[:, 0]
    torch.testing.assert_close(g, (raw[:, 0] - raw.mean()) / raw.std(unbiased=False))
    single = P.normalize_scores(torch.tensor([[1.0, 2.0]]), None, 'rank')
    torch.testing.assert_close(single, torch.full((1, 2), 0.5))
    with pytest.raises(ValueError, match='normalize'):
        P.normalize_scores(raw, None, 'minmax')


def test_members_resolution():
    assert P.resolve_members() == P.DEFAULT_MEMBERS
    assert P.resolve_members('nlpd, gmsd') == ('nlpd', 'gmsd')
    with pytest.raises(ValueError, match='unknown pseudo-MOS member'):
        P.resolve_members(['psnr2'])
    with pytest.raises(ValueError, match='duplicate'):
        P.resolve_members(['gmsd', 'gmsd'])
    assert set(P.DEFAULT_MEMBERS) <= set(P.available_members())
    auto = P.resolve_members('auto')
    assert auto[:len(P.DEFAULT_MEMBERS)] == P.DEFAULT_MEMBERS
    for name in ('lpips', 'dists'):
        ok, _ = P.member_status(name)
        assert (name in auto) == ok
        if not ok:  # never downloaded: an explicit request names what is missing
            with pytest.raises(FileNotFoundError, match=name):
                P.resolve_members([name])


def test_orientation_and_identity(ensemble, img):
    assert ensemble.lower_better == {'nlpd': True, 'gmsd': True, 'fsim': False}
    ref = t(img)
    raw = ensemble.member_scores(ref[None], ref)
    assert raw.shape == (1, 3)
    assert raw.abs().max() < 1e-4  # identical -> 0 on every oriented member


def test_stronger_distortion_scores_worse(ensemble, img):
    levels = (0.2, 0.6, 1.0)
    ops = ('gaussian_blur', 'gaussian_noise', 'jpeg', 'desaturate')
    dists = torch.stack([t(D.apply(img, op, s)[0]) for op in ops for s in levels])
    pmos, raw = ensemble(dists, t(img))
    assert pmos.shape == (12,) and raw.shape == (12, 3)
    raw = raw.reshape(len(ops), len(levels), 3)
    pm = pmos.reshape(len(ops), len(levels))
    # every member gets worse with the level for blur, noise and JPEG (luma distortions)
    assert (raw[:3, 1:] > raw[:3, :-1]).all()
    # saturation is only seen by the chroma-aware member (FSIM-c)
    assert (raw[3, 1:, 2] > raw[3, :-1, 2]).all()
    # pseudo-MOS: stronger = worse, per type and on average
    assert (pm[:, 1:] > pm[:, :-1]).all()
    assert pmos.mean() == pytest.approx(0.0, abs=1e-5)  # z-scored within the one reference group


def test_normalisation_per_reference(ensemble, img):
    img2 = np.ascontiguousarray(img[::-1, ::-1] * 0.5 + 0.25)  # another 'content', low contrast
    eng = D.DistortionEngine(seed=0)
    refs, dists, groups = [], [], []
    for g, im in enumerate((img, img2)):
        for _ in range(4):
            dists.append(t(eng.sample(im)[0]))
            refs.append(t(im))
            groups.append(g)
    pmos, _ = ensemble(torch.stack(dists), torch.stack(refs), groups=torch.tensor(groups))
    for g in (0, 1):
        assert pmos[torch.tensor(groups) == g].mean() == pytest.approx(0.0, abs=1e-5)
    pr, _ = ensemble(torch.stack(dists), torch.stack(refs), groups=torch.tensor(groups), normalize='rank')
    assert pr.min() >= 0 and pr.max() <= 1
    with pytest.raises(ValueError, match='shapes differ'):
        ensemble.member_scores(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 48, 64))


# ---------------------------------------------------------------------------------------------
def _opt(root, **kw):
    opt = {'name': 'pm', 'type': 'PseudoMOSDataset', 'phase': 'train', 'dataroot': str(root), 'patch_size': 48,
           'group_size': 6, 'chains': 2, 'length': 5, 'seed': 1}
    opt.update(kw)
    return opt


def test_dataset_keys_shapes_and_reproducibility(image_dir):
    from basicsr.data import build_dataset

    ds = build_dataset(_opt(image_dir))
    assert len(ds) == 5
    item = ds[3]  # 3 % 4 images -> the small grayscale one, upscaled to the patch size
    assert item['ref'].shape == (3, 48, 48) and item['ref'].dtype == torch.float32
    assert item['dist'].shape == (6, 3, 48, 48)
    assert item['maps'].shape == (6, len(D.AXES), 48, 48)
    assert item['pmos'].shape == (6,) and item['raw'].shape == (6, 3)
    assert item['tier'].tolist() == [0, 1, 2, 0, 1, 2] and item['chain'].tolist() == [0, 0, 0, 1, 1, 1]
    assert item['ref_path'].endswith('small.png')
    again = ds[3]
    for k in ('ref', 'dist', 'maps', 'pmos'):
        assert torch.equal(item[k], again[k]), k
    other = build_dataset(_opt(image_dir, seed=2))[3]
    assert not torch.equal(item['dist'], other['dist'])
    # tiers: within each chain the pseudo-MOS increases with the tier, on average over items
    pm = torch.stack([ds[i]['pmos'].reshape(2, 3) for i in range(4)]).reshape(-1, 3).mean(0)
    assert pm[0] < pm[1] < pm[2], pm


def test_dataset_random_mode_without_pmos(image_dir):
    from basicsr.data import build_dataset

    ds = build_dataset(_opt(image_dir, mode='random', pmos=False, return_maps=False, group_size=4))
    item = ds[0]
    assert 'pmos' not in item and 'maps' not in item
    assert item['dist'].shape == (4, 3, 48, 48) and (item['tier'] == -1).all()
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch['dist'].shape == (2, 4, 3, 48, 48)


def test_dataset_option_errors(image_dir, tmp_path):
    from iqa_plugin.data.pseudomos_dataset import PseudoMOSDataset

    with pytest.raises(ValueError, match='chains'):
        PseudoMOSDataset(_opt(image_dir, chains=4))
    with pytest.raises(FileNotFoundError, match='folder not found'):
        PseudoMOSDataset(_opt(tmp_path / 'nope'))
    with pytest.raises(ValueError, match='no images'):
        PseudoMOSDataset(_opt(tmp_path))
    with pytest.raises(ValueError, match='176'):
        PseudoMOSDataset(_opt(image_dir, members=['ms_ssim']))
    with pytest.raises(ValueError, match='per group'):
        PseudoMOSDataset(_opt(image_dir, normalize='global'))
    with pytest.raises(FileNotFoundError, match='cache not found'):
        PseudoMOSDataset({'cache_file': str(tmp_path / 'x.pt')})


def test_cache_build_matches_on_the_fly(image_dir, tmp_path):
    from basicsr.data import build_dataset

    out = tmp_path / 'pm.pt'
    assert P.main(['build', '--dataroot', str(image_dir), '--out', str(out), '--num', '2', '--patch-size', '48',
                   '--group-size', '6', '--chains', '2', '--seed', '1', '--store-maps']) == 0
    data = P.load_cache(out)  # weights_only=True
    assert data['dist'].dtype == torch.uint8 and data['dist'].shape == (2, 6, 3, 48, 48)
    assert data['maps'].dtype == torch.float16 and data['members'] == list(P.DEFAULT_MEMBERS)
    cached = build_dataset({'name': 'c', 'type': 'PseudoMOSDataset', 'cache_file': str(out)})
    fly = build_dataset(_opt(image_dir))
    assert len(cached) == 2 and cached.return_maps
    for i in range(2):
        a, b = cached[i], fly[i]
        for k in ('ref', 'dist', 'raw', 'pmos', 'tier', 'chain'):
            assert torch.equal(a[k], b[k]), k
        torch.testing.assert_close(a['maps'], b['maps'], atol=1e-3, rtol=1e-3)  # float16 storage
        assert a['ref_path'] == b['ref_path']
    ranked = build_dataset({'name': 'c', 'type': 'PseudoMOSDataset', 'cache_file': str(out), 'normalize': 'rank',
                            'return_maps': False})
    assert 'maps' not in ranked[0] and 0 <= ranked[0]['pmos'].min() <= ranked[0]['pmos'].max() <= 1
    glob = build_dataset({'name': 'c', 'type': 'PseudoMOSDataset', 'cache_file': str(out), 'normalize': 'global'})
    assert torch.cat([glob[0]['pmos'], glob[1]['pmos']]).mean() == pytest.approx(0.0, abs=1e-5)
    torch.save({'format': 'other'}, tmp_path / 'bad.pt')
    with pytest.raises(ValueError, match='not a pseudo-MOS cache'):
        P.load_cache(tmp_path / 'bad.pt')



def test_cache_io(tmp_path):
    """save_cache / load_cache round trip, atomic write, and the checks both share (pseudomos_cache)."""
    from iqa_plugin.labels.pseudomos_cache import CACHE_FORMAT, load_cache, save_cache, to_uint8

    g, n, m = 2, 3, 2
    data = {'ref': to_uint8(torch.rand(g, 3, 16, 16)), 'dist': to_uint8(torch.rand(g, n, 3, 16, 16)),
            'raw': torch.rand(g, n, m), 'tier': torch.arange(n).repeat(g, 1), 'chain': torch.zeros(g, n).long(),
            'members': ['nlpd', 'gmsd'], 'axes': list(D.AXES)}
    out = save_cache(data, tmp_path / 'sub' / 'c.pt')
    assert out.is_file() and not (tmp_path / 'sub' / 'c.pt.part').exists()
    back = load_cache(out)
    assert back['format'] == CACHE_FORMAT and back['members'] == data['members']
    assert torch.equal(back['dist'], data['dist']) and torch.equal(back['raw'], data['raw'])
    assert P.load_cache is load_cache and P.CACHE_FORMAT == CACHE_FORMAT  # the public names stay in pseudomos
    assert torch.equal(to_uint8(torch.tensor([-0.5, 0.0, 0.6 / 255, 1.0, 2.0])),
                       torch.tensor([0, 0, 1, 255, 255], dtype=torch.uint8))
    with pytest.raises(ValueError, match='lacks keys: chain'):
        save_cache({k: v for k, v in data.items() if k != 'chain'}, tmp_path / 'x.pt')
    with pytest.raises(ValueError, match='inconsistent shapes'):
        save_cache(dict(data, raw=torch.rand(g, n, m + 1)), tmp_path / 'x.pt')
    assert not (tmp_path / 'x.pt').exists()
    (tmp_path / 'junk.pt').write_bytes(b'not a torch file')
    with pytest.raises(ValueError, match='cannot read pseudo-MOS cache'):
        load_cache(tmp_path / 'junk.pt')

def test_dataset_on_photos(tmp_path):
    """On real photos (scikit-image's bundled ones, written as PNGs: every clone has them)."""
    from basicsr.data import build_dataset
    from skimage import data

    for name in ('astronaut', 'coffee', 'rocket'):
        cv2.imwrite(str(tmp_path / f'{name}.png'), getattr(data, name)()[:, :, ::-1])
    ds = build_dataset({'name': 'photos', 'type': 'PseudoMOSDataset', 'dataroot': str(tmp_path),
                        'patch_size': 64, 'group_size': 4, 'chains': 1, 'length': 2, 'members': ['gmsd', 'nlpd']})
    item = ds[1]
    assert item['dist'].shape == (4, 3, 64, 64) and item['pmos'].shape == (4,)
    assert item['pmos'][-1] > item['pmos'][0]  # the strongest tier is worse than the mildest
