"""Multi-GT data: HGGT majority vote, layout scanning and bad input, ``MultiGTDataset`` items
(shared crop/augmentation, LQ modes, require_positive, val phase, collation) and ``make-multigt``.

The sets are made at test time by ``iqa-plugin make-multigt`` from a few synthetic 64-96 px images."""
import hashlib
import json
import logging
import random
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from iqa_plugin.data import multigt_layout as L

N_IMAGES = 9


def _write_hr(folder, n, seed=0):
    """``n`` textured RGB images of 64-96 px (uint8 PNG) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(64, 97)), int(rng.integers(64, 97))
        small = rng.uniform(0, 255, (h // 6, w // 6, 3)).astype(np.float32)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 12, (h, w, 3))
        cv2.imwrite(str(folder / f'img{i:02d}.png'), np.clip(img, 0, 255).astype(np.uint8))
    return folder


def _make(src, out, *extra):
    from iqa_plugin.cli import dispatch

    assert dispatch(['make-multigt', '--src', str(src), '--out', str(out), *extra]) == 0
    return out


@pytest.fixture(scope='module')
def made(tmp_path_factory):
    """A make-multigt set (HGGT layout, set 'train', 9 groups of 64 x 64) and its HR folder."""
    root = tmp_path_factory.mktemp('multigt')
    src = _write_hr(root / 'hr', N_IMAGES)
    return _make(src, root / 'set', '--size', '64', '--seed', '3'), src


@pytest.fixture
def work(made, tmp_path):
    """A private copy of the made set, to break or modify."""
    dst = tmp_path / 'set'
    shutil.copytree(made[0], dst)
    return dst


@pytest.fixture
def basicsr_log():
    """Records of BasicSR's root logger (it does not propagate, so caplog cannot see them)."""
    from basicsr.utils import get_root_logger

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = get_root_logger()
    level = logger.level
    logger.setLevel(logging.INFO)  # as in training (BasicSR sets INFO with its log file)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def _dataset(**opt):
    from basicsr.data import build_dataset

    base = dict(name='mg', type='MultiGTDataset', phase='train', scale=4, gt_size=32, lq_mode='bicubic',
                use_hflip=True, use_rot=True)
    if 'dataroot_lq' in opt:
        del base['lq_mode']  # the default with dataroot_lq: disk
    base.update(opt)
    return build_dataset(base)


def _names(root):
    return sorted(p.stem for p in (root / 'images' / 'train' / 'original').iterdir())


def _set_labels(root, name, picture_labels):
    """Rewrite annotator JSONs of group ``name``: picture_labels = {key: (A, B, C)}."""
    for i, a in enumerate(L.ANNOTATORS):
        p = root / 'labels' / 'train' / a / f'{name}.json'
        d = json.loads(p.read_text())
        for key, labels in picture_labels.items():
            d[key]['Label'] = labels[i]
        p.write_text(json.dumps(d))


# ------------------------------------------------------------------------------------------ labels
def test_majority_vote_rule():
    P, S, N = 'Positive', 'Similar', 'Negative'
    assert L.majority_vote([P, P, N]) == L.LABEL_POSITIVE
    assert L.majority_vote([N, S, N]) == L.LABEL_NEGATIVE
    assert L.majority_vote([S, S, S]) == L.LABEL_SIMILAR
    assert L.majority_vote([P, P, P]) == L.LABEL_POSITIVE
    for perm in ([P, S, N], [N, P, S], [S, N, P]):  # all three different -> Similar
        assert L.majority_vote(perm) == L.LABEL_SIMILAR
    assert L.majority_vote(['positive', ' NEGATIVE', 'Positive']) == L.LABEL_POSITIVE
    assert L.majority_vote([1, -1, -1]) == L.LABEL_NEGATIVE
    with pytest.raises(ValueError, match='unknown label'):
        L.majority_vote([P, 'Great', P])
    assert (L.LABEL_NEGATIVE, L.LABEL_SIMILAR, L.LABEL_POSITIVE, L.LABEL_ORIGINAL) == (-1, 0, 1, 2)


