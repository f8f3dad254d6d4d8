"""Shared fixtures. ``shared_dir`` is ../shared beside the repository (skips when absent).

``IQA_PLUGIN_NO_SHARED=1`` hides ../shared from the tests (and from the package code that would look at it),
so a clone without it is reproduced in one step: ``IQA_PLUGIN_NO_SHARED=1 python -m pytest``."""
import os
from pathlib import Path

import numpy as np
import pytest

import iqa_plugin  # noqa: F401  (shim + registries before any basicsr import in tests)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
NO_SHARED_ENV = 'IQA_PLUGIN_NO_SHARED'


def shared_hidden():
    """True when ``IQA_PLUGIN_NO_SHARED`` is set (to anything but '' or '0'): behave as a clone without ../shared."""
    return os.environ.get(NO_SHARED_ENV, '') not in ('', '0')


def find_shared():
    """../shared when it is there and not hidden by ``IQA_PLUGIN_NO_SHARED``, else None. Only what cannot ship
    (the official MILO weights and fixtures, option files' training data) may come from it."""
    if shared_hidden() or not (SHARED / 'README.md').is_file():
        return None
    return SHARED


@pytest.fixture(scope='session')
def shared_dir():
    if shared_hidden():
        pytest.skip(f'../shared hidden by {NO_SHARED_ENV}=1 (as in a fresh clone without the shared data)')
    if find_shared() is None:
        pytest.skip(f'../shared not found at {SHARED} (fresh clone without the shared data)')
    return SHARED


@pytest.fixture(scope='module')
def one_torch_thread():
    """One torch thread for a module: tiny networks and pyiqa's float64 metrics gain little from more,
    and lose a lot when parallel jobs share the 2 cores (OpenMP threads then wait on each other).
    Use with ``pytestmark = pytest.mark.usefixtures('one_torch_thread')``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='session')
def random_milo_weights(tmp_path_factory):
    """A random (seed 0) RGB MILO state dict in a file, for tests that need no official weights."""
    import torch

    from iqa_plugin.archs.milo_arch import MILO

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('milo') / 'random_milo.pth'
    torch.save(MILO(weights=None).state_dict(), path)
    return str(path)


@pytest.fixture(autouse=True)
def _isolated_torch_home(tmp_path, monkeypatch):
    """No test reads or writes the user's torch hub cache; downloads are off unless a test allows them."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setenv('IQA_PLUGIN_OFFLINE', '1')
    monkeypatch.delenv('IQA_PLUGIN_WEIGHTS_DIR', raising=False)


@pytest.fixture
def empty_weights_dir(tmp_path, monkeypatch):
    """An empty folder as ``$IQA_PLUGIN_WEIGHTS_DIR`` (the first place the weights manager looks)."""
    d = tmp_path / 'weights_dir'
    d.mkdir()
    monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(d))
    return d


