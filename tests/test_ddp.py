"""DDP (``torchrun --nproc_per_node=2 ... --launcher pytorch``, gloo on the CPU) for every SR model family, each
followed by a resume (docs/distributed.md).

Families: ``IQASRModel`` with ``val.select_by: relational`` (TensorBoard on), ``IQAESRGANModel``,
``MultiGTSRModel`` (upos), ``MultiGTESRGANModel`` (amo), ``NRIQAFinetuneModel`` with LoRA and AMO (the
repro's AMO+FT stage, a checkpoint every iteration) and full fine-tuning with ``gan_opt`` (FT_IG without
LoRA). Two torchrun launches run them all: this file is also the launched script (``__main__`` below runs
several ``iqa_plugin.train`` runs in one process group, one after the other), so torch, BasicSR and the
scorers are imported and started twice instead of twelve times.

The launched script watches every file write under the test's folder (``open`` in a writing mode,
``torch.save``, ``os.replace``/``os.rename``) and prints them per rank: rank 1 must write nothing, and
rank 0 no file twice in a run. The multi-GT runs' training states hold each rank's GT choices
(``GTChoiceRecord``): the two ranks drew different sequences, and a run resumed at iteration 4 ends with
the same per-rank choices and generator states as the uninterrupted run.
"""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve()
WRITES_TAG = 'IQA-DDP-WRITES '


