"""The demo runs end to end (few iterations) on scikit-image's bundled images, offline."""
import os
import subprocess
import sys

from iqa_plugin import demo


def test_demo_options_include_shipped_plugin_parts(tmp_path):
    path = demo.write_options(tmp_path, iters=10)
    text = path.read_text()
    assert 'MILOLoss' in text and 'milo-pseudomos' in text  # shipped weights -> loss and validators on
    assert 'nr-lite' in text and 'type: relational' in text
    for split in ('train', 'val'):
        assert len(list((tmp_path / 'data' / split / 'HR').glob('*.png'))) == len(
            demo.TRAIN_IMAGES if split == 'train' else demo.VAL_IMAGES)


def test_demo_runs(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='2')
    r = subprocess.run([sys.executable, '-m', 'iqa_plugin.cli', 'demo', '--iters', '4', '--val-freq', '2',
                        '--out', str(tmp_path / 'out')], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Demo finished' in r.stdout
    exp = tmp_path / 'out' / 'experiments' / 'iqa_plugin_demo_swinir'
    assert (exp / 'models' / 'net_g_best.pth').is_file()
    assert list((tmp_path / 'out' / 'tb_logger' / 'iqa_plugin_demo_swinir').glob('events.*'))
    log = next(exp.glob('train_*.log')).read_text()
    assert 'l_milo' in log and '# relational' in log
