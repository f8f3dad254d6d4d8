"""BasicSR's contracts for the plugin's IQA models and losses.

* The sequence of BasicSR's own model test (tests/test_models/test_sr_model.py in BasicSR: build,
  ``feed_data``, ``optimize_parameters``, ``save``, ``test`` with and without EMA, ``nondist_validation`` in
  train and test mode) for every IQA model class, with plugin losses and validators in place of the
  download-bound VGG loss, and only the class (and the GAN parts it needs) swapped.
* The contract of BasicSR's loss test (``loss_weight``, ``reduction`` mean/sum/none, unknown reduction ->
  ValueError) for every plugin loss. ``reduction='none'`` gives one value per image: shape (B,).
* Each IQA model trains through ``iqa-plugin train`` (tiny nets, a few iterations, GAN ones included).
* The one BasicSR method the plugin mirrors (``RealESRGANModel.__init__``) is pinned to BasicSR 1.4.2.
"""
import ast
import hashlib
import inspect
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import iqa_plugin  # noqa: F401  (shim + registries)
from basicsr.models.sr_model import SRModel  # after iqa_plugin: BasicSR needs its torchvision shim
from conftest import make_sr_folder

REPO = Path(__file__).resolve().parents[1]
MODELS = ['IQASRModel', 'IQASRGANModel', 'IQAESRGANModel', 'IQARealESRGANModel']
GAN_PART = """
network_d: {type: UNetDiscriminatorSN, num_in_ch: 3, num_feat: 4, skip_connection: true}
"""
GAN_TRAIN = """
  optim_d: {type: Adam, lr: !!float 2e-4, weight_decay: 0, betas: [0.9, 0.99]}
  gan_opt: {type: GANLoss, gan_type: vanilla, loss_weight: 0.1}
"""
# Real-ESRGAN's second-order degradation settings (BasicSR's train_realesrgan_x4plus.yml), small queue and
# narrower resize ranges so that 64-px crops stay larger than the 21-px blur kernels
REALESRGAN_PART = """
gt_size: 64
queue_size: 4
l1_gt_usm: true
percep_gt_usm: true
gan_gt_usm: false
resize_prob: [0.2, 0.7, 0.1]
resize_range: [0.5, 1.5]
gaussian_noise_prob: 0.5
noise_range: [1, 30]
poisson_scale_range: [0.05, 3]
gray_noise_prob: 0.4
jpeg_range: [30, 95]
second_blur_prob: 0.8
resize_prob2: [0.3, 0.4, 0.3]
resize_range2: [0.8, 1.2]
gaussian_noise_prob2: 0.5
noise_range2: [1, 25]
poisson_scale_range2: [0.05, 2.5]
gray_noise_prob2: 0.4
jpeg_range2: [30, 95]
"""

MODEL_OPTIONS = """
scale: 4
num_gpu: 0
manual_seed: 0
is_train: True
dist: False
name: contract
network_g: {{type: MSRResNet, num_in_ch: 3, num_out_ch: 3, num_feat: 4, num_block: 1, upscale: 4}}
{gan}
path: {{pretrain_network_g: ~, strict_load_g: true, resume_state: ~}}
train:
  ema_decay: 0.999
  optim_g: {{type: Adam, lr: !!float 2e-4, weight_decay: 0, betas: [0.9, 0.99]}}
  scheduler: {{type: MultiStepLR, milestones: [100], gamma: 0.5}}
  total_iter: 10
  warmup_iter: -1
  pixel_opt: {{type: L1Loss, loss_weight: 1.0, reduction: mean}}
  iqa_opt:
    milo: {{type: MILOLoss, loss_weight: 0.05, weights: milo-pseudomos}}
    relational: {{type: RelationalLoss, loss_weight: 0.01}}
    nr: {{type: NRIQALoss, metric: nr-lite, loss_weight: 0.01}}
{gan_train}
val:
  val_freq: 5
  save_img: true
  select_by: milo
  metrics:
    psnr: {{type: calculate_psnr, crop_border: 4, test_y_channel: false, better: higher}}
    milo: {{type: milo-pseudomos}}
    nr_lite: {{type: calculate_iqa, metric: nr-lite}}
{extra}
"""


