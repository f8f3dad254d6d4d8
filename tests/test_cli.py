"""The ``iqa-plugin`` command: layout, start-up without torch, help texts, the error policy (input
errors: one line, status 2; bugs: traceback, status 1), ``weights verify`` failures, the ``run`` entry
for scripts that import basicsr first, the lazy torchvision shim and ``bench cli``."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def cli(capsys, *args):
    """Run the command in-process; returns (exit code, stdout, stderr)."""
    from iqa_plugin.cli import main
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def run_python(*args, env=None, cwd=None, timeout=300):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def write_png(path, size=128, seed=0):
    import cv2
    img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


# ------------------------------------------------------------------------------ layout
def test_cli_package_layout():
    """One module per subcommand; none imports back into iqa_plugin.cli; iqa_plugin.train imports no CLI."""
    from test_layout import PACKAGE_DIR, import_graph

    import iqa_plugin.cli as c
    assert [m.NAME for m in c.SUBCOMMANDS] == ['train', 'score', 'score-gts', 'weights', 'lora', 'bench', 'demo', 'run',
                                                  'make-multigt', 'evaluate', 'repro', 'diff']
    modules, edges = import_graph(PACKAGE_DIR)
    assert 'iqa_plugin.relational_cli' not in modules and 'iqa_plugin.cli.common' in modules
    for name in ('train', 'score', 'weights', 'bench', 'demo', 'run', 'common'):
        assert 'iqa_plugin.cli' not in edges[f'iqa_plugin.cli.{name}'], name
    below = {m for m in modules if not m.startswith('iqa_plugin.cli')}
    for m in below:
        assert not {e for e in edges[m] if e.startswith('iqa_plugin.cli')}, m  # nothing below uses the CLI
    assert 'iqa_plugin.cli.common' in edges['iqa_plugin.cli.score']


# ------------------------------------------------------------------------------ start-up
def _imported(importtime_stderr):
    """Top-level module names in ``python -X importtime`` output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith('import time:') and '|' in line:
            names.add(line.rsplit('|', 1)[1].strip().split('.')[0])
    return names


@pytest.mark.parametrize('args', [['--help'], ['weights', 'list'], ['bench', '--help'], ['score', '--help']])
def test_light_commands_import_no_torch(args, tmp_path):
    """The command's entry module (``python -m iqa_plugin_cli``, what the console script runs) defers the
    registration."""
    r = run_python('-X', 'importtime', '-m', 'iqa_plugin_cli', *args, cwd=tmp_path,
                   env={'IQA_PLUGIN_LAZY_REGISTER': ''})
    assert r.returncode == 0, r.stderr[-3000:]
    heavy = _imported(r.stderr) & {'torch', 'torchvision', 'basicsr', 'pyiqa', 'numpy', 'cv2'}
    assert not heavy, f'{args} imported {heavy}'
    assert 'iqa_plugin' in _imported(r.stderr)


def test_console_script_runs_the_entry_module():
    """setup.py's console script is the top-level entry module, which setup.py ships."""
    setup_py = (REPO / 'setup.py').read_text()
    assert "'iqa-plugin=iqa_plugin_cli:main'" in setup_py and "py_modules=['iqa_plugin_cli']" in setup_py
    script = Path(sys.executable).with_name('iqa-plugin')
    if script.is_file():  # the installed script was generated from the current entry point
        assert 'from iqa_plugin_cli import main' in script.read_text()


def test_import_registers_whatever_argv_says():
    """Only the explicit switch defers registration: argv (a console script's name, ``-m``) does not."""
    import iqa_plugin
    assert iqa_plugin.is_registered()  # this process imported it as a library: everything registered
    code = ("import sys; sys.argv[0] = '/some/bin/iqa-plugin'; import iqa_plugin; "
            "print(iqa_plugin.is_registered(), 'torch' in sys.modules)")
    r = run_python('-c', code, env={'IQA_PLUGIN_LAZY_REGISTER': ''})
    assert r.returncode == 0 and r.stdout.split() == ['True', 'True'], r.stderr
    r = run_python('-c', code, env={'IQA_PLUGIN_LAZY_REGISTER': '1'})  # the switch
    assert r.returncode == 0 and r.stdout.split() == ['False', 'False'], r.stderr


