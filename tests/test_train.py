"""Real BasicSR training runs through the plugin: CLI, resume, checkpoint selection, failed starts, CPU DDP."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from conftest import write_tiny_options


def _run(args, cwd, timeout=400):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _log(exp):
    return '\n'.join(p.read_text() for p in sorted(Path(exp).glob('train_*.log')))


def test_train_resume_and_select_by(tmp_path, tiny_sr):
    opt = write_tiny_options(tmp_path / 'run.yml', tiny_sr, name='resume_test', iters=4, val_freq=2,
                             extra_val='  select_by: psnr', tb='true')
    r = _run([sys.executable, '-m', 'iqa_plugin.train', '-opt', str(opt)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    exp = tmp_path / 'experiments' / 'resume_test'
    models = {p.name for p in (exp / 'models').glob('*.pth')}
    assert {'net_g_2.pth', 'net_g_4.pth', 'net_g_best.pth', 'net_g_latest.pth'} <= models
    state4 = torch.load(exp / 'training_states' / '4.state', weights_only=False)
    best = state4['iqa_best']
    assert best['metric'] == 'psnr' and best['iter'] in (2, 4)
    assert list((tmp_path / 'tb_logger' / 'resume_test').glob('events.*'))

    # resume to 6 iterations with --auto_resume
    opt.write_text(opt.read_text().replace('total_iter: 4', 'total_iter: 6'))
    r = _run([sys.executable, '-m', 'iqa_plugin.cli', 'train', '-opt', str(opt), '--auto_resume'], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    log = _log(exp)
    assert 'Resuming training from epoch' in log and 'iter: 4' in log
    assert f"Resumed checkpoint selection: best psnr {best['val']:.4f} @ iter {best['iter']}" in log
    assert (exp / 'models' / 'net_g_6.pth').is_file()
    state6 = torch.load(exp / 'training_states' / '6.state', weights_only=False)
    b6 = state6['iqa_best']
    assert b6['val'] >= best['val'] and (b6['iter'] == best['iter'] or b6['iter'] == 6)


def test_failed_start_writes_nothing(tmp_path, tiny_sr):
    opt = write_tiny_options(tmp_path / 'run.yml', tiny_sr, name='keep_me', iters=2, val_freq=2,
                             extra_metrics='    q: {type: calculate_psnr, crop_border: 0}')
    exp = tmp_path / 'experiments' / 'keep_me'
    (exp / 'models').mkdir(parents=True)
    (exp / 'models' / 'net_g_100.pth').write_bytes(b'precious')
    opt.write_text(opt.read_text().replace('pixel_opt: {type: L1Loss, loss_weight: 1.0',
                                           'pixel_opt: {type: L1Loss, loss_weight: 1.0, no_such_key: 3'))
    from iqa_plugin.train import run
    import pytest
    with pytest.raises(Exception):
        run(['-opt', str(opt)], root_path=str(tmp_path))
    assert (exp / 'models' / 'net_g_100.pth').read_bytes() == b'precious'
    assert sorted(p.name for p in (tmp_path / 'experiments').iterdir()) == ['keep_me']


def test_missing_official_weights_fail_before_anything_is_written(tmp_path, tiny_sr):
    """The README's validator snippet without the official MILO weights: the start fails
    at once with one line naming the file, its URL and the folders searched; the previous run's folder is
    neither archived nor touched."""
    opt = write_tiny_options(tmp_path / 'run.yml', tiny_sr, name='keep_me', iters=2, val_freq=2,
                             extra_metrics='    milo: {type: calculate_milo, better: lower}')
    exp = tmp_path / 'experiments' / 'keep_me'
    (exp / 'models').mkdir(parents=True)
    (exp / 'models' / 'net_g_100.pth').write_bytes(b'precious')
    empty = tmp_path / 'no_weights'
    empty.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS='1', IQA_PLUGIN_OFFLINE='1', TORCH_HOME=str(tmp_path / 'torch_home'),
               IQA_PLUGIN_WEIGHTS_DIR=str(empty))
    r = subprocess.run([sys.executable, '-m', 'iqa_plugin.cli', 'train', '-opt', str(opt)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    err = r.stderr.strip()
    assert err.count('\n') == 0 and err.startswith('iqa-plugin: error: val.metrics.milo (calculate_milo): '), err
    assert 'MILO.pth' in err and 'https://github.com/ugurcogalan06/MILO/raw/main/weights/MILO.pth' in err
    assert str(empty / 'MILO.pth') in err and str(tmp_path / 'torch_home') in err  # the folders searched
    assert (exp / 'models' / 'net_g_100.pth').read_bytes() == b'precious'
    assert sorted(p.name for p in (tmp_path / 'experiments').iterdir()) == ['keep_me']
    assert not (tmp_path / 'tb_logger').exists()


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_ddp_two_processes_on_cpu(tmp_path, tiny_sr):
    opt = write_tiny_options(tmp_path / 'ddp.yml', tiny_sr, name='ddp_test', iters=4, val_freq=4)
    torchrun = Path(sys.executable).parent / 'torchrun'
    cmd = [str(torchrun), '--nproc_per_node=2', f'--master_port={_free_port()}', '--master_addr=127.0.0.1',
           '-m', 'iqa_plugin.train', '-opt', str(opt), '--launcher', 'pytorch']
    r = _run(cmd, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    exp = tmp_path / 'experiments' / 'ddp_test'
    log = _log(exp)
    assert 'world_size: 2' in log or "'world_size': 2" in log or 'world_size: 2' in r.stdout
    assert (exp / 'models' / 'net_g_4.pth').is_file()
    sd = torch.load(exp / 'models' / 'net_g_4.pth', weights_only=True)['params']
    assert not any(k.startswith('module.') for k in sd)  # BasicSR unwraps DDP when saving


def test_threads_option_is_the_plugins_and_sets_torch(tmp_path, tiny_sr, monkeypatch):
    """``--threads N`` is taken out of BasicSR's arguments and sets torch's CPU threads for the run; a bad value
    stops the run before anything is written; the command lines default to 1 unless OMP_NUM_THREADS is set."""
    import pytest

    from iqa_plugin import train as T
    from iqa_plugin.basicsr_glue.options_check import OptionError

    assert T.split_threads(['-opt', 'a.yml', '--threads', '3', '--debug']) == (['-opt', 'a.yml', '--debug'], '3')
    assert T.split_threads(['-opt', 'a.yml', '--threads=0']) == (['-opt', 'a.yml'], '0')
    assert T.split_threads(['-opt', 'a.yml']) == (['-opt', 'a.yml'], None)
    opt = write_tiny_options(tmp_path / 'run.yml', tiny_sr, name='threads', iters=2, val_freq=2)
    for bad in ('-1', 'two'):
        with pytest.raises(OptionError, match='--threads must be an integer >= 0'):
            T.run(['-opt', str(opt), '--threads', bad], root_path=str(tmp_path))
    assert not (tmp_path / 'experiments').exists()
    n = torch.get_num_threads()
    want = 1 if n != 1 else 2
    try:
        T.run(['-opt', str(opt), '--threads', str(want)], root_path=str(tmp_path))
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(n)
    assert (tmp_path / 'experiments' / 'threads' / 'models' / 'net_g_2.pth').is_file()

    seen = []
    monkeypatch.setattr(T, 'run', lambda argv, root_path=None: seen.append(argv))
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    T.main_argv(['-opt', 'a.yml'])
    T.main_argv(['-opt', 'a.yml', '--threads', '4'])
    monkeypatch.setenv('OMP_NUM_THREADS', '2')  # the user's choice: torch follows it, the default leaves it
    T.main_argv(['-opt', 'a.yml'])
    assert seen == [['-opt', 'a.yml', '--threads', '1'], ['-opt', 'a.yml', '--threads', '4'], ['-opt', 'a.yml']]
