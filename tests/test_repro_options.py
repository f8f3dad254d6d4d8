"""Every options/repro/<arch>_<row>.yml (the paper's table, arXiv 2504.18524: PSNR pretraining, OrigsOnly, Rand,
UPos, SMA, SMP, AMO, UPos+FT, AMO+FT, FT_HP, FT_IG for SwinIR and RRDB) passes the pre-flight and trains two
iterations in-process (``iqa_plugin.train.run``) on a set that ``make-multigt`` writes at test time.

As in tests/test_multigt_options.py, each run uses a child option file (``base:`` the shipped file) that only
points the data roots at the test set and shrinks the run to CPU-test size: tiny networks, 64-px crops, no VGG
perceptual loss (its torchvision weights are a download). The pretrained net a row starts from is a tiny net
saved where the previous stage of the chain writes it; ``test_repro_chain`` checks that every such path is the
``net_g_latest.pth`` of another shipped row.
"""
from pathlib import Path

import pytest
import torch
import yaml

import iqa_plugin  # noqa: F401
from test_multigt_options import TINY_NETS

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / 'options' / 'repro'
ROWS = ('psnr', 'orig', 'rand', 'upos', 'sma', 'smp', 'amo', 'upos_ft', 'amo_ft', 'amo_ft_hp', 'amo_ft_ig')
FILES = sorted(p.name for p in FOLDER.glob('*.yml') if not p.name.startswith('_'))
MODELS = {'psnr': 'MultiGTSRModel', 'ft': 'NRIQAFinetuneModel', 'multigt': 'MultiGTRealESRGANModel'}


def split(name):
    """'swinir_amo_ft.yml' -> ('swinir', 'amo_ft')."""
    arch, row = Path(name).stem.split('_', 1)
    return arch, row


def kind(row):
    return 'psnr' if row == 'psnr' else 'ft' if '_ft' in row else 'multigt'



def test_repro_files_cover_the_table():
    assert sorted(FILES) == sorted(f'{a}_{r}.yml' for a in ('swinir', 'rrdb') for r in ROWS)


def test_repro_chain():
    """Names are unique and each row starts from the latest net of the row before it (psnr -> strategy -> FT)."""
    from iqa_plugin.basicsr_glue.options_check import load_yaml

    opts = {f: load_yaml(FOLDER / f) for f in FILES}
    names = {o['name']: f for f, o in opts.items()}
    assert len(names) == len(FILES)
    for f, o in opts.items():
        arch, row = split(f)
        assert o['model_type'] == MODELS[kind(row)], f
        assert o['datasets']['train']['dataroot'] == 'datasets/HGGT/Train', f  # _roots.yml wins
        assert o['datasets']['val']['dataroot'] == 'datasets/HGGT/Test-100', f
        pre = o['path']['pretrain_network_g']
        if row == 'psnr':
            assert pre is None and o['train']['gt_sampling']['type'] == 'orig'
            continue
        parent = 'psnr' if kind(row) == 'multigt' else row.split('_')[0]
        assert pre == f'experiments/{opts[f"{arch}_{parent}.yml"]["name"]}/models/net_g_latest.pth', f
        assert o['train']['gt_sampling']['type'] == row.split('_')[0], f
    assert opts['swinir_amo_ft_ig.yml'].get('network_d') and not opts['swinir_amo_ft.yml'].get('network_d')
    hp, ft = opts['rrdb_amo_ft_hp.yml'], opts['rrdb_amo_ft.yml']
    assert hp['train']['perceptual_opt']['perceptual_weight'] == 5 * ft['train']['perceptual_opt']['perceptual_weight']


def child_options(tmp_path, name, data):
    arch, row = split(name)
    child = {
        'base': str(FOLDER / name),
        'num_gpu': 0,
        'network_g': TINY_NETS[arch],
        'datasets': {'train': {'dataroot': str(data), 'gt_size': 64, 'batch_size_per_gpu': 2,
                               'num_worker_per_gpu': 0},
                     'val': {'dataroot': str(data), 'set': '0-20193'}},
        'train': {'perceptual_opt': None, 'total_iter': 2},
        'val': {'val_freq': 2, 'save_img': False},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
    }
    if kind(row) == 'multigt':
        child.update({'gt_size': 64, 'queue_size': 2, 'network_d': {'num_feat': 4}})
        child['datasets']['train']['crop_pad_size'] = 80
    if kind(row) == 'ft':  # the tiny nets' layers allow rank <= 4
        child['train']['lora'] = {'rank': 2, 'alpha': 2}
    if row.endswith('_ig'):
        child['network_d'] = {'num_feat': 4}
    if row in ('sma', 'smp'):
        child['train']['gt_sampling'] = {'scores': str(tmp_path / 'scores.json')}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(child))
    return path


def save_tiny_pretrained(path, arch):
    """A tiny net of ``arch`` at ``path`` (the checkpoint layout BasicSR writes with EMA: params, params_ema)."""
    from iqa_plugin.models import lora

    net = lora.build_network_cpu(TINY_NETS[arch])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'params': net.state_dict(), 'params_ema': net.state_dict()}, path)


@pytest.mark.parametrize('name', FILES)
def test_repro_options_train(name, multigt_set, tmp_path, monkeypatch):
    import argparse

    from iqa_plugin.cli import score_gts
    from iqa_plugin.train import run
    from iqa_plugin.basicsr_glue.dist import read_training_state
    from iqa_plugin.basicsr_glue.options_check import check_option_file, load_yaml

    arch, row = split(name)
    monkeypatch.chdir(tmp_path)  # the shipped relative paths (experiments/...) resolve here
    path = child_options(tmp_path, name, multigt_set)
    shipped = load_yaml(FOLDER / name)
    if shipped['path']['pretrain_network_g']:
        save_tiny_pretrained(tmp_path / shipped['path']['pretrain_network_g'], arch)
    if row in ('sma', 'smp'):  # the score cache, as a user builds it
        score_gts.main(argparse.Namespace(opt=str(path), out=str(tmp_path / 'scores.json'), device='cpu'))
    check_option_file(path)
    run(['-opt', str(path)], root_path=str(tmp_path))
    exp = tmp_path / 'experiments' / shipped['name']
    state = read_training_state(exp / 'training_states' / '2.state')
    assert state['iter'] == 2
    assert (exp / 'models' / 'net_g_latest.pth').is_file()  # what the next row of the chain loads