def test_entry_module_defers_only_while_importing(tmp_path):
    """The entry module sets the switch for the package's import only (children of the command register as
    usual); a switch already in the environment wins (``0``: the eager baseline of ``bench cli``)."""
    code = ("import os, sys, io, contextlib\n"
            "import iqa_plugin_cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            "        iqa_plugin_cli.main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "import iqa_plugin\n"
            "print(iqa_plugin.is_registered(), 'torch' in sys.modules, repr(os.environ.get('IQA_PLUGIN_LAZY_REGISTER')))\n")
    env = {k: v for k, v in os.environ.items() if k != 'IQA_PLUGIN_LAZY_REGISTER'}
    r = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ['False', 'False', 'None'], (r.stdout, r.stderr[-3000:])
    r = run_python('-c', code, cwd=tmp_path, env={'IQA_PLUGIN_LAZY_REGISTER': ''})  # empty: as unset
    assert r.returncode == 0 and r.stdout.split() == ['False', 'False', "''"], (r.stdout, r.stderr[-3000:])
    r = run_python('-c', code, cwd=tmp_path, env={'IQA_PLUGIN_LAZY_REGISTER': '0'})
    assert r.returncode == 0 and r.stdout.split() == ['True', 'True', "'0'"], (r.stdout, r.stderr[-3000:])


def test_register_is_idempotent():
    import iqa_plugin
    from basicsr.utils.registry import LOSS_REGISTRY
    iqa_plugin.register()
    iqa_plugin.register()  # BasicSR's registry raises on a second registration of a name
    assert LOSS_REGISTRY.get('MILOLoss').__module__.startswith('iqa_plugin.losses')


# ------------------------------------------------------------------------------ help texts
def test_top_help_lists_every_subcommand(capsys):
    code, out, _ = cli(capsys, '--help')
    assert code == 0
    for name in ('train', 'score', 'weights', 'bench', 'demo', 'run'):
        assert f'    {name} ' in out
    code, out, _ = cli(capsys, 'train', '--help')
    assert code == 0 and 'iqa-plugin train -opt YAML' in out


def test_bench_help_lists_benches(capsys):
    from iqa_plugin.apps.bench import BENCHES, describe
    assert set(BENCHES) >= {'milo', 'afine', 'nriqa', 'cli'}
    for args in (['bench', '--help'], ['bench', '-h'], ['bench', 'list']):
        code, out, err = cli(capsys, *args)
        assert code == 0, err
        for name in BENCHES:
            line = next(x for x in out.splitlines() if x.split()[:1] == [name])
            assert describe(name) in line and len(describe(name)) > 20
    code, out, err = cli(capsys, 'bench')
    assert code == 2 and 'bench needs a NAME' in err
    code, out, err = cli(capsys, 'bench', 'nothing')
    assert code == 2 and "unknown bench 'nothing'" in err