# ------------------------------------------------------------------------------ the launched script
def _watch_writes(root):
    """Record every file write under ``root`` by this process: [(kind, path)]."""
    import builtins

    root = os.path.abspath(root) + os.sep
    writes = []

    def under(p):
        try:
            return os.path.abspath(os.fspath(p)).startswith(root)
        except TypeError:  # a file descriptor or a buffer
            return False

    real_open, real_save, real_replace, real_rename = builtins.open, torch.save, os.replace, os.rename

    def open_(file, mode='r', *args, **kwargs):
        if any(c in mode for c in 'wax+') and under(file):
            writes.append(('open', os.path.abspath(file)))
        return real_open(file, mode, *args, **kwargs)

    def save(obj, f, *args, **kwargs):
        if under(f):
            writes.append(('torch.save', os.path.abspath(f)))
        return real_save(obj, f, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if under(src) or under(dst):
            writes.append(('replace', os.path.abspath(dst)))
        return real_replace(src, dst, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        if under(src) or under(dst):
            writes.append(('rename', os.path.abspath(dst)))
        return real_rename(src, dst, *args, **kwargs)

    builtins.open, torch.save, os.replace, os.rename = open_, save, replace, rename
    return writes


def launched(root, runs):
    """Each of ``runs`` (argument lists of ``iqa_plugin.train``) in turn, experiments under ``root``."""
    import iqa_plugin  # noqa: F401  (shim + registries before basicsr)
    from iqa_plugin.basicsr_glue.logger import reset_basicsr_logger
    from iqa_plugin.train import run

    torch.set_num_threads(1)
    rank = int(os.environ.get('RANK', '0'))
    writes = _watch_writes(root)
    for argv in runs:
        del writes[:]
        reset_basicsr_logger()  # each run its own train_*.log
        run(argv, root_path=root)
        print(WRITES_TAG + json.dumps({'rank': rank, 'opt': argv[1], 'writes': writes}), flush=True)


def launched_slow_validation(validation_s, training_timeout_s):
    """BasicSR's situation in small: rank 0 validates for ``validation_s`` while the training collectives
    (a gloo group standing in for NCCL's default group) time out after ``training_timeout_s``."""
    import datetime

    import torch.distributed as dist

    from iqa_plugin.basicsr_glue.dist import wait_for_rank0_validation

    dist.init_process_group(backend='gloo')
    training = dist.new_group(backend='gloo', timeout=datetime.timedelta(seconds=training_timeout_s))
    grad = torch.ones(4)
    dist.all_reduce(grad)  # an iteration (on the default group: the two processes may start far apart)
    if dist.get_rank() == 0:
        time.sleep(validation_s)  # the validation, on rank 0 only
    wait_for_rank0_validation({'val': {}})
    dist.all_reduce(grad, group=training)  # the next iteration's gradient all-reduce
    print(f'rank {dist.get_rank()} went on after the validation: {grad.tolist()}', flush=True)
    dist.destroy_process_group(training)  # iqa_plugin.basicsr_glue.dist destroys its own group at exit


if __name__ == '__main__':
    if sys.argv[1] == '--slow-validation':
        launched_slow_validation(float(sys.argv[2]), float(sys.argv[3]))
    else:
        launched(sys.argv[1], json.loads(sys.argv[2]))
    sys.exit(0)


# ------------------------------------------------------------------------------ options
import pytest  # noqa: E402
from conftest import make_sr_folder, write_tiny_options  # noqa: E402

pytestmark = pytest.mark.usefixtures('one_torch_thread')

TINY_G = {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'upscale': 4}
TINY_D = {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 4, 'skip_connection': True}
RRDB = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'num_grow_ch': 4}
GAN_TRAIN = {'optim_d': {'type': 'Adam', 'lr': 1e-4, 'betas': [0.9, 0.99]},
             'gan_opt': {'type': 'GANLoss', 'gan_type': 'vanilla', 'loss_weight': 0.1}}
ITERS = 4          # first launch (the upos run: 2 * ITERS, uninterrupted)
RESUMED_ITERS = 6  # second launch, --auto_resume


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _tiny_sr_options(tmp_path, data, name, model_type, extra_train='', extra_val='', extra_metrics='', tb='false',
                     **top):
    """conftest's tiny IQASRModel options with another model type and top-level blocks (a dict)."""
    path = write_tiny_options(tmp_path / f'{name}.yml', data, name=name, iters=ITERS, val_freq=2, tb=tb,
                              extra_train=extra_train, extra_val=extra_val, extra_metrics=extra_metrics)
    opt = yaml.safe_load(path.read_text())
    opt['model_type'] = model_type
    opt.update(top)
    path.write_text(yaml.safe_dump(opt))
    return path


def _multigt_options(tmp_path, data, name, model_type, gt_sampling, iters, save_freq, val_freq, **train):
    """A multi-GT run on the set ``data`` (bicubic LQ, 32 px crops, batch 2)."""
    opt = {
        'name': name, 'model_type': model_type, 'scale': 4, 'num_gpu': 0, 'manual_seed': 0,
        'datasets': {
            'train': {'name': 'train', 'type': 'MultiGTDataset', 'layout': 'hggt', 'dataroot': str(data),
                      'set': '0-20193', 'lq_mode': 'bicubic', 'scale': 4, 'gt_size': 32, 'use_hflip': True,
                      'use_rot': False, 'io_backend': {'type': 'disk'}, 'num_worker_per_gpu': 0,
                      'batch_size_per_gpu': 2, 'dataset_enlarge_ratio': 8, 'prefetch_mode': None},
            'val': {'name': 'val', 'type': 'MultiGTDataset', 'layout': 'hggt', 'dataroot': str(data),
                    'set': '0-20193', 'lq_mode': 'bicubic', 'scale': 4, 'io_backend': {'type': 'disk'}}},
        'network_g': dict(TINY_G),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 1e-3, 'betas': [0.9, 0.99]},
                  'scheduler': {'type': 'MultiStepLR', 'milestones': [1000], 'gamma': 0.5},
                  'total_iter': iters, 'warmup_iter': -1,
                  'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
                  'gt_sampling': gt_sampling, **train},
        'val': {'val_freq': val_freq, 'save_img': False,
                'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4, 'test_y_channel': False}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': save_freq, 'use_tb_logger': False,
                   'wandb': {'project': None, 'resume_id': None}},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }
    if train.get('gan_opt'):
        opt['network_d'] = dict(TINY_D)
    path = tmp_path / f'{name}.yml'
    path.write_text(yaml.safe_dump(opt))
    return path


