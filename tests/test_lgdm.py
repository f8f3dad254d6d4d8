"""LGDM metric (iqa_plugin/archs/lgdm_arch.py) on a tiny randomly initialised diffusers U-Net/VAE.

The tiny configuration (``lgdm_arch.TINY_*_CONFIG``: VAE factor 8 like SD 1.x) is built at test time,
saved with ``save_pretrained`` and loaded through ``sd_path``; nothing is downloaded. Tests that need
diffusers are skipped where it is not installed (CI installs it with the ``test`` extra).
"""
import importlib.util
import subprocess
import sys

import pytest
import torch

from iqa_plugin import weights as wm
from iqa_plugin.archs import lgdm_arch
from iqa_plugin.scoring import create_metric, get_spec

needs_diffusers = pytest.mark.skipif(importlib.util.find_spec('diffusers') is None,
                                     reason='diffusers is not installed (pip install diffusers)')
FAST = dict(timesteps=(20, 40), ddim_steps=1, ddim_stride=10, guidance_metric='mse')


@pytest.fixture(scope='module')
def sd_folder(tmp_path_factory):
    diffusers = pytest.importorskip('diffusers', reason='diffusers is not installed (pip install diffusers)')
    folder = tmp_path_factory.mktemp('tiny_sd')
    unet, vae, _ = lgdm_arch.random_components('tiny', seed=0)
    unet.save_pretrained(folder / 'unet')
    vae.save_pretrained(folder / 'vae')
    diffusers.DDIMScheduler(**lgdm_arch.SD1_SCHEDULE).save_pretrained(folder / 'scheduler')
    return folder


@pytest.fixture(scope='module')
def extractor(sd_folder):
    return lgdm_arch.build_feature_extractor('cpu', str(sd_folder), **FAST)