@pytest.mark.parametrize('args', [['score', '--help'], ['score', '--list']])
def test_score_help_lists_metrics_with_kind_direction_offline(capsys, args):
    """``--help`` checks the weights that need no torch (the weights manager's files) and marks the pyiqa and
    diffusers rows '?' (their check imports pyiqa); ``--list`` checks every row."""
    from iqa_plugin import scoring
    from iqa_plugin.cli.score import checked_without_torch
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    lines = {x.split()[0]: x for x in out.splitlines() if x.startswith('  ') and x.split()[0] in scoring.METRICS}
    assert set(lines) == set(scoring.METRICS)
    for name, spec in scoring.METRICS.items():
        words = lines[name].split()
        assert words[1] == spec.kind.upper()
        assert ' '.join(words[2:5]) == f'{spec.better} is better'
        if args[1] == '--help' and not checked_without_torch(name):
            assert words[5] == '?' and (spec.pyiqa or name == 'lgdm'), lines[name]
            continue
        ok, _ = scoring.available_offline(name)
        assert (words[5] == 'yes') == ok, lines[name]
    assert lines['nr-lite'].split()[5] == 'yes'  # ships with the package
    assert 'no: needs MILO.pth' in lines['milo']  # offline in tests, official weights absent
    assert checked_without_torch('milo') and not checked_without_torch('musiq')
    if args[1] == '--list':
        assert 'no: needs musiq_koniq' in lines['musiq']  # conftest: empty torch home


# ------------------------------------------------------------------------------ messages
def test_missing_pyiqa_weights_speak_of_the_option(tmp_path, capsys):
    img = write_png(tmp_path / 'x.png')
    for metric in ('niqe', 'brisque'):
        code, out, err = cli(capsys, 'score', '--metric', metric, '--dist', str(img))
        assert code == 2 and err.count('\n') == 1, err
        assert 'give its path with --weights PATH' in err
        assert 'pretrained=False' not in err and 'weights_path' not in err and "file's path explicitly" not in err
    code, out, err = cli(capsys, 'score', '--metric', 'niqe', '--dist', str(img), '--weights', str(tmp_path / 'no.mat'))
    assert code == 2 and 'no.mat' in err


def test_command_line_message():
    from iqa_plugin.cli.score import command_line_message
    msg = ("weights for 'niqe' (n.mat) not available locally; searched /a; download U into one of those folders, "
           "or give the file's path explicitly; pretrained=False builds the network with random weights")
    assert command_line_message(msg) == ("weights for 'niqe' (n.mat) not available locally; searched /a; download U "
                                         'into one of those folders, or give its path with --weights PATH')
    assert command_line_message('pass weights_path=/x or clip_weights_path=/y') == \
        'pass --weights /x or --clip-weights /y'
    assert command_line_message("weights 'clip-vit-b-32' (ViT-B-32.pt) ..., or give the file's path explicitly") \
        .endswith('give its path with --clip-weights PATH')


# ------------------------------------------------------------------------------ error policy
def test_input_errors_are_one_line_exit_2(tmp_path, capsys):
    cases = [
        (['score', '--metric', 'no-such', '--dist', str(tmp_path)], "unknown metric 'no-such'"),  # ValueError (ours)
        (['score', '--metric', 'nr-lite', '--dist', str(tmp_path / 'missing.png')], 'not found'),  # FileNotFoundError
        (['score', '--metric', 'milo', '--dist', str(tmp_path)], 'full-reference'),  # UsageError
        (['train', '-opt', str(tmp_path / 'none.yml')], 'option file not found'),  # OptionError
        (['train', '--debug'], 'missing option file'),  # OptionError
        (['weights', 'fetch', 'milo'], 'MILO.pth'),  # WeightsError (offline)
        (['weights', 'list', 'nothing'], "unknown weights 'nothing'"),  # WeightsError
        (['run', str(tmp_path / 'none.py')], 'script not found'),
    ]
    (tmp_path / 'junk.png').write_bytes(b'not an image')
    cases.append((['score', '--metric', 'nr-lite', '--dist', str(tmp_path / 'junk.png')], 'cannot read image'))
    for args, text in cases:
        code, out, err = cli(capsys, *args)
        assert code == 2, (args, err)
        assert err.startswith('iqa-plugin: error: ') and err.count('\n') == 1 and text in err, (args, err)


def _devices_not_here():
    import torch
    return ['cuda:99', 'bogus'] + ([] if torch.cuda.is_available() else ['cuda'])