def test_majority_vote_on_hand_written_jsons(tmp_path):
    """An HGGT set written by hand: one group, labels per annotator chosen per candidate."""
    images, labels = tmp_path / 'images' / 'x', tmp_path / 'labels' / 'x'
    img = np.full((20, 24, 3), 128, np.uint8)
    for folder in ('original', '01', '02', '03', '04'):
        (images / folder).mkdir(parents=True)
        name = 'g.png' if folder == 'original' else f'g_{folder}.png'
        cv2.imwrite(str(images / folder / name), img)
    votes = {'Picture_2': ('Positive', 'Positive', 'Negative'),   # 2 of 3 -> Positive
             'Picture_3': ('Negative', 'Similar', 'Negative'),    # -> Negative
             'Picture_4': ('Positive', 'Similar', 'Negative'),    # all different -> Similar
             'Picture_5': ('Similar', 'Positive', 'Positive')}    # -> Positive
    for i, a in enumerate('ABC'):
        (labels / a).mkdir(parents=True)
        d = {k: {'Name': f'g_{int(k[-1]) - 1:02d}', 'File': f'g_{int(k[-1]) - 1:02d}.png', 'Label': v[i]}
             for k, v in votes.items()}
        (labels / a / 'g.json').write_text(json.dumps(d))
    scan = L.scan_hggt(*L.resolve_hggt_dirs(tmp_path, 'x'))
    assert not scan.skipped and scan.candidate_names == ['original', '01', '02', '03', '04']
    (g,) = scan.groups
    assert g.labels == [L.LABEL_ORIGINAL, L.LABEL_POSITIVE, L.LABEL_NEGATIVE, L.LABEL_SIMILAR, L.LABEL_POSITIVE]
    assert g.size == (20, 24) and g.paths[3].name == 'g_03.png'


# ------------------------------------------------------------------------------------------ bad input
def test_bad_input_skipped_once_and_counted(work, tmp_path, basicsr_log):
    names = _names(work)
    img_dir, lab_dir = work / 'images' / 'train', work / 'labels' / 'train'
    outside = tmp_path / 'outside.png'
    cv2.imwrite(str(outside), np.zeros((64, 64, 3), np.uint8))

    def edit_json(name, annot, fn):
        p = lab_dir / annot / f'{name}.json'
        d = json.loads(p.read_text())
        fn(d)
        p.write_text(json.dumps(d))
        return p

    expect = {}  # group -> (reason, the file the warning must name)
    (img_dir / '02' / f'{names[0]}_02.png').unlink()
    expect[names[0]] = ('missing_file', img_dir / '02' / f'{names[0]}_02.png')
    (lab_dir / 'B' / f'{names[1]}.json').write_text('{"Picture_2": {"Label": "Positive"')
    expect[names[1]] = ('bad_json', lab_dir / 'B' / f'{names[1]}.json')
    expect[names[2]] = ('unknown_label', edit_json(names[2], 'C', lambda d: d['Picture_4'].update(Label='Great')))
    expect[names[3]] = ('outside', edit_json(names[3], 'A', lambda d: d['Picture_3'].update(File='../../../x.png')))
    expect[names[4]] = ('outside', edit_json(names[4], 'B', lambda d: d['Picture_5'].update(Name=str(outside))))
    link = img_dir / '03' / f'{names[5]}_03.png'
    link.unlink()
    link.symlink_to(outside)
    expect[names[5]] = ('outside', link)
    big = img_dir / '04' / f'{names[6]}_04.png'
    cv2.imwrite(str(big), np.zeros((64, 72, 3), np.uint8))
    expect[names[6]] = ('size_mismatch', big)

    ds = _dataset(dataroot=str(work), set='train')
    assert sorted(g.name for g in ds.groups) == sorted(names[7:])
    assert ds.skip_counts == {'missing_file': 1, 'bad_json': 1, 'unknown_label': 1, 'outside': 3, 'size_mismatch': 1}
    warnings = [r.getMessage() for r in basicsr_log if r.levelno == logging.WARNING]
    assert len(warnings) == len(expect)
    for name, (reason, path) in expect.items():
        mine = [w for w in warnings if f"'{name}'" in w]
        assert len(mine) == 1, (name, warnings)
        assert L.SKIP_REASONS[reason] in mine[0] and str(path) in mine[0], mine[0]
    info = [r.getMessage() for r in basicsr_log if r.levelno == logging.INFO and 'skipped' in r.getMessage()]
    assert len(info) == 1 and 'skipped 7' in info[0] and 'path outside the set: 3' in info[0], info
    # the surviving groups still give items
    assert ds[0]['gt_candidates'].shape == (5, 3, 32, 32)