def _uniform_labels(src, dst):
    """A copy of the multi-GT set in which every group has the same labels (candidates 1, 2 Positive, 3, 4
    Negative): upos's draws then depend on the generator only, not on which group a rank got."""
    import shutil

    shutil.copytree(src, dst)
    for f in (dst / 'labels').rglob('*.json'):
        labels = json.loads(f.read_text())
        for key, entry in labels.items():
            entry['Label'] = 'Positive' if key in ('Picture_2', 'Picture_3') else 'Negative'
        f.write_text(json.dumps(labels))
    return dst


def _save_base(path):
    """A tiny RRDB in BasicSR's layout: the pretrained net of the fine-tuning runs."""
    from iqa_plugin.models import lora

    torch.manual_seed(0)
    torch.save({'params': lora.build_network_cpu(RRDB).state_dict()}, path)
    return path


def _finetune_options(tmp_path, name, base, data, lora_block, iters, save_freq, gan=False, gt_sampling=None):
    opt = yaml.safe_load(_multigt_options(tmp_path, data, name, 'NRIQAFinetuneModel', gt_sampling or {'type': 'upos'},
                                          iters, save_freq, iters).read_text())
    if gt_sampling is None:
        del opt['train']['gt_sampling']
    opt['network_g'] = dict(RRDB)
    opt['path']['pretrain_network_g'] = str(base)
    opt['train']['lora'] = lora_block
    opt['train']['iqa_opt'] = {'nr': {'type': 'NRIQALoss', 'metric': 'nr-lite', 'loss_weight': 0.1}}
    opt['val']['metrics']['nr_lite'] = {'type': 'nr-lite'}
    if gan:
        opt['network_d'] = dict(TINY_D)
        opt['train'].update(GAN_TRAIN)
    path = tmp_path / f'{name}.yml'
    path.write_text(yaml.safe_dump(opt))
    return path


# ------------------------------------------------------------------------------ launching
def _torchrun(cwd, args, timeout=300, **env):
    """This file launched by torchrun with 2 processes on the CPU."""
    torchrun = Path(sys.executable).parent / 'torchrun'
    cmd = [str(torchrun), '--nproc_per_node=2', f'--master_port={_free_port()}', '--master_addr=127.0.0.1',
           str(HERE), *args]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', **env)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _launch(root, runs):
    """One torchrun launch of ``runs``; returns {rank: [{opt, writes} per run]}."""
    r = _torchrun(root, [str(root), json.dumps([[str(a) for a in r] for r in runs])])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    writes = {0: [], 1: []}
    for chunk in r.stdout.split(WRITES_TAG)[1:]:  # the two ranks' lines may interleave
        rec = json.JSONDecoder().raw_decode(chunk)[0]
        writes[rec['rank']].append(rec)
    assert [len(w) for w in writes.values()] == [len(runs)] * 2, out[-3000:]
    return writes


def _check_writes(writes, root):
    """Rank 1 wrote nothing; rank 0 wrote no checkpoint twice in a run; no temporary file is left."""
    for rec in writes[1]:
        assert rec['writes'] == [], f"rank 1 wrote files in {rec['opt']}: {rec['writes'][:5]}"
    for rec in writes[0]:
        saved = [p for kind, p in rec['writes'] if kind == 'torch.save' and not p.endswith('.tmp')
                 and not Path(p).name.startswith('net_g_best')]
        assert saved and len(saved) == len(set(saved)), f"{rec['opt']}: {sorted(saved)}"
    leftovers = [p for p in Path(root).rglob('*') if p.suffix in ('.tmp', '.part')]
    assert not leftovers, leftovers


def _state(exp, it):
    from iqa_plugin.basicsr_glue.dist import read_training_state

    return read_training_state(exp / 'training_states' / f'{it}.state')


def _ranks(state):
    gts = state['gt_sampling']
    assert gts['world_size'] == 2 and len(gts['ranks']) == 2
    return gts['ranks']


def _log(exp):
    return '\n'.join(p.read_text() for p in sorted(Path(exp).glob('train_*.log')))