@pytest.mark.parametrize('command', ['score', 'score-gts', 'evaluate', 'repro', 'bench'])
def test_device_not_here_is_one_line_exit_2(command, tmp_path, capsys):
    """``--device cuda`` on a machine without a GPU (and a GPU index or a name that does not exist anywhere) is an
    input error: one line, status 2, nothing written (it was torch's 38-line traceback from the first .to())."""
    img = write_png(tmp_path / 'x.png')
    out = tmp_path / 'out'
    args = {'score': ['score', '--metric', 'nr-lite', '--dist', str(img)],
            'score-gts': ['score-gts', '-opt', str(tmp_path / 'opt.yml'), '--out', str(out / 's.json')],
            'evaluate': ['evaluate', '--results', str(tmp_path), '--gt', str(tmp_path), '--metrics', 'psnr',
                         '--out', str(out)],
            'repro': ['repro', '--small', '--tiny', '--out', str(out)],
            'bench': ['bench', 'nriqa']}[command]
    devices = _devices_not_here()
    if command == 'repro':  # its --device is a choice of auto, cpu, cuda (argparse refuses the others)
        devices = [d for d in devices if d == 'cuda']
    for device in devices:
        code, _, err = cli(capsys, *args, '--device', device)
        assert code == 2 and err.count('\n') == 1 and err.startswith(f'iqa-plugin: error: --device {device}: '), err
        assert ('not a device name' in err) == (device == 'bogus'), err
        assert not out.exists()
    if command == 'bench':  # the bench's arguments are its own: the = form is found too
        code, _, err = cli(capsys, *args, '--device=cuda:99')
        assert code == 2 and err.startswith('iqa-plugin: error: --device cuda:99: '), err


# ------------------------------------------------------------------------------ exact parsing
BOGUS = '--no-such-option'


def _exact_cases(tmp_path):
    """{case: argv} with every required argument present, so that only the unknown one is wrong."""
    d, img = str(tmp_path), str(tmp_path / 'x.png')
    return {
        'score': ['score', '--metric', 'nr-lite', '--dist', img],
        'score-gts': ['score-gts', '-opt', str(tmp_path / 'opt.yml')],
        'weights': ['weights', 'list'],
        'lora': ['lora', 'info', str(tmp_path / 'adapter.pth')],
        'demo': ['demo', '--out', d],
        'make-multigt': ['make-multigt', '--src', d, '--out', d],
        'evaluate': ['evaluate', '--results', d, '--gt', d],
        'repro': ['repro', '--small', '--tiny', '--out', d],
        'diff': ['diff', img, img],
        'bench': ['bench', 'cli'],  # passthrough: the bench's own parser rejects it
    }


@pytest.mark.parametrize('case', ['score', 'score-gts', 'weights', 'lora', 'demo', 'make-multigt', 'evaluate',
                                  'repro', 'diff', 'bench'])
@pytest.mark.parametrize('where', ['end', 'after-command'])
def test_unknown_argument_is_rejected_by_its_parser(case, where, tmp_path, capsys):
    """Every command is parsed exactly: an unknown option is argparse's error in the parser of the command (its
    usage, then one line naming the option; status 2), before the command does anything."""
    argv = _exact_cases(tmp_path)[case]
    at = len(argv) if where == 'end' else 2 if case == 'bench' else 1
    code, out, err = cli(capsys, *argv[:at], BOGUS, *argv[at:])
    prog = f'iqa-plugin {case}' + (' cli' if case == 'bench' else '')
    assert code == 2 and out == '', err
    assert err.startswith(f'usage: {prog} '), err
    errors = [x for x in err.splitlines() if 'error' in x]
    assert errors == [f'{prog}: error: unrecognized arguments: {BOGUS}'], err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize('argv', [['score', '--metric', 'nr-lite', '--dist', 'x.png', 'stray'], ['demo', 'stray'],
                                  ['repro', '--small', 'stray']])