def test_missing_lq_file_skipped(work, tmp_path, basicsr_log):
    names = _names(work)
    lq_dir = tmp_path / 'lq'
    lq_dir.mkdir()
    for n in names[1:]:
        cv2.imwrite(str(lq_dir / f'{n}.png'), np.zeros((16, 16, 3), np.uint8))
    cv2.imwrite(str(lq_dir / f'{names[1]}.png'), np.zeros((15, 16, 3), np.uint8))  # not 64 / 4
    ds = _dataset(dataroot=str(work), dataroot_lq=str(lq_dir))
    assert ds.lq_mode == 'disk' and ds.skip_counts == {'missing_lq': 1, 'size_mismatch': 1}
    assert len(ds) == len(names) - 2
    warnings = [r.getMessage() for r in basicsr_log if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and any(str(lq_dir / f'{names[0]}.png') in w for w in warnings)
    # training crops larger than the images: skipped at start-up, not at the first unlucky item
    with pytest.raises(ValueError, match=f'smaller than gt_size: {len(names)}'):
        _dataset(dataroot=str(work), gt_size=68)


def test_option_errors_are_one_line(work):
    with pytest.raises(ValueError, match="unknown lq_mode 'x'"):
        _dataset(dataroot=str(work), lq_mode='x')
    with pytest.raises(ValueError, match='val phase needs dataroot_lq'):
        _dataset(dataroot=str(work), lq_mode='realesrgan', phase='val')
    with pytest.raises(ValueError, match='needs the kernel options'):
        _dataset(dataroot=str(work), lq_mode='realesrgan')
    with pytest.raises(ValueError, match='gt_size 30 is not a multiple'):
        _dataset(dataroot=str(work), gt_size=30)
    for name in _names(work):
        (work / 'labels' / 'train' / 'A' / f'{name}.json').write_text('[]')
    with pytest.raises(ValueError, match='no usable group'):
        _dataset(dataroot=str(work))


# ------------------------------------------------------------------------------------------ items
def _dihedral(x):
    """The 8 flips/rotations of an (..., H, W) tensor."""
    out = []
    for k in range(4):
        r = torch.rot90(x, k, (-2, -1))
        out += [r, r.flip(-1)]
    return out


def test_one_crop_and_augmentation_for_all(work):
    """Candidate 01 replaced by the inverse of the original (a pointwise transform): in every item it
    must stay the exact inverse of the original crop, whatever the crop, flip and rotation."""
    from basicsr.utils.matlab_functions import imresize

    from iqa_plugin.utils.image import read_image

    img_dir = work / 'images' / 'train'
    for name in _names(work):
        orig = cv2.imread(str(img_dir / 'original' / f'{name}.png'))
        cv2.imwrite(str(img_dir / '01' / f'{name}_01.png'), 255 - orig)
    ds = _dataset(dataroot=str(work))
    seen = set()
    for seed in range(12):
        random.seed(seed)
        item = ds[seed % len(ds)]
        c = item['gt_candidates']
        assert torch.equal(item['gt'], c[0])
        assert torch.allclose(c[1], 1 - c[0], atol=1e-6)
        # gt is a window of the original under one of the 8 dihedral transforms
        full = read_image(item['gt_path'])[0]
        hits = [(t, y, x) for t, v in enumerate(_dihedral(full)) for y in range(v.shape[1] - 31)
                for x in range(v.shape[2] - 31) if torch.equal(v[:, y:y + 32, x:x + 32], c[0])]
        assert hits, 'gt is not a crop of the original'
        seen.add(hits[0][0])
        # bicubic LQ = BasicSR's imresize of the cropped original
        ref = np.clip(imresize(c[0].permute(1, 2, 0).numpy(), 1 / 4), 0, 1)
        assert item['lq'].shape == (3, 8, 8)
        assert torch.allclose(item['lq'], torch.from_numpy(ref).permute(2, 0, 1).float(), atol=1e-6)
    assert len(seen) > 1, 'no flip/rotation was ever applied'


def test_lq_from_disk_shares_the_crop(work, tmp_path):
    """LQ files = 4x4 block means of the originals: block means commute with aligned crops, flips and
    rotations, so the LQ of an item must be the block mean of its GT (to 8-bit rounding)."""
    lq_dir = tmp_path / 'lq'
    lq_dir.mkdir()
    for p in (work / 'images' / 'train' / 'original').iterdir():
        img = cv2.imread(str(p)).astype(np.float32)
        cv2.imwrite(str(lq_dir / p.name), np.round(cv2.resize(img, (16, 16), interpolation=cv2.INTER_AREA))
                    .astype(np.uint8))
    ds = _dataset(dataroot=str(work), dataroot_lq=str(lq_dir))
    for seed in range(6):
        random.seed(seed)
        item = ds[seed]
        assert item['lq_path'].startswith(str(lq_dir))
        mean = torch.nn.functional.avg_pool2d(item['gt'][None], 4)[0]
        assert item['lq'].shape == (3, 8, 8)
        assert (item['lq'] - mean).abs().max() <= 0.51 / 255 + 1e-6


def test_require_positive_drops_groups_without_positive(work, basicsr_log):
    names = _names(work)
    _set_labels(work, names[0], {k: ('Negative', 'Negative', 'Similar') for k in
                                 ('Picture_2', 'Picture_3', 'Picture_4', 'Picture_5')})
    _set_labels(work, names[1], {'Picture_2': ('Positive', 'Similar', 'Negative'),  # all differ -> Similar
                                 'Picture_3': ('Positive', 'Negative', 'Negative'),
                                 'Picture_4': ('Similar', 'Similar', 'Positive'),
                                 'Picture_5': ('Negative', 'Negative', 'Negative')})
    _set_labels(work, names[2], {'Picture_5': ('Positive', 'Negative', 'Positive')})  # -> Positive
    full = _dataset(dataroot=str(work))
    expected = sorted(g.name for g in full.groups if L.LABEL_POSITIVE in g.labels)
    assert names[0] not in expected and names[1] not in expected and names[2] in expected
    ds = _dataset(dataroot=str(work), require_positive=True)
    assert sorted(g.name for g in ds.groups) == expected
    assert ds.dropped_no_positive == len(names) - len(expected) >= 2
    line = [r.getMessage() for r in basicsr_log if 'require_positive' in r.getMessage()][-1]
    assert f'dropped {ds.dropped_no_positive} without a Positive' in line
    for i in range(len(ds)):
        assert (ds[i]['gt_labels'] == L.LABEL_POSITIVE).any()


def test_val_phase_whole_images(work):
    from iqa_plugin.data.bicubic_sr_dataset import bicubic_lq
    from iqa_plugin.utils.image import read_image

    ds = _dataset(dataroot=str(work), phase='val')
    random.seed(0)
    a = ds[1]
    random.seed(1)
    b = ds[1]
    for k in ('gt_candidates', 'lq'):
        assert torch.equal(a[k], b[k])
    assert a['gt_candidates'].shape == (5, 3, 64, 64)
    for i, p in enumerate(a['gt_paths']):
        assert torch.equal(a['gt_candidates'][i], read_image(p)[0])  # whole, unaugmented
    lq = bicubic_lq(a['gt'].permute(1, 2, 0).numpy(), 4)
    assert torch.allclose(a['lq'], torch.from_numpy(lq).permute(2, 0, 1), atol=1e-6)


def test_dataloader_collation_matches_the_contract(made):
    ds = _dataset(dataroot=str(made[0]), set='train')
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, shuffle=False)))
    assert batch['gt_candidates'].shape == (3, 5, 3, 32, 32) and batch['gt_candidates'].dtype == torch.float32
    assert batch['gt'].shape == (3, 3, 32, 32) and torch.equal(batch['gt'], batch['gt_candidates'][:, 0])
    assert batch['lq'].shape == (3, 3, 8, 8)
    assert batch['gt_labels'].shape == (3, 5) and batch['gt_labels'].dtype == torch.int64
    assert (batch['gt_labels'][:, 0] == L.LABEL_ORIGINAL).all()
    assert set(batch['gt_labels'][:, 1:].flatten().tolist()) <= {-1, 0, 1}
    assert [t[0] for t in batch['gt_names']] == ['original', '01', '02', '03', '04']
    assert len(batch['gt_paths']) == 5 and all(len(t) == 3 for t in batch['gt_paths'])
    assert list(batch['gt_path']) == list(batch['gt_paths'][0]) == list(batch['lq_path'])
    assert len(batch['group']) == 3
    for v in batch['gt_candidates'].unique():
        assert 0 <= float(v) <= 1