def test_every_family_under_ddp_and_resumed(tmp_path, multigt_set):
    sr = make_sr_folder(tmp_path / 'sr')
    upos_set = _uniform_labels(Path(multigt_set), tmp_path / 'upos_set')
    base = _save_base(tmp_path / 'base_rrdb.pth')
    gan_top = {'network_d': dict(TINY_D)}
    gan_train = '  optim_d: {type: Adam, lr: !!float 1e-4, betas: [0.9, 0.99]}\n' \
                '  gan_opt: {type: GANLoss, gan_type: vanilla, loss_weight: 0.1}'
    amo = {'type': 'amo', 'scorer': {'type': 'nr-lite'}}
    opts = {
        'relational': _tiny_sr_options(tmp_path, sr, 'relational', 'IQASRModel', extra_val='  select_by: relational',
                                       extra_metrics='    relational: {type: relational}', tb='true'),
        'esrgan': _tiny_sr_options(tmp_path, sr, 'esrgan', 'IQAESRGANModel', extra_train=gan_train, **gan_top),
        'upos': _multigt_options(tmp_path, upos_set, 'upos', 'MultiGTSRModel', {'type': 'upos', 'seed': 5},
                                 2 * ITERS, ITERS, 2 * ITERS),
        'amo_gan': _multigt_options(tmp_path, multigt_set, 'amo_gan', 'MultiGTESRGANModel', amo, ITERS, 2, ITERS,
                                    **GAN_TRAIN),
        # the repro's AMO+FT stage: LoRA adapters, AMO, a checkpoint every iteration
        'lora_amo': _finetune_options(tmp_path, 'lora_amo', base, multigt_set, {'rank': 2, 'alpha': 2}, ITERS, 1,
                                      gt_sampling=amo),
        # FT_IG without LoRA: full fine-tuning with the GAN term
        'full_ig': _finetune_options(tmp_path, 'full_ig', base, upos_set, {'enabled': False}, ITERS, 2, gan=True,
                                     gt_sampling={'type': 'upos'}),
    }
    exps = {k: tmp_path / 'experiments' / k for k in opts}
    writes = _launch(tmp_path, [['-opt', p, '--launcher', 'pytorch'] for p in opts.values()])
    _check_writes(writes, tmp_path)

    for key, exp in exps.items():
        assert 'world_size: 2' in _log(exp) or "'world_size': 2" in _log(exp), key
        assert (exp / 'models' / 'net_g_latest.pth').is_file(), key
    assert (exps['relational'] / 'models' / 'net_g_best.pth').is_file()
    assert list((tmp_path / 'tb_logger' / 'relational').glob('events.*'))
    for it in range(1, ITERS + 1):  # adapter checkpoints, one per iteration (the run that failed at the first)
        ckpt = torch.load(exps['lora_amo'] / 'models' / f'net_g_{it}.pth', weights_only=True)
        assert 'lora' in ckpt, sorted(ckpt)
    assert (exps['full_ig'] / 'models' / f'net_d_{ITERS}.pth').is_file()

    # the two ranks drew different GT sequences; the record covers every draw of the uninterrupted run
    upos = exps['upos']
    whole = _ranks(_state(upos, 2 * ITERS))
    for entry in whole:
        assert entry['record']['batches'] == 2 * ITERS and entry['record']['recent_idx'].numel() == 4 * ITERS
        assert set(entry['record']['recent_idx'].tolist()) <= {1, 2}  # upos: only the positives
        assert entry['strategy']['type'] == 'upos'
    assert not torch.equal(whole[0]['record']['recent_idx'], whole[1]['record']['recent_idx'])
    assert [e['strategy']['seed'] for e in whole] == [5, 6]  # seed + rank
    for entry in _ranks(_state(exps['lora_amo'], ITERS)) + _ranks(_state(exps['amo_gan'], ITERS)):
        assert entry['record']['batches'] == ITERS and entry['strategy']['type'] == 'amo'
    assert 'GT choices so far (count per candidate index): rank 0: ' in _log(upos)

    # resume: the upos run from its iteration-4 state (to 8 again), the others with --auto_resume to 6
    opt = yaml.safe_load(opts['upos'].read_text())
    opt['path']['resume_state'] = str(upos / 'training_states' / f'{ITERS}.state')
    opts['upos'].write_text(yaml.safe_dump(opt))
    runs = [['-opt', opts['upos'], '--launcher', 'pytorch']]
    for key, path in opts.items():
        if key != 'upos':
            path.write_text(path.read_text().replace(f'total_iter: {ITERS}', f'total_iter: {RESUMED_ITERS}'))
            runs.append(['-opt', path, '--launcher', 'pytorch', '--auto_resume'])
    writes = _launch(tmp_path, runs)
    _check_writes(writes, tmp_path)

    resumed = _ranks(_state(upos, 2 * ITERS))
    for rank in (0, 1):  # each rank continued its own sequence: the same draws and generator as uninterrupted
        for key in ('recent_batch', 'recent_idx', 'counts'):
            assert torch.equal(resumed[rank]['record'][key], whole[rank]['record'][key]), (rank, key)
        assert torch.equal(resumed[rank]['strategy']['rng'], whole[rank]['strategy']['rng']), rank
    for key in opts:
        if key == 'upos':
            continue
        exp = exps[key]
        assert 'Resuming training from epoch: ' in _log(exp) and f'iter: {ITERS}.' in _log(exp), key
        assert _state(exp, RESUMED_ITERS)['iter'] == RESUMED_ITERS, key
    assert torch.load(exps['lora_amo'] / 'models' / f'net_g_{RESUMED_ITERS}.pth', weights_only=True)['lora']
    for entry in _ranks(_state(exps['lora_amo'], RESUMED_ITERS)):
        assert entry['record']['batches'] == RESUMED_ITERS
    assert 'Resumed checkpoint selection: best relational' in _log(exps['relational'])


