"""The package itself: shim, registries, option pre-flight, CLI errors."""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_tiny_options

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, env=None, timeout=300):
    import os
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, '-m', 'iqa_plugin.cli', *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_shim_makes_basicsr_import():
    import importlib

    from iqa_plugin.basicsr_glue import compat
    mod = importlib.import_module('torchvision.transforms.functional_tensor')
    assert hasattr(mod, 'rgb_to_grayscale')
    assert compat.apply() is False  # idempotent: already aliased
    import basicsr.data.degradations  # the module that needs the old name
    assert basicsr.data.degradations.rgb_to_grayscale is mod.rgb_to_grayscale


def test_shim_in_fresh_interpreter():
    code = 'import iqa_plugin, basicsr.train; print("ok")'
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith('ok')


def test_registries_hold_plugin_entries():
    from basicsr.utils.registry import MODEL_REGISTRY
    assert MODEL_REGISTRY.get('IQASRModel').__module__ == 'iqa_plugin.models.iqa_sr_model'


def test_registry_scan_imports_every_module():
    import iqa_plugin
    for sub, suffix in [('archs', '_arch.py'), ('losses', '_loss.py'), ('metrics', '_metric.py'),
                        ('data', '_dataset.py'), ('models', '_model.py')]:
        pkg = getattr(iqa_plugin, sub)
        files = sorted(p.stem for p in Path(pkg.__file__).parent.glob(f'*{suffix}'))
        assert sorted(m.__name__.rsplit('.', 1)[1] for m in pkg._modules) == files


def test_option_check_errors(tmp_path, tiny_sr):
    from iqa_plugin.basicsr_glue.options_check import OptionError, check_option_file

    opt = write_tiny_options(tmp_path / 'ok.yml', tiny_sr)
    check_option_file(opt)
    with pytest.raises(OptionError, match='option file not found'):
        check_option_file(tmp_path / 'nope.yml')
    bad = tmp_path / 'bad.yml'
    bad.write_text('name: [unclosed\n')
    with pytest.raises(OptionError, match='cannot parse'):
        check_option_file(bad)
    t = opt.read_text()
    (tmp_path / 'a.yml').write_text(t.replace('type: L1Loss', 'type: NoSuchLoss'))
    with pytest.raises(OptionError, match="unknown loss type 'NoSuchLoss' in train.pixel_opt"):
        check_option_file(tmp_path / 'a.yml')
    (tmp_path / 'b.yml').write_text(t.replace(f'{tiny_sr.as_posix()}/HR', '/no/such/folder', 1))
    with pytest.raises(OptionError, match='dataroot_gt: path not found: /no/such/folder'):
        check_option_file(tmp_path / 'b.yml')
    (tmp_path / 'c.yml').write_text(t.replace('type: calculate_psnr', 'type: calculate_nothing'))
    with pytest.raises(OptionError, match="unknown metric type 'calculate_nothing'"):
        check_option_file(tmp_path / 'c.yml')
    (tmp_path / 'd.yml').write_text(t.replace('model_type: IQASRModel', 'model_type: NoModel'))
    with pytest.raises(OptionError, match="unknown model type 'NoModel'"):
        check_option_file(tmp_path / 'd.yml')


def test_option_check_unknown_key_in_plugin_block(tmp_path, tiny_sr):
    from iqa_plugin.basicsr_glue.options_check import OptionError, check_option_file

    opt = write_tiny_options(tmp_path / 'o.yml', tiny_sr, extra_metrics='    q: {type: nr-lite, bogus: 1}')
    with pytest.raises(OptionError, match=r"unknown key 'bogus' in val.metrics.q \(nr-lite\)"):
        check_option_file(opt)


def cli(capsys, *args):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from iqa_plugin.cli import main
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_cli_errors_are_one_line(tmp_path, capsys):
    code, out, err = cli(capsys, 'score', '--metric', 'no-such-metric', '--dist', str(tmp_path))
    assert code == 2 and err.strip().count('\n') == 0 and "unknown metric 'no-such-metric'" in err
    code, out, err = cli(capsys, 'score', '--metric', 'nr-lite', '--dist', str(tmp_path / 'missing.png'))
    assert code == 2 and 'not found' in err and err.strip().count('\n') == 0
    (tmp_path / 'junk.png').write_bytes(b'not an image')
    code, out, err = cli(capsys, 'score', '--metric', 'nr-lite', '--dist', str(tmp_path / 'junk.png'))
    assert code == 2 and 'cannot read image' in err
    code, out, err = cli(capsys, 'bench', 'nothing')
    assert code == 2 and "unknown bench 'nothing'" in err
    code, out, err = cli(capsys, 'train', '-opt', str(tmp_path / 'none.yml'))
    assert code == 2 and 'option file not found' in err
    code, out, err = cli(capsys, 'score', '--metric', 'milo', '--dist', str(tmp_path / 'junk.png'))
    assert code == 2 and 'full-reference' in err


def test_cli_weights_list_and_verify(capsys):
    code, out, err = cli(capsys, 'weights', 'list')
    assert code == 0, err
    for name in ('milo', 'milo-latent', 'afine', 'clip-vit-b-32', 'nr-lite'):
        assert name in out
    code, out, err = cli(capsys, 'weights', 'verify')
    assert code == 0, out + err
    code, out, err = cli(capsys, 'weights', 'fetch', 'milo')  # offline in tests
    assert code == 2 and 'MILO.pth' in err and 'github.com/ugurcogalan06/MILO' in err


# every shipped option file passes the check: tests/test_options_check.py::test_shipped_option_files_pass


def test_bicubic_sr_dataset(tiny_sr):
    from basicsr.data import build_dataset
    ds = build_dataset({'name': 't', 'type': 'BicubicSRDataset', 'dataroot_gt': str(tiny_sr / 'HR'), 'scale': 4,
                        'phase': 'train', 'gt_size': 32})
    item = ds[0]
    assert item['gt'].shape == (3, 32, 32) and item['lq'].shape == (3, 8, 8)
    assert 0 <= float(item['lq'].min()) and float(item['lq'].max()) <= 1
    val = build_dataset({'name': 'v', 'type': 'BicubicSRDataset', 'dataroot_gt': str(tiny_sr / 'HR'), 'scale': 4,
                         'phase': 'val'})
    assert val[1]['gt'].shape == (3, 64, 64) and val[1]['lq'].shape == (3, 16, 16)
    with pytest.raises(ValueError, match='not a multiple of scale'):
        build_dataset({'name': 'b', 'type': 'BicubicSRDataset', 'dataroot_gt': str(tiny_sr / 'HR'), 'scale': 4,
                       'phase': 'train', 'gt_size': 30})
