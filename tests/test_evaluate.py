"""``iqa-plugin evaluate`` (``iqa_plugin.apps.evaluate``): matching, HGGT's multi-GT protocol, the Gold Standard row,
skipped metrics, bad input and the files written. Tiny folders made at test time (CPU, offline)."""
import csv
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import make_sr_folder

import iqa_plugin  # noqa: F401


def noisy_copies(src_dir, out_dir, suffix, sigma, seed=0):
    """``<stem>_<suffix>.png`` = the image of ``src_dir`` plus Gaussian noise (uint8 BGR); returns out_dir."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in sorted(Path(src_dir).glob('*.png')):
        im = cv2.imread(str(p)).astype(np.float32)
        cv2.imwrite(str(out_dir / f'{p.stem}_{suffix}.png'),
                    np.clip(np.round(im + rng.normal(0, sigma, im.shape)), 0, 255).astype(np.uint8))
    return out_dir


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """A make-multigt set (4 groups, 64 px) with two methods' results made from the originals."""
    from iqa_plugin.apps.multigt_make import make_multigt

    root = tmp_path_factory.mktemp('evaluate')
    src = make_sr_folder(root / 'src', n=4, size=64)
    make_multigt(src / 'HR', root / 'set', set_name='test', seed=1, disagree=0.0)
    noisy_copies(src / 'HR', root / 'low', 'low', 4)
    noisy_copies(src / 'HR', root / 'high', 'high', 16, seed=1)
    return root


def run_eval(*args, **kwargs):
    from iqa_plugin.apps.evaluate import evaluate
    kwargs.setdefault('progress', False)
    return evaluate(*args, **kwargs)


def test_multigt_protocol_is_the_mean_over_positives(data, tmp_path):
    """PSNR per image = mean of BasicSR's PSNR against each voted-Positive GT; then the mean over images."""
    from basicsr.metrics.psnr_ssim import calculate_psnr

    from iqa_plugin.data import multigt_layout as layout
    from iqa_plugin.scoring import get_cached_metric
    from iqa_plugin.utils.image import read_image

    res = run_eval([data / 'low', data / 'high'], data / 'set', metrics='psnr,nr-lite', device='cpu')
    assert res['protocol'] == 'multi-gt'
    scan = layout.scan_hggt(data / 'set' / 'images' / 'test', data / 'set' / 'labels' / 'test')
    groups = {g.name: g for g in scan.groups}
    assert max(sum(lab == layout.LABEL_POSITIVE for lab in g.labels) for g in groups.values()) >= 2
    rows = {(r['method'], r['image']): r for r in res['per_image']}
    for method in ('low', 'high'):
        per_image = []
        for name, g in groups.items():
            sr = cv2.imread(str(data / method / f'{name}_{method}.png'))
            pos = [p for p, lab in zip(g.paths, g.labels) if lab == layout.LABEL_POSITIVE] or [g.paths[0]]
            expect = np.mean([calculate_psnr(sr, cv2.imread(str(p)), crop_border=4) for p in pos])
            assert rows[(method, name)]['n_gt'] == len(pos)
            assert rows[(method, name)]['psnr'] == pytest.approx(expect, rel=1e-9)  # the same float64 code path
            per_image.append(expect)
        mean = next(m for m in res['methods'] if m['method'] == method)['means']['psnr']
        assert mean == pytest.approx(np.mean(per_image), rel=1e-9)
    low, high = (next(m for m in res['methods'] if m['method'] == k)['means']['psnr'] for k in ('low', 'high'))
    assert low > high + 6  # 4x the noise: about 12 dB apart
    # Gold Standard: nr-lite of the positives themselves, averaged per image; no full-reference value
    nr = get_cached_metric('nr-lite', device='cpu')
    for name, g in groups.items():
        pos = [p for p, lab in zip(g.paths, g.labels) if lab == layout.LABEL_POSITIVE] or [g.paths[0]]
        expect = np.mean([float(nr(read_image(p))[nr.output_names[0]])
                          for p in pos])
        gold = rows[('Gold Standard', name)]
        assert gold['psnr'] is None
        assert gold['nr-lite'] == pytest.approx(expect, abs=1e-5)  # float32 network, batched vs single


def test_single_gt_plain_folder_and_exact_names(data, tmp_path):
    """A plain GT folder: single-GT; a result named exactly like its GT matches too."""
    exact = tmp_path / 'exact'
    exact.mkdir()
    for p in sorted((data / 'low').glob('*.png')):
        (exact / p.name.replace('_low', '')).write_bytes(p.read_bytes())
    res = run_eval([data / 'low', exact], data / 'src' / 'HR', metrics=['psnr'], device='cpu')
    assert res['protocol'] == 'single-gt'
    low, ex = res['methods']
    assert low['images'] == ex['images'] == 4 and low['means']['psnr'] == pytest.approx(ex['means']['psnr'])
    assert all(r['n_gt'] == 1 for r in res['per_image'])
    assert not any(r['method'] == 'Gold Standard' for r in res['per_image'])  # no NR metric asked


