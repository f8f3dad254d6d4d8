"""LoRA-regularised NR-IQA fine-tuning (``NRIQAFinetuneModel``, ``iqa_plugin.models.lora``, ``iqa-plugin lora``).

Tiny RRDBNet/SwinIR nets on the CPU: the adapted net starts exactly at the pretrained one, a step changes only
adapter tensors, merged weights reproduce the adapted outputs in stock BasicSR, adapter checkpoints are small,
resume continues as if uninterrupted, ``lora.enabled: false`` trains the base, bad input fails in one line
before anything is written, and a run goes through ``iqa-plugin train``.
"""
import copy
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import make_sr_folder

import iqa_plugin  # noqa: F401  (shim + registries)
from iqa_plugin.models import lora
from iqa_plugin.models.nriqa_finetune_model import (
    DynamicLossScale,
    NRIQAFinetuneGANModel,
    NRIQAFinetuneModel,
    NRIQAFinetuneSRModel,
)

RRDB = {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'num_grow_ch': 4}
SWINIR = {'type': 'SwinIR', 'upscale': 4, 'in_chans': 3, 'img_size': 8, 'window_size': 4, 'img_range': 1.0,
          'depths': [1], 'embed_dim': 12, 'num_heads': [2], 'mlp_ratio': 2, 'upsampler': 'pixelshuffle',
          'resi_connection': '1conv'}
ARCHS = {'rrdb': RRDB, 'swinir': SWINIR}


def save_base(path, network_opt, seed=0, key='params'):
    torch.manual_seed(seed)
    net = lora.build_network_cpu(network_opt)
    torch.save({key: net.state_dict()}, path)
    return net


def model_opt(tmp_path, base, network_opt=RRDB, lora_block=None, **train_extra):
    (tmp_path / 'models').mkdir(exist_ok=True)
    (tmp_path / 'states').mkdir(exist_ok=True)
    train = {'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': 1e-2, 'betas': [0.9, 0.99]},
             'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5}, 'total_iter': 10,
             'warmup_iter': -1, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
             'iqa_opt': {'nr': {'type': 'NRIQALoss', 'metric': 'nr-lite', 'loss_weight': 0.1}},
             'lora': lora_block if lora_block is not None else {'rank': 2, 'alpha': 4}}
    train.update(train_extra)
    return {'name': 'lora_test', 'scale': 4, 'num_gpu': 0, 'manual_seed': 0, 'is_train': True, 'dist': False,
            'network_g': copy.deepcopy(network_opt), 'train': train,
            'path': {'pretrain_network_g': str(base) if base else None, 'strict_load_g': True, 'resume_state': None,
                     'models': str(tmp_path / 'models'), 'training_states': str(tmp_path / 'states')}}