def test_unexpected_positional_is_rejected(argv, capsys):
    code, _, err = cli(capsys, *argv)
    assert code == 2 and err.splitlines()[-1] == f'iqa-plugin {argv[0]}: error: unrecognized arguments: stray', err
    assert err.startswith(f'usage: iqa-plugin {argv[0]} '), err


def test_subcommand_mains_take_parsed_arguments_only():
    """No ``rest`` left over for the commands to check: ``main(args)``; passthrough commands ``main_argv(argv)``."""
    import inspect

    import iqa_plugin.cli as c
    passthrough = {m.NAME for m in c.SUBCOMMANDS if getattr(m, 'PASSTHROUGH', False)}
    assert passthrough == {'train', 'bench', 'run'}
    for m in c.SUBCOMMANDS:
        if m.NAME in passthrough:
            assert list(inspect.signature(m.main_argv).parameters) == ['argv'], m.NAME
        else:
            assert list(inspect.signature(m.main).parameters) == ['args'], m.NAME


@pytest.mark.parametrize('argv', [['bench', BOGUS], ['bench', 'list', BOGUS], ['run', BOGUS],
                                  [BOGUS, 'weights', 'list']])
def test_passthrough_commands_reject_unknown_options_of_their_own(argv, capsys):
    """Before NAME (bench) or the script (run) the arguments are the command's own: an unknown one is named."""
    code, out, err = cli(capsys, *argv)
    prog = 'iqa-plugin' if argv[0] == BOGUS else f'iqa-plugin {argv[0]}'
    assert code == 2 and out == '', err
    assert err.startswith(f'usage: {prog} '), err
    assert [x for x in err.splitlines() if 'error' in x] == [f'{prog}: error: unrecognized arguments: {BOGUS}'], err


def test_train_unknown_argument_is_rejected_by_basicsr_parser(tmp_path, tiny_sr, capsys):
    """``train`` passes its arguments to BasicSR's parser, which owns them and rejects an unknown one (after the
    option-file check, before anything is written); its usage and error carry the command's name."""
    from conftest import write_tiny_options

    opt = write_tiny_options(tmp_path / 'run.yml', tiny_sr, name='unknown_arg', iters=2, val_freq=2)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = cli(capsys, 'train', '-opt', str(opt), BOGUS)
    assert code == 2, err
    assert err.startswith('usage: iqa-plugin train '), err
    errors = [x for x in err.splitlines() if 'error' in x]
    assert errors == [f'iqa-plugin train: error: unrecognized arguments: {BOGUS}'], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not (tmp_path / 'experiments').exists()


@pytest.mark.parametrize('exc', [TypeError('t'), KeyError('k'), AttributeError('a'), RuntimeError('r'),
                                 ImportError('i'), ValueError('a ValueError from outside the package')])
def test_bugs_keep_their_traceback(exc, monkeypatch, capsys):
    import iqa_plugin.cli.weights as w

    def broken(*a, **k):
        raise exc

    monkeypatch.setattr(w, 'list_entries', broken)
    code, out, err = cli(capsys, 'weights', 'list')
    assert code == 1
    assert 'Traceback (most recent call last)' in err and type(exc).__name__ in err and 'iqa-plugin: error' not in err