def model_options(cls_name):
    gan = cls_name != 'IQASRModel'
    return yaml.safe_load(MODEL_OPTIONS.format(
        gan=GAN_PART if gan else '', gan_train=GAN_TRAIN if gan else '',
        extra=REALESRGAN_PART if cls_name == 'IQARealESRGANModel' else ''))


def train_batch(cls_name, seed=0):
    g = torch.Generator().manual_seed(seed)
    side = 64 if cls_name == 'IQARealESRGANModel' else 32
    data = {'gt': torch.rand((1, 3, side, side), generator=g), 'lq': torch.rand((1, 3, side // 4, side // 4), generator=g)}
    if cls_name == 'IQARealESRGANModel':  # RealESRGANDataset's kernels: identity blurs
        delta = torch.zeros(1, 21, 21)
        delta[0, 10, 10] = 1.0
        data.update(kernel1=delta.clone(), kernel2=delta.clone(), sinc_kernel=delta.clone())
    return data


@pytest.fixture(scope='module')
def val_loader(tmp_path_factory):
    from basicsr.data.paired_image_dataset import PairedImageDataset

    root = make_sr_folder(tmp_path_factory.mktemp('val'), n=2, size=32)
    dataset = PairedImageDataset(dict(name='Test', dataroot_gt=str(root / 'HR'), dataroot_lq=str(root / 'LRx4'),
                                      io_backend=dict(type='disk'), scale=4, phase='val'))
    return torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)


@pytest.mark.parametrize('cls_name', MODELS)
def test_basicsr_model_sequence(cls_name, val_loader):
    from basicsr.losses.basic_loss import L1Loss
    from basicsr.utils.registry import MODEL_REGISTRY

    from iqa_plugin.losses.frozen_iqa import FrozenIQALoss
    from iqa_plugin.models.iqa_mixins import IQALossBundle

    model = MODEL_REGISTRY.get(cls_name)(model_options(cls_name))
    assert model.__class__.__name__ == cls_name
    assert isinstance(model.cri_pix, IQALossBundle) and isinstance(model.cri_pix.pixel, L1Loss)
    assert all(isinstance(v, FrozenIQALoss) for v in model.cri_iqa.values())
    assert model.ema_decay == 0.999
    # the frozen IQA networks are in no optimizer
    opt_params = {id(p) for o in model.optimizers for g in o.param_groups for p in g['params']}
    for loss in model.cri_iqa.values():
        assert not any(id(p) in opt_params for p in loss.frozen_scorer(model.device).parameters())

    model.feed_data(train_batch(cls_name))
    side = model.gt.shape[-1]
    assert model.lq.shape == (1, 3, side // 4, side // 4) and model.gt.shape == (1, 3, side, side)
    model.optimize_parameters(1)
    assert model.output.shape == (1, 3, side, side)
    pix = 'l_pix' if cls_name == 'IQASRModel' else 'l_g_pix'
    assert {pix, 'l_milo', 'l_relational', 'l_nr'} <= set(model.log_dict)
    # the pixel entry is the pixel loss alone, not the bundle's sum
    out, gt = model.output.detach(), (model.gt_usm if cls_name == 'IQARealESRGANModel' else model.gt)
    assert model.log_dict[pix] == pytest.approx(float((out - gt).abs().mean()), rel=1e-4)

    with tempfile.TemporaryDirectory() as tmpdir:
        model.opt['path']['models'] = tmpdir
        model.opt['path']['training_states'] = tmpdir
        model.save(0, 1)
        state = torch.load(os.path.join(tmpdir, '1.state'), map_location='cpu', weights_only=True)
        assert 'iqa_best' in state and len(state['optimizers']) == len(model.optimizers)

    model.test()
    assert model.output.shape == (1, 3, side, side)
    model.__delattr__('net_g_ema')
    model.test()
    assert model.output.shape == (1, 3, side, side)
    assert model.net_g.training is True

    assert model.is_train is True
    with tempfile.TemporaryDirectory() as tmpdir:
        model.opt['path']['visualization'] = tmpdir
        model.opt['path']['models'] = tmpdir
        model.nondist_validation(val_loader, 1, None, save_img=True)
        assert model.is_train is True
        assert {'psnr', 'milo', 'nr_lite'} <= set(model.metric_results)
        values = {k: float(v) for k, v in model.metric_results.items()}
        assert all(np.isfinite(v) for v in values.values()), values
        assert values['psnr'] > 0 and 0 <= values['milo'] <= 1 and 0 < values['nr_lite'] < 1, values
        best = model.best_metric_results['Test']
        assert best['milo']['better'] == 'lower' and best['nr_lite']['better'] == 'higher'  # from the table
        assert model.best_select['metric'] == 'milo' and os.path.isfile(os.path.join(tmpdir, 'net_g_best.pth'))

    with tempfile.TemporaryDirectory() as tmpdir:
        model.opt['is_train'] = False
        model.opt['val']['suffix'] = 'test'
        model.opt['path']['visualization'] = tmpdir
        model.opt['val']['pbar'] = True
        model.nondist_validation(val_loader, 1, None, save_img=True)
        assert 'psnr' in model.metric_results
        model.opt['val']['suffix'] = None
        model.opt['name'] = 'demo'
        model.nondist_validation(val_loader, 1, None, save_img=True)
        assert 'milo' in model.metric_results


def test_tensor_validators_skip_uint8_rounding(val_loader):
    """In an IQA model, calculate_iqa scores the output tensors; outside, the uint8 images."""
    from basicsr.utils.registry import MODEL_REGISTRY

    from iqa_plugin.metrics.iqa_metric import calculate_iqa
    from iqa_plugin.utils import val_tensors

    model = MODEL_REGISTRY.get('IQASRModel')(model_options('IQASRModel'))
    data = next(iter(val_loader))
    model.feed_data(data)
    model.test()
    from basicsr.utils import tensor2img
    sr = tensor2img([model.output.detach().cpu()])
    gt = tensor2img([model.gt.detach().cpu()])
    uint8_value = calculate_iqa(sr, gt, metric='milo-pseudomos', device='cpu')
    with val_tensors.collecting():
        model.get_current_visuals()
        tensor_value = calculate_iqa(sr, gt, metric='milo-pseudomos', device='cpu')
    from iqa_plugin import scoring
    direct = float(scoring.get_cached_metric('milo-pseudomos', 'cpu')(model.output.detach().clamp(0, 1),
                                                                      model.gt)['quality_score'])
    assert tensor_value == pytest.approx(direct, rel=1e-5)
    assert tensor_value != uint8_value  # the uint8 round trip changes the value; the tensor path avoids it


def test_iqa_only_training_and_progress(val_loader):
    """iqa_opt without a pixel loss trains on the IQA losses alone; progress reaches the curricula."""
    from basicsr.utils.registry import MODEL_REGISTRY

    opt = model_options('IQASRModel')
    del opt['train']['pixel_opt']
    opt['train']['iqa_opt'] = {'milo': {'type': 'MILOLoss', 'weights': 'milo-pseudomos',
                                        'curriculum': {'schedule': 'linear'}}}
    model = MODEL_REGISTRY.get('IQASRModel')(opt)
    model.feed_data(train_batch('IQASRModel'))
    model.optimize_parameters(5)
    assert model.cri_iqa['milo'].progress == pytest.approx(0.5)
    assert set(model.log_dict) == {'l_milo'}


def test_validation_not_repeated_without_a_step(val_loader, tmp_path, caplog):
    from basicsr.utils.registry import MODEL_REGISTRY

    model = MODEL_REGISTRY.get('IQASRModel')(model_options('IQASRModel'))
    model.opt['path'].update(visualization=str(tmp_path), models=str(tmp_path))
    model.feed_data(train_batch('IQASRModel'))
    model.optimize_parameters(1)
    model.validation(val_loader, 1, None)
    first = dict(model.metric_results)
    model.metric_results = {k: -1.0 for k in first}
    model.validation(val_loader, 2, None)  # BasicSR's final validation at total_iter + 1: same weights
    assert all(v == -1.0 for v in model.metric_results.values())
    model.feed_data(train_batch('IQASRModel', seed=1))
    model.optimize_parameters(2)
    model.validation(val_loader, 3, None)
    assert model.metric_results['psnr'] != -1.0


# ------------------------------------------------------------------------------------------- losses
def _losses(random_milo_weights, tmp_path):
    """(name, constructor(**kw), input channels) for every plugin loss."""
    from iqa_plugin.archs.afine_arch import AFINE
    from iqa_plugin.archs.milo_arch import MILO
    from iqa_plugin.losses.afine_loss import AFINELoss
    from iqa_plugin.losses.milo_loss import MILOLatentLoss, MILOLoss
    from iqa_plugin.losses.nriqa_loss import NRIQALoss
    from iqa_plugin.losses.relational_loss import RelationalLoss

    torch.manual_seed(0)
    latent = tmp_path / 'latent.pth'
    torch.save(MILO(in_channels=4, weights=None).state_dict(), latent)
    afine = tmp_path / 'afine.pth'
    torch.save(AFINE(weights='none', clip_weights='none', vit={'width': 64, 'layers': 2, 'patch_size': 16,
                                                              'grid': 4}, hidden_dim=8).afine_state_dict(), afine)
    return [
        ('MILOLoss', lambda **kw: MILOLoss(weights='milo-pseudomos', **kw), 3),
        ('MILOLatentLoss', lambda **kw: MILOLatentLoss(weights='milo-pseudomos', weights_path=str(latent), **kw), 4),
        ('RelationalLoss', lambda **kw: RelationalLoss(**kw), 3),
        ('NRIQALoss', lambda **kw: NRIQALoss(metric='nr-lite', **kw), 3),
        ('AFINELoss', lambda **kw: AFINELoss(weights_path=str(afine), clip_weights='none', **kw), 3),
    ]


def test_basicsr_loss_contract(random_milo_weights, tmp_path):
    from basicsr.utils.registry import LOSS_REGISTRY

    from iqa_plugin.losses.frozen_iqa import FrozenIQALoss

    plugin_losses = {name for name, cls in LOSS_REGISTRY if issubclass(cls, FrozenIQALoss)}
    cases = _losses(random_milo_weights, tmp_path)
    assert plugin_losses == {name for name, _, _ in cases}, 'a plugin loss is missing from this test'
    for name, make, channels in cases:
        g = torch.Generator().manual_seed(0)
        pred = torch.rand((2, channels, 32, 32), generator=g)
        target = torch.rand((2, channels, 32, 32), generator=g)
        mean = make(loss_weight=1.0, reduction='mean')
        out = mean(pred, target, weight=None)
        assert isinstance(out, torch.Tensor) and out.shape == torch.Size([]), name
        none = make(loss_weight=1.0, reduction='none')(pred, target, weight=None)
        assert none.shape == (2,), name  # one value per image
        total = make(loss_weight=1.0, reduction='sum')(pred, target, weight=None)
        assert total.shape == torch.Size([]), name
        tol = 1e-5 * max(float(none.abs().max()), 1e-3)
        assert float(total) == pytest.approx(float(none.sum()), abs=tol), name
        assert float(out) == pytest.approx(float(none.mean()), abs=tol), name
        doubled = make(loss_weight=2.0, reduction='mean')(pred, target)
        assert float(doubled) == pytest.approx(2 * float(out), abs=2 * tol), name
        with pytest.raises(ValueError):
            make(loss_weight=1.0, reduction='unknown')
        with pytest.raises(ValueError, match='spatial'):
            mean(pred, target, weight=torch.ones_like(pred))
        assert list(mean.parameters()) == [] and mean.state_dict() == {}, name  # frozen net not a submodule
        mean.train()
        assert not mean.frozen_scorer().training, name  # a parent's .train() cannot undo eval mode


# ------------------------------------------------------------------------------------- training runs
def _train_options(tmp_path, cls_name, data):
    opt = model_options(cls_name)
    opt.pop('is_train'), opt.pop('dist')
    opt['name'] = f'run_{cls_name}'
    opt['model_type'] = cls_name
    opt['train']['total_iter'] = 3
    opt['train']['iqa_opt'] = {'milo': {'type': 'MILOLoss', 'loss_weight': 0.05, 'weights': 'milo-pseudomos'}}
    opt['val']['val_freq'] = 3
    opt['val']['save_img'] = False
    opt['logger'] = {'print_freq': 1, 'save_checkpoint_freq': 3, 'use_tb_logger': False,
                     'wandb': {'project': None, 'resume_id': None}}
    opt['dist_params'] = {'backend': 'nccl', 'port': 29500}
    val = {'name': 'val', 'type': 'PairedImageDataset', 'dataroot_gt': str(data / 'HR'),
           'dataroot_lq': str(data / 'LRx4'), 'io_backend': {'type': 'disk'}}
    if cls_name == 'IQARealESRGANModel':
        meta = data / 'meta.txt'
        meta.write_text(''.join(f'{p.name}\n' for p in sorted((data / 'HR').glob('*.png'))))
        train = {'name': 'train', 'type': 'RealESRGANDataset', 'dataroot_gt': str(data / 'HR'),
                 'meta_info': str(meta), 'io_backend': {'type': 'disk'}, 'gt_size': 32, 'use_hflip': True,
                 'use_rot': False, 'blur_kernel_size': 21, 'kernel_list': ['iso', 'aniso'],
                 'kernel_prob': [0.5, 0.5], 'sinc_prob': 0.1, 'blur_sigma': [0.2, 3], 'betag_range': [0.5, 4],
                 'betap_range': [1, 2], 'blur_kernel_size2': 21, 'kernel_list2': ['iso', 'aniso'],
                 'kernel_prob2': [0.5, 0.5], 'sinc_prob2': 0.1, 'blur_sigma2': [0.2, 1.5],
                 'betag_range2': [0.5, 4], 'betap_range2': [1, 2], 'final_sinc_prob': 0.8}
    else:
        train = {'name': 'train', 'type': 'PairedImageDataset', 'dataroot_gt': str(data / 'HR'),
                 'dataroot_lq': str(data / 'LRx4'), 'io_backend': {'type': 'disk'}, 'gt_size': 32,
                 'use_hflip': True, 'use_rot': False}
    train.update(num_worker_per_gpu=0, batch_size_per_gpu=2, dataset_enlarge_ratio=1, prefetch_mode=None)
    opt['datasets'] = {'train': train, 'val': val}
    path = tmp_path / f'{cls_name}.yml'
    path.write_text(yaml.safe_dump(opt))
    return path


@pytest.mark.parametrize('cls_name', MODELS)
def test_trains_through_iqa_plugin_train(cls_name, tmp_path):
    data = make_sr_folder(tmp_path / 'data', n=4, size=64)
    opt = _train_options(tmp_path, cls_name, data)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, '-m', 'iqa_plugin.cli', 'train', '-opt', str(opt)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    exp = tmp_path / 'experiments' / f'run_{cls_name}'
    log = next(exp.glob('train_*.log')).read_text()
    assert 'l_milo' in log and '# milo:' in log
    assert (exp / 'models' / 'net_g_best.pth').is_file() and (exp / 'training_states' / '3.state').is_file()
    assert 'skipped: no training step' in log  # BasicSR's final validation on unchanged weights


def test_realesrgan_init_mirror():
    """IQARealESRGANModel.__init__ mirrors BasicSR 1.4.2's RealESRGANModel.__init__ without its .cuda() calls
    (docs/architecture.md). When BasicSR changes that method, this fails: compare and update the mirror."""
    import basicsr
    from basicsr.models.realesrgan_model import RealESRGANModel

    src = inspect.getsource(RealESRGANModel.__init__)
    digest = hashlib.sha256(src.encode()).hexdigest()
    assert basicsr.__version__ == '1.4.2' and digest == \
        '9d8887b366b73c5e63036aaf257a1e9e2406cac5380bddbdd28fac0bd110affb', src


def _calls_super(fn):
    """``fn`` (an ast function) holds a call to an attribute of ``super()``: ``super().name(...)``."""
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Call)
               and isinstance(n.func.value.func, ast.Name) and n.func.value.func.id == 'super'
               for n in ast.walk(fn))


def _basicsr_body(cls, name):
    """Whether BasicSR's ``cls.name`` does something: not a stub (``pass`` / NotImplementedError) to implement."""
    fn = ast.parse(textwrap.dedent(inspect.getsource(vars(cls)[name]))).body[0]
    body = [n for n in fn.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    return not all(isinstance(n, (ast.Pass, ast.Raise)) for n in body)


def overrides_without_super(cls):
    """``{'Class.method'}`` for every method defined in a plugin class of ``cls``'s MRO that overrides a BasicSR
    method with a body (one in a BasicSR base of ``cls``) and calls no ``super().<name>(...)``; by AST."""
    basicsr = [c for c in cls.__mro__ if c.__module__.split('.')[0] == 'basicsr']
    found = set()
    for c in cls.__mro__:
        if c in basicsr or c is object:
            continue
        node = ast.parse(textwrap.dedent(inspect.getsource(c))).body[0]
        for fn in node.body:
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _calls_super(fn) and any(
                    fn.name in vars(b) and _basicsr_body(b, fn.name) for b in basicsr):
                found.add(f'{c.__qualname__}.{fn.name}')
    return found


# Overrides that replace BasicSR's method on purpose, each with its reason (the test fails when one goes away).
REPLACES_BASICSR = {
    'IQARealESRGANModel.__init__': "BasicSR's moves its JPEG/USM helpers to CUDA unconditionally; mirrored "
                                   '(test_realesrgan_init_mirror pins the source it mirrors)',
    'MetricTrainModel.get_optimizer': "BasicSR's builds Adam only; this one builds any torch.optim class by name",
}


def test_model_overrides_call_super():
    """Every method of every model module's classes (mixins included) that overrides a BasicSR method calls
    super(), found by AST over iqa_plugin/models/*.py, except the documented replacements above."""
    import importlib

    found, classes = set(), 0
    for path in sorted(Path(iqa_plugin.__file__).parent.joinpath('models').glob('*.py')):
        if path.stem == '__init__':
            continue
        module = importlib.import_module(f'iqa_plugin.models.{path.stem}')
        for cls in vars(module).values():
            if isinstance(cls, type) and cls.__module__ == module.__name__ and any(
                    c.__module__.split('.')[0] == 'basicsr' for c in cls.__mro__):
                classes += 1
                found |= overrides_without_super(cls)
    assert classes >= 10
    assert found == set(REPLACES_BASICSR), sorted(found ^ set(REPLACES_BASICSR))


class _NoSuperModel(SRModel):  # a model whose override drops BasicSR's work: what the check must catch
    def test(self):
        self.output = self.lq

    def feed_data(self, data):  # BasicSR's SRModel.feed_data has a body: also caught
        self.lq = data['lq']

    def save(self, epoch, current_iter):
        super().save(epoch, current_iter)


def test_override_check_can_fail():
    assert overrides_without_super(_NoSuperModel) == {'_NoSuperModel.test', '_NoSuperModel.feed_data'}


def _basicsr_cuda_seams():
    import basicsr.train as basicsr_train
    import basicsr.utils.options as options
    from basicsr.models.base_model import BaseModel
    return basicsr_train.load_resume_state, options.init_dist, BaseModel.__dict__['model_to_device']


def test_basicsr_patches_are_version_guarded(monkeypatch):
    """The one module that patches BasicSR refuses to patch a release it was not written against; what it
    patches without a GPU is the dist init and the resume loader, never ``BaseModel.model_to_device``."""
    import basicsr

    from iqa_plugin.basicsr_glue import dist

    monkeypatch.setattr(dist.torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(dist, '_enabled', False)
    monkeypatch.setattr(basicsr, '__version__', '9.9.9')
    before = _basicsr_cuda_seams()
    with pytest.warns(UserWarning, match='9.9.9'):
        dist.enable_cpu_distributed()
    assert _basicsr_cuda_seams() == before


def test_basicsr_patches_only_without_cuda(monkeypatch):
    import basicsr.train as basicsr_train
    import basicsr.utils.options as options

    from iqa_plugin.basicsr_glue import dist

    monkeypatch.setattr(basicsr_train, 'load_resume_state', basicsr_train.load_resume_state)  # restored after
    monkeypatch.setattr(options, 'init_dist', options.init_dist)
    before = _basicsr_cuda_seams()
    monkeypatch.setattr(dist.torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(dist, '_enabled', False)
    dist.enable_cpu_distributed()
    assert _basicsr_cuda_seams() == before  # a GPU: BasicSR's own code, unpatched
    monkeypatch.setattr(dist.torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr(dist, '_enabled', False)
    dist.enable_cpu_distributed()
    after = _basicsr_cuda_seams()
    assert after[0] is dist.load_resume_state_safe and after[1] is dist.init_dist_cpu_aware
    assert after[2] is before[2]  # model_to_device: the models' override, no class-wide patch


def test_every_plugin_model_builds_its_cpu_ddp(monkeypatch):
    """Every model the plugin registers gets ``CPUDistributedMixin.model_to_device`` through its MRO; it wraps
    in a CPU DDP (no device_ids) under DDP on a CPU and is BasicSR's method otherwise."""
    import torch.nn.parallel as parallel
    from basicsr.models.base_model import BaseModel
    from basicsr.utils.registry import MODEL_REGISTRY

    from iqa_plugin.basicsr_glue.dist import CPUDistributedMixin

    plugin = [cls for name, cls in MODEL_REGISTRY._obj_map.items()
              if cls.__module__.startswith('iqa_plugin.') and issubclass(cls, BaseModel)]  # not the factory
    assert len(plugin) >= 10
    for cls in plugin:
        assert cls.model_to_device is CPUDistributedMixin.model_to_device, cls.__name__
        assert cls.__mro__.index(CPUDistributedMixin) < cls.__mro__.index(BaseModel), cls.__name__
    from iqa_plugin.models import nriqa_finetune_model as ft
    for cls in (ft.NRIQAFinetuneSRModel, ft.NRIQAFinetuneGANModel, ft.NRIQAFinetuneMultiGTSRModel,
                ft.NRIQAFinetuneMultiGTGANModel):  # what the NRIQAFinetuneModel factory builds
        assert cls.model_to_device is CPUDistributedMixin.model_to_device, cls.__name__

    built = []

    class FakeDDP(torch.nn.Module):
        def __init__(self, net, **kwargs):
            super().__init__()
            built.append(kwargs)
            self.module = net

    monkeypatch.setattr(parallel, 'DistributedDataParallel', FakeDDP)
    model = object.__new__(plugin[0])
    model.device = torch.device('cpu')
    model.opt = {'dist': True, 'num_gpu': 0, 'find_unused_parameters': True}
    net = torch.nn.Linear(2, 2)
    assert isinstance(model.model_to_device(net), FakeDDP)
    assert built == [{'find_unused_parameters': True}]  # no device_ids
    model.opt = {'dist': False, 'num_gpu': 0}
    assert model.model_to_device(net) is net  # BasicSR's: .to(device) alone
