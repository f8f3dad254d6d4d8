"""The demo: textured validation crops, a bicubic baseline in the summary, numeric checkpoint order, and a
short end-to-end run (few iterations) on scikit-image's bundled images, offline.

The full default demo (which must beat bicubic) is too long for the suite; its measured run is recorded in
docs/foundation.md (Demo).
"""
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from iqa_plugin.apps import demo


@pytest.fixture(scope='module')
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo') / 'out'
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}  # the default: 1 thread
    r = subprocess.run([sys.executable, '-m', 'iqa_plugin.cli', 'demo', '--iters', '4', '--val-freq', '2',
                        '--out', str(out), '--device', 'cpu'], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r.stdout


def test_demo_options_include_shipped_plugin_parts(tmp_path):
    path = demo.write_options(tmp_path, iters=10)
    text = path.read_text()
    assert 'MILOLoss' in text and 'milo-pseudomos' in text  # shipped weights -> loss and validators on
    assert 'type: relational' in text
    assert 'nr_lite: {type: nr-lite' in text and 'NRIQALoss' not in text  # a validator, not a loss
    n_val = len(list((tmp_path / 'data' / 'val' / 'HR').glob('*.png')))
    n_train = len(list((tmp_path / 'data' / 'train' / 'HR').glob('*.png')))
    assert n_val == len(demo.VAL_IMAGES) and n_train >= 10
    with pytest.raises(ValueError, match='unknown demo arch'):
        demo.write_options(tmp_path, arch='edsr')


def test_most_textured_window_finds_the_texture():
    rng = np.random.default_rng(0)
    img = np.full((120, 200, 3), 128, np.uint8)
    img[50:90, 130:170] = rng.integers(0, 256, (40, 40, 1), dtype=np.uint8)  # the only textured place
    top, left, energy = demo.most_textured_window(img, 40, stride=2)
    assert (top, left) == (50, 130)
    assert energy == pytest.approx(demo.texture_energy(img[50:90, 130:170]), rel=1e-9)
    assert demo.texture_energy(img[:40, :40]) == 0.0
    with pytest.raises(ValueError, match='exceeds'):
        demo.most_textured_window(img, 121)


def test_validation_crops_are_textured():
    crops = demo.val_crops()
    assert list(crops) == demo.VAL_IMAGES
    for name, (crop, info) in crops.items():
        assert crop.shape == (demo.VAL_SIDE, demo.VAL_SIDE, 3)
        energy = demo.texture_energy(crop)
        assert energy >= demo.MIN_VAL_TEXTURE and energy == pytest.approx(info['energy'], rel=1e-3)
        # the chosen window is at least as textured as the centre crop, which the demo used to take
        img = demo.load_sample(name)
        h, w, s = img.shape[0], img.shape[1], demo.VAL_SIDE
        assert energy >= demo.texture_energy(img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s])
    # the retina is nearly flat everywhere: no window of it qualifies as a validation crop
    with pytest.raises(ValueError, match='retina: its most textured'):
        demo.val_crops(['retina'])


def test_checkpoint_names_sorted_by_iteration(tmp_path):
    for stem in ('net_g_18', 'net_g_6', 'net_g_best', 'net_g_100', 'net_g_ema_best'):
        (tmp_path / f'{stem}.pth').write_bytes(b'')
    assert demo.checkpoint_names(tmp_path) == ['net_g_6', 'net_g_18', 'net_g_100', 'net_g_best', 'net_g_ema_best']


def test_bicubic_baseline_is_matlab_bicubic_of_the_lr(tmp_path):
    path = demo.write_options(tmp_path, iters=10)
    base = demo.bicubic_baseline(path)
    assert set(base) == {'psnr', 'ssim', 'milo', 'relational', 'nr_lite'}
    assert 0 < base['nr_lite'] < 1
    psnrs = []
    for hr_path in sorted((tmp_path / 'data' / 'val' / 'HR').glob('*.png')):
        hr = cv2.imread(str(hr_path)).astype(np.float64)
        lr = cv2.imread(str(tmp_path / 'data' / 'val' / 'LRx4' / hr_path.name))
        up = np.round(demo.bicubic_upscale(lr) * 255.0)  # channel order does not matter for RGB PSNR
        mse = np.mean((up[4:-4, 4:-4] - hr[4:-4, 4:-4]) ** 2)
        psnrs.append(10 * np.log10(255.0 ** 2 / mse))
    assert base['psnr'] == pytest.approx(np.mean(psnrs), rel=1e-9)  # dB, float64 on both sides
    assert 15 < base['psnr'] < 35  # textured crops: bicubic is far from perfect
    assert base['relational'] < 0  # relational is 0 for an identical image, negative for a distortion


def test_demo_runs(short_run):
    out, stdout = short_run
    assert 'Demo finished' in stdout
    assert 'on CPU (1 CPU thread)' in stdout  # --threads' default without OMP_NUM_THREADS
    exp = out / 'experiments' / 'iqa_plugin_demo_swinir'
    assert (exp / 'models' / 'net_g_best.pth').is_file()
    assert list((out / 'tb_logger' / 'iqa_plugin_demo_swinir').glob('events.*'))
    log = next(exp.glob('train_*.log')).read_text()
    assert 'l_milo' in log and '# relational' in log
    listed = re.search(r'checkpoints: .*\((.*)\)', stdout).group(1).split(', ')
    assert listed == demo.checkpoint_names(exp / 'models')[-4:] and listed[:2] == ['net_g_2', 'net_g_4']