def test_other_ranks_wait_for_a_slow_validation(tmp_path):
    """A validation on rank 0 longer than the training collectives' timeout (NCCL's default: 10 min) does not
    make the other ranks fail in the next iteration's all-reduce: they wait on the long-timeout gloo barrier."""
    r = _torchrun(tmp_path, ['--slow-validation', '4', '2'], timeout=120,
                  IQA_PLUGIN_LAZY_REGISTER='1')  # torch alone: no registries needed
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    for rank in (0, 1):
        assert f'rank {rank} went on after the validation: [4.0, 4.0, 4.0, 4.0]' in r.stdout


def _basicsr_log_lines():
    """A handler on BasicSR's logger (it does not propagate to pytest's caplog) collecting the messages."""
    import logging

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    handler = Lines()
    logging.getLogger('basicsr').addHandler(handler)
    return handler


def test_resume_with_another_world_size_and_the_old_format():
    """In one process (world size 1): a state of 2 ranks gives rank 0 the saved rank 0's generator, with a warning;
    a state written before the per-rank format (one strategy state) is still read."""
    import logging

    from test_multigt_models import batch, build

    from iqa_plugin.models.gt_sampling import build_gt_strategy

    saved0, saved1 = build('MultiGTSRModel'), build_gt_strategy({'type': 'rand', 'seed': 3}, rank=1)
    for _ in range(3):
        saved0.choose_gt(batch(b=4))
        saved1.choose(batch(b=4))
    two_ranks = {'world_size': 2, 'ranks': [{'strategy': saved0.gt_strategy.state_dict(),
                                             'record': saved0.gt_record.state_dict()},
                                            {'strategy': saved1.state_dict(), 'record': None}]}
    old_format = saved0.gt_strategy.state_dict()
    expected = [saved0.gt_strategy.choose(batch(b=4)).tolist() for _ in range(3)]
    log = _basicsr_log_lines()
    try:
        for state, warned in ((two_ranks, True), (old_format, False)):
            log.lines.clear()
            model = build('MultiGTSRModel')
            model.load_extra_training_state({'gt_sampling': state})
            assert [model.gt_strategy.choose(batch(b=4)).tolist() for _ in range(3)] == expected
            assert any('holds 2 ranks\' generators, this run has 1 ranks' in m for m in log.lines) == warned
        assert model.gt_record.batches == 0  # the old format had no record
        model = build('MultiGTSRModel')
        model.load_extra_training_state({'gt_sampling': two_ranks})
        assert model.gt_record.batches == 3 and model.gt_record.recent_idx.numel() == 12
    finally:
        logging.getLogger('basicsr').removeHandler(log)
