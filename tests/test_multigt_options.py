"""Every options/train/multigt/<strategy>_<arch>.yml passes the pre-flight and trains a few iterations through
``iqa-plugin train``, with its data roots pointed at a set that ``make-multigt`` writes at test time.

Each run uses a child option file (``base:`` the shipped file) that only points the data roots at the test set
and shrinks the run to CPU-test size: tiny networks, 64-px crops, 2 iterations, no VGG perceptual loss (its
torchvision weights are a download) and no pretrained net. Strategy, model, losses, degradations and
validation protocol are the shipped file's.
"""
from pathlib import Path

import pytest
import yaml

import iqa_plugin  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / 'options' / 'train' / 'multigt'
FILES = sorted(p.name for p in FOLDER.glob('*.yml') if not p.name.startswith('_'))
TINY_NETS = {
    'swinir': {'type': 'SwinIR', 'upscale': 4, 'in_chans': 3, 'img_size': 8, 'window_size': 4, 'img_range': 1.0,
               'depths': [1], 'embed_dim': 8, 'num_heads': [2], 'mlp_ratio': 2, 'upsampler': 'nearest+conv',
               'resi_connection': '1conv'},
    'rrdb': {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'num_grow_ch': 4},
}



def child_options(tmp_path, name, data):
    arch = name.rsplit('_', 1)[1].split('.')[0]
    child = {
        'base': str(FOLDER / name),
        'name': f'test_{Path(name).stem}',
        'num_gpu': 0,
        'gt_size': 64,
        'queue_size': 2,
        'network_g': TINY_NETS[arch],
        'network_d': {'num_feat': 4},
        'path': {'pretrain_network_g': None},
        'datasets': {'train': {'dataroot': str(data), 'gt_size': 64, 'crop_pad_size': 80, 'batch_size_per_gpu': 2,
                               'num_worker_per_gpu': 0},
                     'val': {'dataroot': str(data), 'set': '0-20193'}},
        'train': {'perceptual_opt': None, 'total_iter': 2},
        'val': {'val_freq': 2, 'save_img': False},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 2, 'use_tb_logger': False},
    }
    if name.startswith(('sma', 'smp')):
        child['train']['gt_sampling'] = {'scores': str(tmp_path / 'scores.json')}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(child))
    return path


@pytest.mark.parametrize('name', FILES)
def test_shipped_multigt_options_train(name, multigt_set, tmp_path, monkeypatch):
    from iqa_plugin.cli import score_gts
    from iqa_plugin.train import run
    from iqa_plugin.basicsr_glue.options_check import check_option_file, load_yaml

    assert len(FILES) == 12, FILES  # six strategies x two backbones
    shipped = load_yaml(FOLDER / name)
    assert shipped['model_type'] == 'MultiGTRealESRGANModel' and shipped['train']['gt_sampling']['type'] == \
        name.split('_')[0]
    monkeypatch.chdir(tmp_path)
    path = child_options(tmp_path, name, multigt_set)
    if name.startswith(('sma', 'smp')):  # the score cache, as a user builds it
        import argparse
        score_gts.main(argparse.Namespace(opt=str(path), out=str(tmp_path / 'scores.json'), device='cpu'))
    check_option_file(path)
    run(['-opt', str(path)], root_path=str(tmp_path))
    from iqa_plugin.basicsr_glue.dist import read_training_state

    exp = tmp_path / 'experiments' / f'test_{Path(name).stem}'
    state = read_training_state(exp / 'training_states' / '2.state')
    assert state['iter'] == 2 and 'gt_sampling' in state  # the strategy's RNG travels with the run
    assert (exp / 'models' / 'net_g_2.pth').is_file()