def test_summary_shows_bicubic_next_to_each_metric(short_run):
    out, stdout = short_run
    assert 'after iter 4' in stdout and 'next to bicubic x4' in stdout
    base = demo.bicubic_baseline(out / 'demo_swinir.yml')
    for name, direction in (('psnr', 'higher'), ('ssim', 'higher'), ('milo', 'lower'), ('relational', 'higher'),
                            ('nr_lite', 'higher')):
        m = re.search(rf'^\s+{name}\s+(\S+)\s+(\S+)\s+{direction}\s+(better|WORSE) \(([-+]\S+)\)$', stdout, re.M)
        assert m, f'no {name} row in:\n{stdout}'
        model, bicubic, diff = float(m.group(1)), float(m.group(2)), float(m.group(4))
        # printed with 5 significant digits (the difference with 3)
        assert bicubic == pytest.approx(base[name], rel=1e-4)
        assert diff == pytest.approx(model - bicubic, abs=1e-4 * (abs(model) + abs(bicubic)) + 1e-2 * abs(diff))


def test_demo_nr_lite_validator_ranks_hr_over_bicubic_over_degenerate():
    """The demo's nr_lite validator must report sensible values (0.1.0 rated black images high): on every demo
    validation crop the HR scores above its x4 bicubic down-up version, which scores above flat grey and black
    images."""
    import torch

    from iqa_plugin.scoring.scorer import score_candidates
    from iqa_plugin.scoring import get_cached_metric

    scorer = get_cached_metric('nr-lite')
    for name, (crop, _) in demo.val_crops().items():
        hr = torch.from_numpy(crop.astype(np.float32) / 255.0).permute(2, 0, 1)
        lr = torch.nn.functional.interpolate(hr[None], scale_factor=0.25, mode='bicubic', antialias=True)
        bic = torch.nn.functional.interpolate(lr, size=hr.shape[-2:], mode='bicubic').clamp(0, 1)[0]
        cands = torch.stack([hr, bic, torch.full_like(hr, 0.5), torch.zeros_like(hr)])[None]
        q = score_candidates(scorer, cands)[0].tolist()
        assert q[0] > q[1] > max(q[2], q[3]), (name, q)


def test_threads_option(monkeypatch, capsys):
    """``demo --threads N`` reaches the run; the default is 1 unless OMP_NUM_THREADS is set (then torch follows
    it); a negative count is a one-line error."""
    from iqa_plugin.cli import main

    seen = []
    monkeypatch.setattr(demo, 'run_demo', lambda **kw: seen.append(kw['threads']))
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    for args in ([], ['--threads', '2'], ['--threads', '0']):
        with pytest.raises(SystemExit) as e:
            main(['demo', *args])
        assert e.value.code == 0
    monkeypatch.setenv('OMP_NUM_THREADS', '2')
    with pytest.raises(SystemExit):
        main(['demo'])
    assert seen == [1, 2, 0, None]
    with pytest.raises(SystemExit) as e:
        main(['demo', '--threads', '-1'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == 'iqa-plugin: error: --threads must be >= 0, got -1\n'


def test_summary_numbers_are_the_models_recorded_values(short_run):
    """The summary's model column is the model's own last validation (``metric_results``, recorded by the demo in
    ``last_validation.json``), not text parsed from the log; its iteration is the last validation's."""
    import json

    out, stdout = short_run
    record = json.loads(demo.last_validation_path(out, 'swinir').read_text())
    assert record['dataset'] == demo.VAL_DATASET and record['iter'] == 4
    assert set(record['metrics']) == {'psnr', 'ssim', 'milo', 'relational', 'nr_lite'}
    assert f"after iter {min(record['iter'], 4)};" in stdout
    # the record is the model's: BasicSR logged the same means to TensorBoard (float32) at that iteration
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / 'tb_logger' / 'iqa_plugin_demo_swinir'), size_guidance={'scalars': 0})
    acc.Reload()
    for name, value in record['metrics'].items():
        logged = [e.value for e in acc.Scalars(f'metrics/{demo.VAL_DATASET}/{name}') if e.step == record['iter']]
        assert logged and logged[-1] == pytest.approx(value, rel=1e-6, abs=1e-6), name
    for name, value in record['metrics'].items():
        m = re.search(rf'^\s+{name}\s+(\S+)\s', stdout, re.M)
        assert m, f'no {name} row in:\n{stdout}'
        assert m.group(1) == f'{value:.5g}', (name, m.group(1), value)


def test_summary_reads_the_recorded_validation_not_the_log(tmp_path):
    """``summarize`` prints the values of ``last_validation.json`` (the model's record), whatever the log says."""
    exp = tmp_path / 'experiments' / 'iqa_plugin_demo_swinir'
    (exp / 'models').mkdir(parents=True)
    (exp / 'train_x.log').write_text('INFO: Validation skimage_val\n\t # psnr: 99.0000\tBest: 99 @ 9 iter\n')
    demo.write_last_validation(tmp_path, 'swinir', {'iter': 7, 'metrics': {'psnr': 21.234567, 'milo': 0.0123456}})
    text = demo.summarize(tmp_path, 'swinir', 60.0, {'psnr': 20.0})
    assert 'after iter 7;' in text and '99.0' not in text
    assert re.search(r'^\s+psnr\s+21\.235\s+20\s+higher\s+better \(\+1\.23\)$', text, re.M), text
    assert re.search(r'^\s+milo\s+0\.012346\s+-', text, re.M), text
    assert 'none found' in demo.summarize(tmp_path / 'empty', 'swinir', 1.0)