def test_unmatched_files_warned_one_by_one_and_counted(data, tmp_path):
    from iqa_plugin.apps.evaluate import EvaluateWarning

    mixed = tmp_path / 'mixed'
    mixed.mkdir()
    for p in sorted((data / 'low').glob('*.png'))[:2]:
        (mixed / p.name).write_bytes(p.read_bytes())
    img = (data / 'low' / 'img00_low.png').read_bytes()
    for bad in ('cat.png', 'dog_01.png', 'img9_low.png'):
        (mixed / bad).write_bytes(img)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter('always')
        res = run_eval([mixed], data / 'src' / 'HR', metrics='psnr', device='cpu')
    lines = [str(w.message) for w in rec if issubclass(w.category, EvaluateWarning)]
    assert sorted(Path(line.split(':')[0]).name for line in lines if 'no GT named' in line) == \
        ['cat.png', 'dog_01.png', 'img9_low.png']
    assert f'3 unmatched file(s) in {mixed}' in lines and len(lines) == 4
    assert res['methods'][0]['images'] == 2 and res['methods'][0]['unmatched'] == 3


def test_empty_or_unmatched_folder_is_a_one_line_error(data, tmp_path):
    from iqa_plugin.cli import dispatch
    from iqa_plugin.cli.common import UsageError

    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(UsageError, match='no images in results folder') as e:
        dispatch(['evaluate', '--results', str(empty), '--gt', str(data / 'src' / 'HR'), '--metrics', 'psnr',
                  '--out', str(tmp_path / 'o')])
    assert '\n' not in str(e.value)
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'x_1.png').write_bytes((data / 'low' / 'img00_low.png').read_bytes())
    with pytest.raises(UsageError, match='matches a GT name') as e:
        dispatch(['evaluate', '--results', str(other), '--gt', str(data / 'src' / 'HR'), '--metrics', 'psnr',
                  '--out', str(tmp_path / 'o')])
    assert '\n' not in str(e.value)
    with pytest.raises(UsageError, match="unknown metric 'psnrr'"):
        dispatch(['evaluate', '--results', str(data / 'low'), '--gt', str(data / 'src' / 'HR'), '--metrics',
                  'psnrr', '--out', str(tmp_path / 'o')])