def _images(n, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, h // 8, w // 8, generator=g)
    base = torch.nn.functional.interpolate(base, size=(h, w), mode='bilinear', align_corners=False)
    noise = torch.randn(n, 3, h, w, generator=g)
    level = torch.linspace(0.0, 0.3, n).view(n, 1, 1, 1)
    return (base + level * noise).clamp(0, 1), level.flatten()


def test_diffusers_is_optional(monkeypatch):
    out = subprocess.run([sys.executable, '-c', "import sys, iqa_plugin, iqa_plugin.archs.lgdm_arch; "
                          "print('diffusers' in sys.modules)"], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == 'False'
    monkeypatch.setitem(sys.modules, 'diffusers', None)
    with pytest.raises(ImportError, match=r'pip install diffusers') as e:
        lgdm_arch.build_lgdm_scorer(pretrained=False)
    assert '\n' not in str(e.value)


def test_table_row():
    spec = get_spec('lgdm')
    assert (spec.kind, spec.lower_better, spec.min_size, spec.loss_capable) == ('nr', False, 64, False)


@needs_diffusers
def test_shapes_padding_and_seed(sd_folder, extractor):
    assert extractor.pad_multiple == 16  # VAE factor 8 x U-Net factor 2
    scorer = lgdm_arch.build_lgdm_scorer(sd_path=str(sd_folder), pretrained=False, **FAST)
    x, _ = _images(2, 70, 90)  # not multiples of 8 or 16: reflection-padded to 80 x 96
    out = scorer(x)
    assert list(out) == ['lgdm'] and out['lgdm'].shape == (2,) and torch.isfinite(out['lgdm']).all()
    f = extractor(x)
    n_blocks = 4  # down.1, mid, up.0, up.1
    assert f.shape == (2, extractor.dim) and extractor.dim == len(FAST['timesteps']) * (64 + 64 + 64 + 32)
    assert n_blocks == len(extractor.blocks)
    # deterministic and independent of the batch (per-image seeded noise); float32 reordering only
    tol = 1e-4 * float(f.abs().max())
    assert torch.allclose(extractor(x), f, rtol=0, atol=tol)
    assert torch.allclose(extractor(x[1:2]), f[1:2], rtol=0, atol=tol)
    with pytest.raises(ValueError, match='minimum side of 64'):
        scorer(torch.rand(1, 3, 40, 80))
    with pytest.raises(ValueError, match="unknown U-Net block 'up.5'"):
        lgdm_arch.build_feature_extractor('cpu', str(sd_folder), blocks=('up.5',), **FAST)


@needs_diffusers
def test_seed_changes_features(sd_folder, extractor):
    x, _ = _images(1)
    other = lgdm_arch.build_feature_extractor('cpu', str(sd_folder), seed=1, **FAST)
    a, b = extractor(x), other(x)
    assert (a - b).abs().max() > 1e-3 * a.abs().max()


@needs_diffusers
def test_guidance_changes_features(sd_folder, extractor):
    x, _ = _images(2)
    off = lgdm_arch.build_feature_extractor('cpu', str(sd_folder), **{**FAST, 'guidance_scale': 0.0})
    f_on, f_off = extractor(x), off(x)
    rel = float((f_on - f_off).abs().max() / f_off.abs().max())
    assert rel > 1e-3, rel
    # the project's MILO network as the perceptual distance (ships with the package, offline)
    milo = lgdm_arch.build_feature_extractor('cpu', str(sd_folder), **{**FAST, 'guidance_metric': 'milo-pseudomos'})
    z0 = milo.vae.encode(2 * x - 1).latent_dist.mean * milo.scaling_factor
    moved = milo.guide(z0, x)
    step = (moved - z0).pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert torch.allclose(step, torch.full_like(step, milo.guidance_scale), rtol=1e-4)  # RMS-normalised step
    with pytest.raises(ValueError, match='full-reference'):
        lgdm_arch.build_feature_extractor('cpu', str(sd_folder), **{**FAST, 'guidance_metric': 'nr-lite'})


@needs_diffusers
def test_regressor_training_and_weights_file(sd_folder, tmp_path):
    from iqa_plugin.models.lgdm_model import LGDMRegressorModel

    opt = {'name': 'lgdm_toy', 'num_gpu': 0, 'dist': False, 'is_train': True, 'model_type': 'LGDMRegressorModel',
           'lgdm': {'sd_path': str(sd_folder), **FAST, 'timesteps': [20, 40], 'feature_batch': 8},
           'network_g': {'type': 'LGDMRegressor', 'regressor': 'linear'},
           'path': {'models': str(tmp_path), 'pretrain_network_g': None},
           'train': {'target_range': [0.0, 0.3], 'rank_weight': 0.0, 'feature_cache': str(tmp_path / 'f.pt'),
                     'optim_g': {'type': 'Adam', 'lr': 1e-2}}}
    model = LGDMRegressorModel(opt)
    calls = []
    forward = model.extractor.forward
    model.extractor.forward = lambda x: calls.append(x.shape[0]) or forward(x)
    x, level = _images(8)
    data = {'img': x, 'score': 0.3 - level, 'key': [f'im{i}' for i in range(8)]}  # quality falls with noise
    losses = []
    for it in range(80):
        model.feed_data(data)
        model.optimize_parameters(it)
        losses.append(float(model.log_dict['l_mse']))
    assert calls == [8]  # features extracted once, then cached
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    # held-out validation: SRCC/PLCC of the predictions in metric_results (and the log)
    loader = type('Loader', (list,), {})([data])
    loader.dataset = type('DS', (), {'opt': {'name': 'toy_val'}})()
    model.nondist_validation(loader, 80, None)
    assert model.metric_results['srcc'] > 0.9 and set(model.metric_results) == {'srcc', 'plcc', 'rmse'}
    # pseudo-MOS groups: reference first, quality = -pmos, the reference ref_margin above its best version
    group = {'ref': x[:1], 'dist': x[1:4][None], 'pmos': level[1:4][None], 'ref_path': ['r.png'],
             'index': torch.tensor([0])}
    model.feed_data(group)
    assert model.feat.shape == (4, model.extractor.dim)
    want_q = torch.cat([-level[1:2] + 1.0, -level[1:4]]) / 0.3
    assert torch.allclose(model.target, want_q, atol=1e-6)
    model.save_feature_cache()
    assert (tmp_path / 'f.pt').is_file()
    path = model.save_plain(80)
    scorer = lgdm_arch.build_lgdm_scorer(weights_path=path)
    model.net_g.eval()
    model.feed_data(data)  # cached features of the 8 training images
    with torch.no_grad():
        want = model.net_g(model.feat)
    got = scorer(x)['lgdm']
    assert torch.allclose(got, want, rtol=0, atol=1e-4 * float(want.abs().max()) + 1e-6)
    with pytest.raises(ValueError, match='was trained with timesteps'):
        lgdm_arch.build_lgdm_scorer(weights_path=path, timesteps=(30,))


def test_mos_csv_dataset(tmp_path):
    import cv2
    import numpy as np

    from iqa_plugin.data.mos_csv_dataset import MOSCSVDataset

    for i in range(10):
        cv2.imwrite(str(tmp_path / f'{i}.png'), np.full((40, 50, 3), 20 * i, np.uint8))
    (tmp_path / 'mos.csv').write_text('image_name,MOS\n' + ''.join(f'{i}.png,{i / 2}\n' for i in range(10)))
    opt = {'csv': str(tmp_path / 'mos.csv'), 'crop_size': 32, 'val_ratio': 0.3}
    tr, va = MOSCSVDataset({**opt, 'split': 'train'}), MOSCSVDataset({**opt, 'split': 'val'})
    names = sorted(n for n, _ in tr.rows + va.rows)
    assert len(va) == 3 and names == sorted(f'{i}.png' for i in range(10))
    item = va[0]
    assert item['img'].shape == (3, 32, 32) and item['score'].dtype == torch.float32
    (tmp_path / 'bad.csv').write_text('image_name,score\n0.png,1\n')
    with pytest.raises(ValueError, match="no column 'MOS'"):
        MOSCSVDataset({**opt, 'csv': str(tmp_path / 'bad.csv')})


@needs_diffusers
def test_missing_sd_weights_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hfc

    monkeypatch.setenv('IQA_PLUGIN_OFFLINE', '1')
    monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(tmp_path / 'w'))
    monkeypatch.setattr(hfc, 'HF_HUB_CACHE', str(tmp_path / 'hf'))
    with pytest.raises(wm.WeightsError) as e:
        lgdm_arch.build_lgdm_scorer(pretrained=False, **FAST)
    msg = str(e.value)
    assert '\n' not in msg and 'offline' in msg and str(tmp_path / 'w' / 'stable-diffusion-v1-5') in msg
    assert 'huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5' in msg
    with pytest.raises(wm.WeightsError, match='lacks unet/config.json'):
        lgdm_arch.resolve_sd_folder(str(tmp_path))
    with pytest.raises(wm.WeightsError, match='needs a trained regressor'):
        create_metric('lgdm')


def test_preflight_resolves_the_sd_folder(monkeypatch, tmp_path):
    """The option pre-flight sees lgdm's Stable Diffusion folder and regressor file before anything is written."""
    pytest.importorskip('diffusers')
    from iqa_plugin import scoring
    from iqa_plugin.basicsr_glue.options_check import OptionError, check_options

    monkeypatch.setenv('IQA_PLUGIN_OFFLINE', '1')
    ok, reason = scoring.available_offline('lgdm', pretrained=False, sd_path=str(tmp_path / 'no_sd'))
    assert not ok and 'no_sd' in reason
    opt = {'model_type': 'IQASRModel',
           'val': {'metrics': {'q': {'type': 'calculate_iqa', 'metric': 'lgdm', 'sd_path': str(tmp_path / 'no_sd'),
                                     'pretrained': False}}}}
    with pytest.raises(OptionError, match='no_sd'):
        check_options(opt)