def smooth_image(h, w, seed=0):
    """A deterministic smooth colour image, uint8 HWC RGB."""
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, size=(max(h // 8, 2), max(w // 8, 2), 3)).astype(np.float32)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)  # some texture
    return np.clip(img, 0, 255).astype(np.uint8)


def make_sr_folder(root, n=4, size=64, scale=4, seed=0):
    """HR/LR pairs (PNG) under root/HR and root/LRx4; returns root."""
    import cv2

    root = Path(root)
    (root / 'HR').mkdir(parents=True, exist_ok=True)
    (root / 'LRx4').mkdir(parents=True, exist_ok=True)
    for i in range(n):
        hr = smooth_image(size, size, seed + i)
        lr = cv2.resize(hr, (size // scale, size // scale), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(root / 'HR' / f'img{i:02d}.png'), hr[:, :, ::-1])
        cv2.imwrite(str(root / 'LRx4' / f'img{i:02d}.png'), lr[:, :, ::-1])
    return root


TINY_OPTIONS = """
name: {name}
model_type: IQASRModel
scale: 4
num_gpu: 0
manual_seed: 0
datasets:
  train:
    name: tiny
    type: PairedImageDataset
    dataroot_gt: {data}/HR
    dataroot_lq: {data}/LRx4
    io_backend: {{type: disk}}
    gt_size: 32
    use_hflip: true
    use_rot: false
    num_worker_per_gpu: 0
    batch_size_per_gpu: 2
    dataset_enlarge_ratio: 4
    prefetch_mode: ~
  val:
    name: tiny_val
    type: PairedImageDataset
    dataroot_gt: {data}/HR
    dataroot_lq: {data}/LRx4
    io_backend: {{type: disk}}
network_g: {{type: MSRResNet, num_in_ch: 3, num_out_ch: 3, num_feat: 8, num_block: 1, upscale: 4}}
path: {{pretrain_network_g: ~, strict_load_g: true, resume_state: ~}}
train:
  ema_decay: {ema}
  optim_g: {{type: Adam, lr: !!float 1e-3, betas: [0.9, 0.99]}}
  scheduler: {{type: MultiStepLR, milestones: [1000], gamma: 0.5}}
  total_iter: {iters}
  warmup_iter: -1
  pixel_opt: {{type: L1Loss, loss_weight: 1.0, reduction: mean}}
{extra_train}
val:
  val_freq: {val_freq}
  save_img: false
{extra_val}
  metrics:
    psnr: {{type: calculate_psnr, crop_border: 0, test_y_channel: false}}
{extra_metrics}
logger: {{print_freq: 1, save_checkpoint_freq: {val_freq}, use_tb_logger: {tb}, wandb: {{project: ~, resume_id: ~}}}}
dist_params: {{backend: nccl, port: 29500}}
"""


def build_label_free_model(tmp_path, model_type, network_g, **train):
    """A ``LabelFreeModel`` (MILO pseudo-MOS, NR-lite) built in-process on the CPU for a few steps: EMA 0.5, no
    augmentation, Adam 3e-3, a MultiStepLR that never steps, checkpoints under ``tmp_path``; ``train`` keyword
    arguments override or add ``train`` options (e.g. ``hard_weight=1.0``)."""
    from basicsr.models import build_model

    opt = {'model_type': model_type, 'num_gpu': 0, 'is_train': True, 'dist': False, 'manual_seed': 0,
           'network_g': network_g, 'path': {'models': str(tmp_path), 'training_states': str(tmp_path)},
           'train': {'ema_decay': 0.5, 'augment': False, 'optim_g': {'type': 'Adam', 'lr': 3e-3},
                     'scheduler': {'type': 'MultiStepLR', 'milestones': [100], 'gamma': 0.5}, 'total_iter': 10,
                     **train}}
    return build_model(opt)


def write_tiny_options(path, data, name='tiny', iters=4, val_freq=2, ema=0, tb='false', extra_train='',
                       extra_val='', extra_metrics=''):
    text = TINY_OPTIONS.format(name=name, data=Path(data).as_posix(), iters=iters, val_freq=val_freq, ema=ema,
                               tb=tb, extra_train=extra_train, extra_val=extra_val, extra_metrics=extra_metrics)
    Path(path).write_text(text)
    return Path(path)


@pytest.fixture
def tiny_sr(tmp_path):
    return make_sr_folder(tmp_path / 'data')


@pytest.fixture(scope='session')
def multigt_set(tmp_path_factory):
    """A small HGGT-layout multi-GT set (set '0-20193', 3 groups of 96 px) written by ``make-multigt``;
    shared by the option-file tests, which only read it."""
    from iqa_plugin.apps.multigt_make import make_multigt

    root = tmp_path_factory.mktemp('multigt')
    src = make_sr_folder(root / 'src', n=3, size=96)
    make_multigt(src / 'HR', root / 'set', set_name='0-20193', seed=0)
    return root / 'set'


def pytest_collection_modifyitems(config, items):
    os.environ.setdefault('OMP_NUM_THREADS', '2')