def _realesrgan_opt():
    return dict(blur_kernel_size=21, kernel_list=['iso', 'aniso', 'generalized_iso', 'plateau_iso'],
                kernel_prob=[0.45, 0.25, 0.15, 0.15], blur_sigma=[0.2, 3], betag_range=[0.5, 4], betap_range=[1, 2],
                sinc_prob=0.3, blur_kernel_size2=21, kernel_list2=['iso', 'aniso'], kernel_prob2=[0.5, 0.5],
                blur_sigma2=[0.2, 1.5], betag_range2=[0.5, 4], betap_range2=[1, 2], sinc_prob2=0.3,
                final_sinc_prob=0.8)


def test_realesrgan_mode_kernels_come_from_basicsr(work, tmp_path):
    """The kernels are RealESRGANDataset's own: same seeds, same kernels as a real RealESRGANDataset."""
    from basicsr.data.realesrgan_dataset import RealESRGANDataset

    from iqa_plugin.data.multigt_dataset import RealESRGANKernels

    cv2.imwrite(str(tmp_path / 'a.png'), np.zeros((400, 400, 3), np.uint8))
    (tmp_path / 'meta.txt').write_text('a.png\n')
    real = RealESRGANDataset(dict(_realesrgan_opt(), io_backend={'type': 'disk'}, dataroot_gt=str(tmp_path),
                                  meta_info=str(tmp_path / 'meta.txt'), use_hflip=False, use_rot=False))
    ours = RealESRGANKernels(_realesrgan_opt())
    for seed in range(5):
        random.seed(seed)
        np.random.seed(seed)
        want = real[0]
        random.seed(seed)
        np.random.seed(seed)
        got = ours.sample()
        for k in ('kernel1', 'kernel2', 'sinc_kernel'):
            assert got[k].shape == (21, 21) and torch.equal(got[k], want[k]), (seed, k)

    img_dir = work / 'images' / 'train'
    for name in _names(work):
        orig = cv2.imread(str(img_dir / 'original' / f'{name}.png'))
        cv2.imwrite(str(img_dir / '02' / f'{name}_02.png'), 255 - orig)
    ds = _dataset(dataroot=str(work), lq_mode='realesrgan', crop_pad_size=48, **_realesrgan_opt())
    item = ds[0]
    assert 'lq' not in item and item['lq_path'] == item['gt_path']
    assert item['gt_candidates'].shape == (5, 3, 48, 48)  # crop_pad_size, not gt_size: the model crops
    assert torch.allclose(item['gt_candidates'][2], 1 - item['gt'], atol=1e-6)
    assert abs(float(item['kernel1'].sum()) - 1) < 1e-5