def batch(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return {'lq': torch.rand((n, 3, 8, 8), generator=g), 'gt': torch.rand((n, 3, 32, 32), generator=g)}


@pytest.fixture
def rrdb_base(tmp_path):
    path = tmp_path / 'base_rrdb.pth'
    return path, save_base(path, RRDB)


@pytest.mark.parametrize('arch', ['rrdb', 'swinir'])
def test_step0_identity_and_only_adapters_train(arch, tmp_path):
    base_path = tmp_path / f'{arch}.pth'
    plain = save_base(base_path, ARCHS[arch]).eval()
    model = NRIQAFinetuneModel(model_opt(tmp_path, base_path, ARCHS[arch]))
    assert isinstance(model, NRIQAFinetuneSRModel)
    data = batch()
    with torch.no_grad():
        expected = plain(data['lq'])
        model.net_g.eval()
        got = model.net_g(data['lq'])
    assert torch.equal(got, expected)  # B = 0: the adapted net is the pretrained one, bit for bit
    names = model._lora_meta['target_modules']
    assert set(names) == set(lora.resolve_targets(plain, preset=arch))
    trainable = [n for n, p in model.net_g.named_parameters() if p.requires_grad]
    assert trainable and all('lora_' in n for n in trainable)

    model.net_g.train()
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    model.feed_data(data)
    model.optimize_parameters(1)
    assert 'l_nr' in model.log_dict
    after = model.net_g.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all('lora_' in k for k in changed)
    assert any('lora_B' in k for k in changed)
    assert lora.state_sha256(lora.base_state_dict(model.net_g)) == model._lora_meta['base_sha256']


def test_merge_equality_and_stock_basicsr(rrdb_base, tmp_path):
    from basicsr.models.sr_model import SRModel

    from iqa_plugin.cli import dispatch

    base_path, _ = rrdb_base
    model = NRIQAFinetuneModel(model_opt(tmp_path, base_path))
    torch.manual_seed(1)
    for n, p in model.net_g.named_parameters():  # a far-from-zero adapter: the merge must carry all of it
        if 'lora_B' in n:
            torch.nn.init.normal_(p, std=0.2)
    model.save(0, 5)
    adapter = tmp_path / 'models' / 'net_g_5.pth'
    out = tmp_path / 'merged.pth'
    assert dispatch(['lora', 'merge', '--base', str(base_path), '--adapter', str(adapter), '--out', str(out)]) == 0

    stock = SRModel({'scale': 4, 'num_gpu': 0, 'is_train': False, 'dist': False, 'network_g': dict(RRDB),
                     'path': {'pretrain_network_g': str(out), 'strict_load_g': True}})
    lq = batch(3)['lq']
    with torch.no_grad():
        model.net_g.eval()
        ref = model.net_g(lq)
        stock.net_g.eval()
        got = stock.net_g(lq)
    plain = lora.build_network_cpu(RRDB)
    plain.load_state_dict(torch.load(base_path, weights_only=True)['params'])
    with torch.no_grad():
        assert (plain(lq) - ref).abs().max() > 1e-2  # the adapter moved the output
    # float32: (W + BA)x and Wx + B(Ax) differ by rounding, ~1e-7 of the output's scale per layer
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_adapter_checkpoint_much_smaller_than_full(tmp_path):
    big = dict(RRDB, num_feat=32, num_grow_ch=16, num_block=2)
    base_path = tmp_path / 'big.pth'
    save_base(base_path, big)
    model = NRIQAFinetuneModel(model_opt(tmp_path, base_path, big, {'rank': 2, 'alpha': 2}))
    model.feed_data(batch())
    model.optimize_parameters(1)  # a step: the optimizer now holds state for every tensor it trains
    model.save(0, 1)
    adapter = os.path.getsize(tmp_path / 'models' / 'net_g_1.pth')
    full = os.path.getsize(base_path)
    assert adapter < full / 5, (adapter, full)
    n_lora = sum(1 for n, _ in model.net_g.named_parameters() if 'lora_' in n)
    n_all = sum(1 for _ in model.net_g.parameters())
    assert 0 < n_lora < n_all
    state = torch.load(tmp_path / 'states' / '1.state', weights_only=False)
    assert len(state['optimizers']) == 1
    assert len(state['optimizers'][0]['state']) == n_lora  # Adam's moments of the adapters, nothing else
    assert len(state['optimizers'][0]['param_groups'][0]['params']) == n_lora


def test_resume_continues_like_uninterrupted(rrdb_base, tmp_path):
    from iqa_plugin.basicsr_glue.dist import read_training_state

    base_path, _ = rrdb_base
    run = tmp_path / 'a'
    run.mkdir()
    model = NRIQAFinetuneModel(model_opt(run, base_path))
    for it in (1, 2):
        model.feed_data(batch(it))
        model.optimize_parameters(it)
    model.save(0, 2)
    model.feed_data(batch(3))
    model.optimize_parameters(3)
    uninterrupted = lora.adapter_state_dict(model.net_g)

    opt = model_opt(run, base_path)
    opt['path']['pretrain_network_g'] = str(run / 'models' / 'net_g_2.pth')  # what BasicSR's check_resume sets
    resumed = NRIQAFinetuneModel(opt)
    resumed.resume_training(read_training_state(str(run / 'states' / '2.state')))
    resumed.feed_data(batch(3))
    resumed.optimize_parameters(3)
    got = lora.adapter_state_dict(resumed.net_g)
    assert got.keys() == uninterrupted.keys()
    for k in got:
        assert torch.allclose(got[k], uninterrupted[k], rtol=0, atol=1e-6 * (1 + uninterrupted[k].abs().max())), k


def test_full_finetune_switch_trains_base(rrdb_base, tmp_path):
    base_path, _ = rrdb_base
    model = NRIQAFinetuneModel(model_opt(tmp_path, base_path, lora_block={'enabled': False}))
    assert not lora.is_lora(model.net_g)
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    model.feed_data(batch())
    model.optimize_parameters(1)
    changed = [k for k, v in model.net_g.state_dict().items() if not torch.equal(before[k], v)]
    assert 'conv_first.weight' in changed and 'body.0.rdb1.conv1.weight' in changed
    model.save(0, 1)
    saved = torch.load(tmp_path / 'models' / 'net_g_1.pth', weights_only=True)
    assert 'params' in saved and 'conv_first.weight' in saved['params']


def test_gan_term_only_with_gan_opt(rrdb_base, tmp_path):
    base_path, _ = rrdb_base
    opt = model_opt(tmp_path, base_path, optim_d={'type': 'Adam', 'lr': 1e-3},
                    gan_opt={'type': 'GANLoss', 'gan_type': 'vanilla', 'loss_weight': 0.1})
    opt['network_d'] = {'type': 'UNetDiscriminatorSN', 'num_in_ch': 3, 'num_feat': 4, 'skip_connection': True}
    model = NRIQAFinetuneModel(opt)
    assert isinstance(model, NRIQAFinetuneGANModel)
    model.feed_data(batch())
    model.optimize_parameters(1)
    assert 'l_g_gan' in model.log_dict and 'l_d_real' in model.log_dict
    model.save(0, 1)
    assert lora.is_adapter(torch.load(tmp_path / 'models' / 'net_g_1.pth', weights_only=True))
    assert 'params' in torch.load(tmp_path / 'models' / 'net_d_1.pth', weights_only=True)


# ------------------------------------------------------------------------------------------ bad input
def _preflight(opt):
    from iqa_plugin.basicsr_glue.options_check import OptionError, check_options

    opt = dict(opt, model_type='NRIQAFinetuneModel')
    with pytest.raises(OptionError) as e:
        check_options(opt, resolve_weights=False)
    msg = str(e.value)
    assert '\n' not in msg
    return msg


def test_bad_targets_rank_and_base(rrdb_base, tmp_path):
    base_path, _ = rrdb_base
    msg = _preflight(model_opt(tmp_path, base_path, lora_block={'target_modules': ['attn\\.qkv']}))
    assert 'match no' in msg and 'conv_first' in msg and 'body.0.rdb1.conv1' in msg
    msg = _preflight(model_opt(tmp_path, base_path, lora_block={'rank': 100}))
    assert 'rank 100' in msg and 'body.0.rdb1.conv1' in msg and 'at most' in msg
    swin = tmp_path / 'swin.pth'
    save_base(swin, SWINIR)
    msg = _preflight(model_opt(tmp_path, swin))
    assert 'does not match RRDBNet' in msg and 'missing' in msg
    msg = _preflight(model_opt(tmp_path, base_path, lora_block={'rank': 2}, ema_decay=0.999))
    assert 'ema_decay' in msg
    msg = _preflight(model_opt(tmp_path, base_path, lora_block={'rnak': 2}))
    assert "'rnak'" in msg
    # the rank limit per layer: Conv2d in*k*k vs out, Linear min(in, out)
    assert lora.max_rank(torch.nn.Conv2d(3, 64, 3)) == 27 and lora.max_rank(torch.nn.Linear(12, 36)) == 12
    ok = lora.build_network_cpu(RRDB)
    with pytest.raises(lora.LoRAError, match='conv_body'):  # conv_body: 8 -> 8 channels, 3x3: at most 8
        lora.inject_lora(ok, rank=9, target_modules=['conv_body'])
    assert not lora.is_lora(ok)  # nothing injected on failure


@pytest.mark.parametrize('train_extra', [{'ema_decay': 0.999}, {'amp': 'fp8'}, {'lora': {'rank': 2, 'bogus': 1}}])
def test_preflight_and_model_share_one_check(rrdb_base, tmp_path, train_extra):
    """The pre-flight and the model construction refuse a bad train block with the same one line (one function)."""
    base_path, _ = rrdb_base
    opt = model_opt(tmp_path, base_path)
    opt['train'].update(train_extra)
    msg = _preflight(opt)
    with pytest.raises(lora.LoRAError) as e:
        NRIQAFinetuneModel(opt)
    assert str(e.value) in msg


def test_adapter_of_another_base_is_refused(rrdb_base, tmp_path):
    from iqa_plugin.cli import dispatch
    from iqa_plugin.cli.common import UsageError

    base_path, _ = rrdb_base
    model = NRIQAFinetuneModel(model_opt(tmp_path, base_path))
    model.save(0, 1)
    other = tmp_path / 'other.pth'
    save_base(other, RRDB, seed=5)
    out = tmp_path / 'merged.pth'
    with pytest.raises(UsageError, match='another base'):
        dispatch(['lora', 'merge', '--base', str(other), '--adapter', str(tmp_path / 'models' / 'net_g_1.pth'),
                  '--out', str(out)])
    assert not out.exists()
    with pytest.raises(UsageError, match='not a LoRA adapter'):
        dispatch(['lora', 'merge', '--base', str(base_path), '--adapter', str(other), '--out', str(out)])
    assert not out.exists()
    # resuming an adapter whose recorded base file now holds other weights
    adapter = torch.load(tmp_path / 'models' / 'net_g_1.pth', weights_only=True)
    adapter['lora']['base_path'] = str(other)
    torch.save(adapter, tmp_path / 'moved.pth')
    with pytest.raises(lora.LoRAError, match='another base'):
        NRIQAFinetuneModel(model_opt(tmp_path, tmp_path / 'moved.pth'))


def test_train_cli_refuses_bad_rank_before_writing(rrdb_base, tmp_path):
    base_path, _ = rrdb_base
    data = make_sr_folder(tmp_path / 'data', n=2, size=32)
    opt_path = _cli_options(tmp_path, data, base_path, {'rank': 64})
    r = subprocess.run([sys.executable, '-m', 'iqa_plugin.cli', 'train', '-opt', str(opt_path)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, check=False, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 2, r.stderr[-2000:]
    assert 'rank 64' in r.stderr and r.stderr.strip().count('\n') == 0
    assert not (tmp_path / 'experiments').exists()


# ------------------------------------------------------------------------------------------ training runs
def _cli_options(tmp_path, data, base_path, lora_block, total_iter=3):
    opt = model_opt(tmp_path, base_path, lora_block=lora_block, total_iter=total_iter)
    for k in ('is_train', 'dist'):
        opt.pop(k)
    opt['path'] = {'pretrain_network_g': str(base_path), 'strict_load_g': True, 'resume_state': None}
    opt['model_type'] = 'NRIQAFinetuneModel'
    opt['name'] = 'lora_run'
    opt['datasets'] = {
        'train': {'name': 'train', 'type': 'PairedImageDataset', 'dataroot_gt': str(data / 'HR'),
                  'dataroot_lq': str(data / 'LRx4'), 'io_backend': {'type': 'disk'}, 'gt_size': 32,
                  'use_hflip': True, 'use_rot': False, 'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2,
                  'dataset_enlarge_ratio': 1, 'prefetch_mode': None},
        'val': {'name': 'val', 'type': 'PairedImageDataset', 'dataroot_gt': str(data / 'HR'),
                'dataroot_lq': str(data / 'LRx4'), 'io_backend': {'type': 'disk'}}}
    opt['val'] = {'val_freq': total_iter, 'save_img': False,
                  'metrics': {'psnr': {'type': 'calculate_psnr', 'crop_border': 4}, 'nr_lite': {'type': 'nr-lite'}}}
    opt['logger'] = {'print_freq': 1, 'save_checkpoint_freq': total_iter, 'use_tb_logger': False,
                     'wandb': {'project': None, 'resume_id': None}}
    opt['dist_params'] = {'backend': 'nccl', 'port': 29500}
    path = tmp_path / 'lora_run.yml'
    path.write_text(yaml.safe_dump(opt))
    return path


def test_trains_through_iqa_plugin_train_and_merges(rrdb_base, tmp_path):
    base_path, _ = rrdb_base
    data = make_sr_folder(tmp_path / 'data', n=2, size=32)
    opt_path = _cli_options(tmp_path, data, base_path, {'rank': 2, 'alpha': 2})
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, '-m', 'iqa_plugin.cli', 'train', '-opt', str(opt_path)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    exp = tmp_path / 'experiments' / 'lora_run'
    log = next(exp.glob('train_*.log')).read_text()
    assert 'l_nr' in log and 'LoRA fine-tuning' in log
    ckpt = torch.load(exp / 'models' / 'net_g_3.pth', weights_only=True)
    assert lora.is_adapter(ckpt) and ckpt['lora']['base_path'] == str(base_path.resolve())
    assert (exp / 'training_states' / '3.state').is_file()


# ------------------------------------------------------------------------------------------ precision
def test_dynamic_loss_scale_skips_non_finite_steps():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.1)
    scale = DynamicLossScale([p], init_scale=8.0, growth_interval=2)
    opt.register_step_pre_hook(scale.pre_step)
    p.grad = torch.tensor([8.0, 16.0, float('inf')])
    opt.step()
    assert torch.equal(p.detach(), torch.ones(3)) and scale.scale == 4.0 and scale.skipped == 1
    p.grad = torch.tensor([4.0, 4.0, 4.0])
    opt.step()  # unscaled to 1.0 before Adam: every entry moves by lr
    assert torch.allclose(p.detach(), torch.full((3,), 0.9)) and scale.good_steps == 1
    x = torch.ones(2, requires_grad=True)
    scale.scale_output(x * 1.0).sum().backward()
    assert torch.equal(x.grad, torch.full((2,), 4.0))


def test_bf16_autocast_step_on_cpu(rrdb_base, tmp_path):
    base_path, _ = rrdb_base
    model = NRIQAFinetuneModel(model_opt(tmp_path, base_path, amp='bf16'))
    model.feed_data(batch())
    model.optimize_parameters(1)
    assert all(torch.isfinite(v).all() for v in lora.adapter_state_dict(model.net_g).values())
    assert all(p.dtype == torch.float32 for p in model.net_g.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_cuda_amp_channels_last(rrdb_base, tmp_path, amp):
    base_path, _ = rrdb_base
    opt = model_opt(tmp_path, base_path, amp=amp, channels_last=True)
    opt['num_gpu'] = 1
    model = NRIQAFinetuneModel(opt)
    assert model.device.type == 'cuda' and model._channels_last
    for it in (1, 2):
        model.feed_data({k: v.cuda() for k, v in batch(it).items()})
        model.optimize_parameters(it)
    assert model.lq.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(v).all() for v in lora.adapter_state_dict(model.net_g).values())
    changed = any(v.abs().max() > 0 for k, v in lora.adapter_state_dict(model.net_g).items() if 'lora_B' in k)
    assert changed


def test_option_files_pass_the_preflight(tmp_path):
    """options/train/lora/*.yml: SwinIR/RRDB x UPos/AMO x FT/FT_HP/FT_IG pass the pre-flight (stub base and data)."""
    from pathlib import Path

    from iqa_plugin.models.nriqa_finetune_model import variant_for
    from iqa_plugin.basicsr_glue.options_check import check_options, load_yaml

    files = sorted((Path(__file__).resolve().parents[1] / 'options' / 'train' / 'lora').glob('[a-z]*.yml'))
    assert len(files) == 12
    bases = {}
    for f in files:
        o = load_yaml(f)
        arch = o['network_g']['type']
        if arch not in bases:
            bases[arch] = tmp_path / f'{arch}.pth'
            torch.save({'params_ema': lora.build_network_cpu(o['network_g']).state_dict()}, bases[arch])
        o['path']['pretrain_network_g'] = str(bases[arch])
        for phase in o['datasets'].values():
            phase['dataroot'] = str(tmp_path)
        check_options(o, resolve_weights=False)
        gan = variant_for(dict(o, is_train=True)).__name__.endswith('GANModel')
        assert gan == f.stem.endswith('_ig') and o['train']['gt_sampling']['type'] in f.stem, f.name