def test_missing_weights_skipped_with_a_note_and_outputs_written(data, tmp_path, monkeypatch, capsys):
    """musiq offline without its file: a 'skipped' column and a note, never a number; md/csv/json/png written."""
    from iqa_plugin.cli import dispatch

    monkeypatch.setenv('IQA_PLUGIN_OFFLINE', '1')
    out = tmp_path / 'out'
    assert dispatch(['evaluate', '--results', str(data / 'low'), str(data / 'high'), '--gt', str(data / 'set'),
                     '--metrics', 'psnr,ssim,musiq,nr-lite', '--out', str(out), '--device', 'cpu']) == 0
    for f in ('per_method.md', 'per_method.csv', 'per_image.md', 'per_image.csv', 'results.json',
              'bar_psnr.png', 'bar_ssim.png', 'bar_nr-lite.png', 'scatter_nr-lite_vs_psnr.png'):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert not (out / 'bar_musiq.png').exists()
    res = json.loads((out / 'results.json').read_text())
    assert 'musiq' in res['skipped'] and 'musiq_koniq' in res['skipped']['musiq']
    assert res['metrics'] == ['psnr', 'ssim', 'nr-lite']
    assert all('musiq' not in m['means'] for m in res['methods'])
    md = (out / 'per_method.md').read_text()
    assert '- musiq: ' in md and '| Gold Standard |' in md
    with open(out / 'per_method.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [r['method'] for r in rows] == ['low', 'high', 'Gold Standard']
    assert all(r['musiq'] == 'skipped' for r in rows)
    assert rows[2]['psnr'] == '' and float(rows[2]['nr-lite']) > 0
    assert float(rows[0]['psnr']) > float(rows[1]['psnr'])
    assert '| low |' in capsys.readouterr().out


def test_pil_plots_without_matplotlib(data, tmp_path, monkeypatch):
    import sys

    from PIL import Image

    from iqa_plugin.apps.evaluate import write_plots
    res = run_eval([data / 'low', data / 'high'], data / 'src' / 'HR', metrics='psnr,nr-lite', device='cpu')
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib -> ImportError
    files = write_plots(res, tmp_path)
    assert sorted(Path(f).name for f in files) == ['bar_nr-lite.png', 'bar_psnr.png', 'scatter_nr-lite_vs_psnr.png']
    with Image.open(files[0]) as im:
        assert im.size == (480, 320)


def test_lpips_from_local_files_with_inputs_in_minus_one_one(data, tmp_path, monkeypatch):
    """LPIPS-Alex is built from the local files only (stand-in weights here): 0 for identical images, and the
    value equals pyiqa's own LPIPS (loaded from the same files) on [0, 1] inputs with normalize=True."""
    import torch
    import torchvision

    from iqa_plugin.apps.evaluate import _pyiqa_fr_files, build_metrics, pyiqa_fr_available

    wdir = tmp_path / 'w'
    wdir.mkdir()
    monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(wdir))
    assert not pyiqa_fr_available('lpips')[0]
    calib, backbone = _pyiqa_fr_files('lpips')
    torch.manual_seed(0)
    alex = torchvision.models.alexnet(weights=None)
    torch.save({f'features.{k}': v for k, v in alex.features.state_dict().items()}, wdir / backbone.filename)
    torch.save({f'lin{i}.model.1.weight': torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))},
               wdir / calib.filename)
    assert pyiqa_fr_available('lpips') == (True, '')
    (m,), skipped = build_metrics(['lpips'], 'cpu')
    assert not skipped and m.kind == 'fr' and m.lower_better
    x = torch.rand(2, 3, 64, 64)
    y = (x + 0.2 * torch.rand_like(x)).clamp(0, 1)
    same, diff = m.fn(x, x), m.fn(x, y)
    assert max(abs(v) for v in same) < 1e-6 and min(diff) > 0
    from pyiqa.archs.lpips_arch import LPIPS

    from iqa_plugin.scoring.pyiqa_adapter import patched_attribute
    with patched_attribute(torchvision.models, 'alexnet', lambda *a, **k: alex):
        ref = LPIPS(pretrained=False, net='alex', version='0.1',
                    pretrained_model_path=str(wdir / calib.filename)).eval()
    with torch.no_grad():  # pyiqa's normalize=True maps [0, 1] to [-1, 1]: what evaluate feeds it directly
        expect = ref(x, y, normalize=True).reshape(-1).tolist()
    assert diff == pytest.approx(expect, rel=1e-5)  # same float32 network, same inputs
    res = run_eval([data / 'low'], data / 'src' / 'HR', metrics='lpips', device='cpu')
    assert res['metrics'] == ['lpips'] and res['methods'][0]['means']['lpips'] > 0


def test_hggt_image_set_with_labels_equals_the_root(data):
    """--gt <set images> --labels <set labels> is the root's protocol; the image set alone is single-GT."""
    root = run_eval([data / 'high'], data / 'set', metrics='psnr', device='cpu')
    split = run_eval([data / 'high'], data / 'set' / 'images' / 'test', labels=data / 'set' / 'labels' / 'test',
                     metrics='psnr', device='cpu')
    alone = run_eval([data / 'high'], data / 'set' / 'images' / 'test', metrics='psnr', device='cpu')
    assert split['protocol'] == 'multi-gt' and alone['protocol'] == 'single-gt'
    assert split['methods'][0]['means'] == root['methods'][0]['means']
    assert {r['image']: r['n_gt'] for r in split['per_image']} == {r['image']: r['n_gt'] for r in root['per_image']}
    assert all(r['n_gt'] == 1 for r in alone['per_image'])


def test_root_with_several_sets_names_evaluates_own_arguments(data, tmp_path):
    """An HGGT root holding two sets: the one-line error says which --gt (and --labels) to give, in evaluate's
    arguments (it used to say "choose one with the option set", an option evaluate does not have), and that
    command works."""
    import shutil

    from iqa_plugin.cli import dispatch
    from iqa_plugin.cli.common import UsageError

    root = tmp_path / 'root'
    for sub in ('images', 'labels'):
        shutil.copytree(data / 'set' / sub / 'test', root / sub / 'test')
        shutil.copytree(data / 'set' / sub / 'test', root / sub / 'other')
    base = ['evaluate', '--results', str(data / 'high'), '--metrics', 'psnr', '--out', str(tmp_path / 'o')]
    with pytest.raises(UsageError) as e:
        dispatch(base + ['--gt', str(root)])
    msg = str(e.value)
    assert '\n' not in msg and 'option set' not in msg and 'holds 2 sets (other, test)' in msg
    hint = f"--gt {root / 'images' / 'other'} --labels {root / 'labels' / 'other'}"
    assert msg.endswith(hint), msg
    assert dispatch(base + hint.split()) == 0  # the suggested command runs (HGGT's multi-GT protocol)