# ------------------------------------------------------------------------------------------ generic layout
def test_generic_layout_with_labels_csv(made, tmp_path):
    src = made[0] / 'images' / 'train'
    root = tmp_path / 'generic'
    names = _names(made[0])
    for folder in ('original', '01', '02', '03', '04'):
        (root / ('hr' if folder == 'original' else f'v{folder}')).mkdir(parents=True)
        for n in names:
            s = src / folder / (f'{n}.png' if folder == 'original' else f'{n}_{folder}.png')
            shutil.copy(s, root / ('hr' if folder == 'original' else f'v{folder}') / f'{n}.png')
    csv = tmp_path / 'labels.csv'
    csv.write_text('name,candidate,label\n'
                   f'{names[0]}.png,v01,Positive\n{names[0]},v03,negative\n{names[1]},v02,1\n'
                   f'{names[2]},v01,Great\n{names[3]},v09,Positive\nnot_a_group,v01,Positive\n')
    ds = _dataset(layout='generic', dataroot_gt=str(root), original_folder='hr', labels_csv=str(csv))
    assert ds.candidate_names == ['hr', 'v01', 'v02', 'v03', 'v04']
    assert ds.skip_counts == {'unknown_label': 1, 'bad_json': 1}
    by_name = {g.name: g.labels for g in ds.groups}
    assert by_name[names[0]] == [2, 1, 0, -1, 0] and by_name[names[1]] == [2, 0, 1, 0, 0]
    assert names[2] not in by_name and names[3] not in by_name and len(by_name) == len(names) - 2
    assert _dataset(layout='generic', dataroot_gt=str(root), original_folder='hr', require_positive=True,
                    labels_csv=str(csv)).dropped_no_positive == len(names) - 4