def test_is_input_error():
    from iqa_plugin import scoring
    from iqa_plugin.cli.common import UsageError, is_input_error
    from iqa_plugin.basicsr_glue.options_check import OptionError
    from iqa_plugin.weights import WeightsError

    def raised(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            return e
        raise AssertionError('no exception')

    assert issubclass(OptionError, ValueError) and issubclass(WeightsError, RuntimeError)
    for e in (UsageError('u'), OptionError('o'), WeightsError('w'), FileNotFoundError('f'), PermissionError('p'),
              raised(lambda: scoring.get_spec('nope'))):  # a ValueError raised by the package
        assert is_input_error(e), e
    for e in (TypeError('t'), KeyError('k'), RuntimeError('r'), ImportError('i'), ValueError('v'),
              raised(lambda: int('x')), raised(lambda: np.zeros(3).reshape(2))):  # ValueErrors of other code
        assert not is_input_error(e), e


def test_traceback_env_shows_input_error_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('IQA_PLUGIN_TRACEBACK', '1')
    code, out, err = cli(capsys, 'score', '--metric', 'no-such', '--dist', str(tmp_path))
    assert code == 2 and 'Traceback' in err and err.strip().splitlines()[-1].startswith('iqa-plugin: error: unknown')


# ------------------------------------------------------------------------------ weights verify
def test_weights_verify_passes_on_the_shipped_files(capsys):
    code, out, err = cli(capsys, 'weights', 'verify')
    assert code == 0, out + err
    assert 'not downloaded' in out  # offline tests: download entries are absent, which is not a failure
    for name in ('milo-pseudomos', 'nr-lite', 'relational'):
        assert any(x.split()[:2] == [name, 'ok'] for x in out.splitlines()), out


def test_weights_verify_fails_on_a_corrupt_file(tmp_path, monkeypatch, capsys):
    from iqa_plugin import weights
    bad = tmp_path / 'nr_lite.pth'
    data = bytearray((weights.PACKAGE_WEIGHTS_DIR / 'nr_lite.pth').read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    bad.write_bytes(bytes(data))
    monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(tmp_path))  # searched before the package
    code, out, err = cli(capsys, 'weights', 'verify')
    assert code == 1, out
    assert any(x.split()[:3] == ['nr-lite', 'hash', 'mismatch'] for x in out.splitlines()), out
    assert 'verify failed: nr-lite' in out


def test_weights_verify_fails_on_a_missing_packaged_file(tmp_path, monkeypatch, capsys):
    from iqa_plugin import weights
    copy = tmp_path / 'weights'
    shutil.copytree(weights.PACKAGE_WEIGHTS_DIR, copy)
    (copy / 'relational.pth').unlink()
    monkeypatch.setattr(weights, 'PACKAGE_WEIGHTS_DIR', copy)
    code, out, err = cli(capsys, 'weights', 'verify')
    assert code == 1, out
    assert any(x.split()[:2] == ['relational', 'missing'] for x in out.splitlines()), out
    assert 'verify failed: relational' in out
    code, out, err = cli(capsys, 'weights', 'verify', 'milo')  # a named file must be here
    assert code == 1 and 'milo' in out and 'missing' in out


# ------------------------------------------------------------------------------ scripts importing basicsr first
BASICSR_FIRST = textwrap.dedent('''\
    import sys
    import basicsr  # before iqa_plugin, as BasicSR's own scripts and tests do
    from basicsr.utils.registry import LOSS_REGISTRY
    print('ok', LOSS_REGISTRY.get('MILOLoss').__name__, sys.argv[1:], __name__)
    ''')


def test_run_entry_for_a_script_that_imports_basicsr_first(tmp_path):
    script = tmp_path / 'train_like_basicsr.py'
    script.write_text(BASICSR_FIRST)
    r = run_python('-m', 'iqa_plugin.cli', 'run', str(script), 'a', '--b', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "ok MILOLoss ['a', '--b'] __main__"


def test_run_entry_exit_codes_and_tracebacks(tmp_path, capsys):
    (tmp_path / 'exits.py').write_text('import sys\nsys.exit(3)\n')
    (tmp_path / 'fails.py').write_text('raise FileNotFoundError("from the script")\n')
    (tmp_path / 'args.py').write_text('import sys, os\nprint(sys.argv, os.path.basename(sys.path[0]))\n')
    from iqa_plugin.cli import dispatch
    with pytest.raises(SystemExit) as e:
        dispatch(['run', str(tmp_path / 'exits.py')])
    assert e.value.code == 3
    code, out, err = cli(capsys, 'run', str(tmp_path / 'fails.py'))
    assert code == 1 and 'Traceback' in err and 'from the script' in err  # the script's error is not ours
    code, out, err = cli(capsys, 'run', str(tmp_path / 'args.py'), '--help', 'x')
    assert code == 0 and out.strip() == f"['{tmp_path / 'args.py'}', '--help', 'x'] {tmp_path.name}"
    code, out, err = cli(capsys, 'run', '--help')
    assert code == 0 and 'iqa-plugin run script.py' in out


def test_pytest_plugin_option_for_tests_that_import_basicsr_first(tmp_path):
    (tmp_path / 'test_basicsr_first.py').write_text(
        'import basicsr\n\n\ndef test_plugin_registered():\n'
        '    from basicsr.utils.registry import LOSS_REGISTRY\n    assert LOSS_REGISTRY.get("MILOLoss")\n')
    r = run_python('-m', 'pytest', '-q', '-p', 'iqa_plugin', '-p', 'no:cacheprovider', '--rootdir', str(tmp_path),
                   str(tmp_path / 'test_basicsr_first.py'), cwd=tmp_path)
    assert r.returncode == 0 and '1 passed' in r.stdout, r.stdout[-3000:]


# ------------------------------------------------------------------------------ the lazy shim
def test_shim_is_lazy_and_aliases_on_demand():
    code = textwrap.dedent('''\
        import sys
        import iqa_plugin
        from iqa_plugin.basicsr_glue import compat
        assert 'torchvision' not in sys.modules, 'the shim imported torchvision'
        assert compat.install() is False and compat.apply() is False
        assert sum(isinstance(f, compat.RenamedModuleFinder) for f in sys.meta_path) == 1
        import torchvision.transforms.functional_tensor as old
        import torchvision.transforms._functional_tensor as new
        assert old is new and new.__spec__.name == compat.NEW_NAME
        print('ok')
        ''')
    r = run_python('-c', code, env={'IQA_PLUGIN_LAZY_REGISTER': '1'})
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-3000:]


def test_shim_finder_acts_only_when_the_old_name_is_missing(tmp_path, monkeypatch):
    """On a library that still has the old module (old torchvision) the finder is never used."""
    import importlib

    from iqa_plugin.basicsr_glue.compat import RenamedModuleFinder
    pkg = tmp_path / 'shimtoy'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'new.py').write_text('WHO = "new"\n')
    (pkg / 'still_there.py').write_text('WHO = "old"\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    finder = RenamedModuleFinder({'shimtoy.gone': 'shimtoy.new', 'shimtoy.still_there': 'shimtoy.new',
                                  'shimtoy.neither': 'shimtoy.missing_too'})
    monkeypatch.setattr(sys, 'meta_path', sys.meta_path + [finder])
    try:
        assert importlib.import_module('shimtoy.gone') is importlib.import_module('shimtoy.new')
        assert importlib.import_module('shimtoy.still_there').WHO == 'old'
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module('shimtoy.neither')
    finally:
        for m in [m for m in sys.modules if m.startswith('shimtoy')]:
            del sys.modules[m]


# ------------------------------------------------------------------------------ bench cli
def test_bench_cli_harness(capsys):
    """The harness itself, on a stand-in command that starts fast (the real figures: docs/foundation.md)."""
    from iqa_plugin.apps.bench.cli_bench import main
    res = main(['--repeats', '2', '--command', f'{sys.executable} -c pass'])
    out = capsys.readouterr().out
    assert set(res['seconds']) == {'help', 'help_eager', 'weights_list', 'weights_list_eager'}
    assert res['ratio'] > 0 and set(res['ratios']) == {'help', 'weights_list'} and 'ours under 1 s' in out
    json.dumps(res)
    with pytest.raises(RuntimeError, match='exited with 3'):
        main(['--repeats', '1', '--command', f'{sys.executable} -c "import sys; sys.exit(3)"'])