# ------------------------------------------------------------------------------------------ make-multigt
def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob('*')):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_make_multigt_layout_labels_and_determinism(made, tmp_path):
    root, src = made
    names = _names(root)
    assert len(names) == N_IMAGES
    for n in names:
        for a in L.ANNOTATORS:
            d = json.loads((root / 'labels' / 'train' / a / f'{n}.json').read_text())
            assert sorted(d) == ['Picture_2', 'Picture_3', 'Picture_4', 'Picture_5']
            assert all(set(v) == {'Name', 'File', 'Label'} and v['Label'] in L.LABEL_STRINGS for v in d.values())
        for f in ('01', '02', '03', '04'):
            assert cv2.imread(str(root / 'images' / 'train' / f / f'{n}_{f}.png')).shape == (64, 64, 3)
    meta = json.loads((root / 'meta' / 'train.json').read_text())
    cands = [c for g in meta['groups'] for c in g['candidates']]
    assert {c['true_label'] for c in cands} == {'Positive', 'Similar', 'Negative'}
    assert any(len(set(c['votes'])) > 1 for c in cands), 'the simulated annotators never disagree'
    scan = L.scan_hggt(*L.resolve_hggt_dirs(root, 'train'))
    assert [L.LABEL_NAMES[x] for g in scan.groups for x in g.labels[1:]] == [c['label'] for c in cands]
    # a candidate is its operation applied to the stored original
    from iqa_plugin.apps.multigt_make import render  # noqa: F401  (the public entry for one operation)

    c0 = meta['groups'][0]['candidates'][0]
    orig = cv2.imread(str(root / 'images' / 'train' / 'original' / f'{names[0]}.png'))
    cand = cv2.imread(str(root / 'images' / 'train' / c0['folder'] / c0['file']))
    assert np.abs(orig.astype(int) - cand.astype(int)).max() > 0  # not a copy

    small = _write_hr(tmp_path / 'hr', 3, seed=1)
    one, two, other = (_make(small, tmp_path / d, '--seed', s, '--set', 'v') for d, s in
                       (('one', '7'), ('two', '7'), ('other', '8')))
    assert _digest(one) == _digest(two) != _digest(other)
    assert (one / 'images' / 'v' / 'original').is_dir()  # --size absent: the images keep their size
    assert cv2.imread(str(next((one / 'images' / 'v' / 'original').iterdir()))).shape[:2] != (64, 64)


def test_make_multigt_input_errors(tmp_path, capsys):
    from iqa_plugin.cli import main

    (tmp_path / 'empty').mkdir()
    for args, msg in ((['--src', str(tmp_path / 'empty')], 'no images in'),
                      (['--src', str(tmp_path / 'missing')], 'folder not found'),
                      (['--src', str(_write_hr(tmp_path / 'hr', 1)), '--size', '8'], 'below the 16 px'),
                      (['--src', str(tmp_path / 'hr'), '--set', '../x'], 'plain folder name')):
        with pytest.raises(SystemExit) as e:
            main(['make-multigt', '--out', str(tmp_path / 'out'), *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
