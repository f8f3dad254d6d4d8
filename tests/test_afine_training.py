"""A-FINE training as a BasicSR plugin model on a tiny synthetic pairwise set (made at test time).

Records: a smooth reference and two noisy versions of it (noise std 0.02 and 0.12, random order);
label = P(img1 better) = 1 when img1 is the less noisy one. A tiny CLIP ViT (width 64, 2 blocks,
16 px patches) keeps every step in the milliseconds.
"""
import json
import logging
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

import iqa_plugin  # noqa: F401
from iqa_plugin.archs.afine_arch import AFINE
from iqa_plugin.data.pairwise_iqa_dataset import PairwiseIQADataset, read_pairwise_meta
from iqa_plugin.models.afine_model import AFINEModel

REPO = Path(__file__).resolve().parents[1]
TINY_VIT = {'width': 64, 'layers': 2, 'patch_size': 16, 'grid': 4}


def _smooth(rng, size):
    small = rng.uniform(0, 255, size=(size // 8, size // 8, 3)).astype(np.float32)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def make_pairwise_set(root, n, seed, size=32, weak=0.02, strong=0.12):
    """n records under root/images, meta root/<meta>.csv; returns the meta path."""
    rng = np.random.default_rng(seed)
    img_dir = Path(root) / 'images'
    img_dir.mkdir(parents=True, exist_ok=True)
    lines = ['ref,img1,img2,label']
    for i in range(n):
        ref = _smooth(rng, size)
        versions = [np.clip(ref + rng.normal(0, s * 255, ref.shape), 0, 255) for s in (weak, strong)]
        first_weak = bool(rng.integers(0, 2))
        img1, img2 = versions if first_weak else versions[::-1]
        stem = f's{seed}_r{i}'
        for name, img in ((f'{stem}.png', ref), (f'{stem}_a.png', img1), (f'{stem}_b.png', img2)):
            cv2.imwrite(str(img_dir / name), np.clip(img, 0, 255).astype(np.uint8))
        lines.append(f'{stem}.png,{stem}_a.png,{stem}_b.png,{1.0 if first_weak else 0.0}')
    meta = Path(root) / f'meta_{seed}.csv'
    meta.write_text('\n'.join(lines) + '\n')
    return meta


def model_opt(tmp_path, stage, lr, weights_path=None):
    return {
        'name': f'afine_s{stage}', 'model_type': 'AFINEModel', 'num_gpu': 0, 'is_train': True, 'dist': False,
        'rank': 0, 'world_size': 1,
        'network_afine': {'type': 'AFINE', 'weights': 'none', 'weights_path': weights_path, 'clip_weights': 'none',
                          'vit': TINY_VIT, 'hidden_dim': 16},
        'path': {'models': str(tmp_path / 'models'), 'training_states': str(tmp_path / 'states')},
        'train': {'stage': stage, 'optim': {'type': 'AdamW', 'lr': lr, 'weight_decay': 0.0},
                  'total_iter': 100},
        'val': {'metrics': {'acc': {'type': 'calculate_2afc_accuracy'},
                            'fid': {'type': 'calculate_pairwise_fidelity', 'better': 'lower'}}},
    }


pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp('pairs')
    train = make_pairwise_set(root, 24, seed=1)
    val = make_pairwise_set(root, 12, seed=2)
    return root / 'images', train, val


def _loaders(pairs, batch=8):
    images, train, val = pairs
    tr = PairwiseIQADataset({'dataroot': str(images), 'meta_file': str(train), 'phase': 'train', 'use_hflip': True,
                             'use_rot': True})
    va = PairwiseIQADataset({'name': 'val', 'dataroot': str(images), 'meta_file': str(val), 'phase': 'val'})
    g = torch.Generator().manual_seed(0)
    return DataLoader(tr, batch_size=batch, shuffle=True, generator=g), DataLoader(va, batch_size=12)


def _train(model, loader, steps):
    losses, it = [], 0
    while it < steps:
        for batch in loader:
            model.feed_data(batch)
            model.optimize_parameters(it)
            losses.append(model.log_dict['l_total'])
            it += 1
            if it == steps:
                break
    return losses


def _metrics(model, val_loader):
    from iqa_plugin.metrics.afine_metric import calculate_2afc_accuracy, calculate_pairwise_fidelity

    data = model.evaluate(val_loader)
    return calculate_2afc_accuracy(**data), calculate_pairwise_fidelity(**data)


def test_stage1_loss_falls_and_accuracy_rises(pairs, tmp_path):
    torch.manual_seed(0)
    random.seed(0)  # the dataset's flips
    model = AFINEModel(model_opt(tmp_path, stage=1, lr=5e-4))
    head = model.net_afine.natural.proj_head[2]
    with torch.no_grad():  # start from "no preference": every pair tied, accuracy exactly 0.5
        head.weight.zero_()
        head.bias.zero_()
    train_loader, val_loader = _loaders(pairs)
    acc0, fid0 = _metrics(model, val_loader)
    assert acc0 == 0.5
    clip0 = model.net_afine.clip.conv1.weight.detach().clone()
    fid_head0 = model.net_afine.fidelity.alpha.detach().clone()
    losses = _train(model, train_loader, 40)
    acc1, fid1 = _metrics(model, val_loader)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses
    assert acc1 >= 0.9 and acc1 > acc0, (acc0, acc1)
    assert fid1 < fid0
    assert not torch.equal(model.net_afine.clip.conv1.weight, clip0)  # stage 1 fine-tunes CLIP
    assert torch.equal(model.net_afine.fidelity.alpha, fid_head0)  # and nothing of the fidelity term


@pytest.mark.parametrize('stage', [2, 3])
def test_stages_2_and_3_train_only_their_parameters(pairs, tmp_path, stage):
    torch.manual_seed(0)
    random.seed(0)
    model = AFINEModel(model_opt(tmp_path, stage=stage, lr=1e-2))
    net = model.net_afine
    trained = {2: ['fidelity.'], 3: ['natural_scale.', 'fidelity_scale.', 'adapter.']}[stage]
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    train_loader, val_loader = _loaders(pairs)
    losses = _train(model, train_loader, 12)
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3])
    for k, v in net.state_dict().items():
        changed = not torch.equal(v, before[k])
        should = any(k.startswith(p) for p in trained) and k not in ('natural.mean', 'natural.std', 'fidelity.mean',
                                                                     'fidelity.std')
        assert changed == should, (k, changed)
    acc, fid = _metrics(model, val_loader)
    assert 0 <= acc <= 1 and np.isfinite(fid)


def test_checkpoint_layout_loads_into_scorer(pairs, tmp_path):
    torch.manual_seed(0)
    model = AFINEModel(model_opt(tmp_path, stage=1, lr=1e-3))
    (tmp_path / 'models').mkdir()
    (tmp_path / 'states').mkdir()
    model.save(epoch=0, current_iter=3)
    layout = tmp_path / 'models' / 'afine_3.pth'
    assert layout.is_file() and (tmp_path / 'models' / 'net_afine_3.pth').is_file()
    scorer = AFINE(weights_path=str(layout), clip_weights='none')
    d, r = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a, b = scorer(d, r), model.net_afine.eval()(d, r)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a later stage starts from it (network_afine.weights_path) or from our checkpoint (pretrain_network_afine)
    m2 = AFINEModel(model_opt(tmp_path, stage=2, lr=1e-3, weights_path=str(layout)))
    opt3 = model_opt(tmp_path, stage=3, lr=1e-3)
    opt3['path']['pretrain_network_afine'] = str(tmp_path / 'models' / 'net_afine_3.pth')
    m3 = AFINEModel(opt3)
    for m in (m2, m3):
        for k, v in model.net_afine.state_dict().items():
            assert torch.equal(m.net_afine.state_dict()[k], v), k


def test_pairwise_meta_formats(tmp_path):
    (tmp_path / 'h.csv').write_text('reference,a,b,gt_score,gt_score_1ref\nr.png,x.png,y.png,0.5,1\n')
    (tmp_path / 'n.csv').write_text('x.png,y.png,r.png,1,0,0.5\n')  # A-FINE/DiffIQA triplet order
    (tmp_path / 'j.json').write_text(json.dumps([{'ref': 'r.png', 'img1': 'x.png', 'img2': 'y.png', 'label': 0}]))
    h, n, j = (read_pairwise_meta(tmp_path / f) for f in ('h.csv', 'n.csv', 'j.json'))
    assert h[0]['ref'] == 'r.png' and h[0]['label'] == 0.5 and h[0]['label_1ref'] == 1.0
    assert np.isnan(h[0]['label_2ref'])
    assert n[0] == {'ref': 'r.png', 'img1': 'x.png', 'img2': 'y.png', 'label': 1.0, 'label_1ref': 0.0,
                    'label_2ref': 0.5}
    assert j[0]['label'] == 0.0 and j[0]['img2'] == 'y.png'
    (tmp_path / 'bad.csv').write_text('ref,img1,img2,label\nr.png,x.png,y.png,2\n')
    with pytest.raises(ValueError, match=r'bad\.csv line 2.*outside \[0, 1\]'):
        read_pairwise_meta(tmp_path / 'bad.csv')
    (tmp_path / 'short.csv').write_text('x.png,y.png\n')
    with pytest.raises(ValueError, match='short.csv line 1'):
        read_pairwise_meta(tmp_path / 'short.csv')
    with pytest.raises(FileNotFoundError):
        read_pairwise_meta(tmp_path / 'missing.csv')


def test_dataset_items_and_size_checks(pairs, tmp_path):
    images, train, _ = pairs
    ds = PairwiseIQADataset({'dataroot': str(images), 'meta_file': str(train), 'phase': 'val', 'gt_size': 16})
    item = ds[0]
    assert item['img1'].shape == item['img2'].shape == item['ref'].shape == (3, 16, 16)
    assert 0 <= float(item['img1'].min()) and float(item['img1'].max()) <= 1
    assert float(item['label']) in (0.0, 1.0) and torch.isnan(item['label_1ref'])
    big = PairwiseIQADataset({'dataroot': str(images), 'meta_file': str(train), 'phase': 'val', 'gt_size': 64})
    with pytest.raises(ValueError, match='smaller than gt_size'):
        big[0]
    cv2.imwrite(str(tmp_path / 'odd.png'), np.zeros((20, 24, 3), np.uint8))
    (tmp_path / 'm.csv').write_text(f'ref,img1,img2,label\n{images}/s1_r0.png,{tmp_path}/odd.png,{images}/s1_r0_b.png,1\n')
    with pytest.raises(ValueError, match='differ in size'):
        PairwiseIQADataset({'meta_file': str(tmp_path / 'm.csv'), 'dataroot': str(tmp_path)})[0]


def test_option_file_runs_with_basicsr(pairs, tmp_path, monkeypatch):
    """options/metrics/train_afine.yml, pointed at the labelled synthetic set with a tiny ViT, trains and validates."""
    from iqa_plugin.train import run

    images, train, val = pairs
    opt = yaml.safe_load((REPO / 'options' / 'metrics' / 'train_afine.yml').read_text())
    opt['name'] = 'afine_opt_test'
    opt['num_gpu'] = 0
    for phase, meta in (('train', train), ('val', val)):
        opt['datasets'][phase].pop('synthetic')
        opt['datasets'][phase].update(dataroot=str(images), meta_file=str(meta), gt_size=32)
    opt['datasets']['train'].update(num_worker_per_gpu=0, batch_size_per_gpu=4)
    opt['network_afine'].update(weights='none', clip_weights='none', vit=TINY_VIT, hidden_dim=16)
    opt['train'].update(total_iter=4)
    opt['train']['optim']['lr'] = 1e-3
    opt['train']['scheduler'].update(periods=[4])
    opt['val']['val_freq'] = 2
    opt['logger'].update(print_freq=1, save_checkpoint_freq=2, use_tb_logger=False)
    path = tmp_path / 'train_afine.yml'
    path.write_text(yaml.safe_dump(opt))
    monkeypatch.chdir(tmp_path)
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger('basicsr')
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # the process-wide logger may have been set up quieter by earlier tests
    try:
        run(['-opt', str(path)], root_path=str(tmp_path))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    models = tmp_path / 'experiments' / 'afine_opt_test' / 'models'
    assert (models / 'afine_4.pth').is_file() and (models / 'net_afine_latest.pth').is_file()
    text = '\n'.join(records)
    assert 'acc_2afc' in text and 'fidelity' in text and 'l_pair' in text, text[-3000:]


def test_label_free_pairs_from_the_distortion_engine(tmp_path):
    rng = np.random.default_rng(3)
    for i in range(3):
        cv2.imwrite(str(tmp_path / f'c{i}.png'), _smooth(rng, 48).astype(np.uint8))
    opt = {'dataroot': str(tmp_path), 'synthetic': {'max_ops': 2, 'seed': 5}, 'gt_size': 32, 'phase': 'val'}
    ds = PairwiseIQADataset(opt)
    a, b = ds[1], PairwiseIQADataset(opt)[1]
    assert len(ds) == 3 and a['img1'].shape == (3, 32, 32) and torch.equal(a['img1'], b['img1'])  # fixed in val
    assert float(a['label']) in (0.0, 1.0) and float(a['label_1ref']) == 0.0
    mild, strong = (a['img1'], a['img2']) if float(a['label']) == 1.0 else (a['img2'], a['img1'])
    assert (mild - a['ref']).abs().mean() < (strong - a['ref']).abs().mean()  # the milder tier is closer
    with pytest.raises(ValueError, match='unknown key'):
        PairwiseIQADataset({**opt, 'synthetic': {'levels': 3}})
    with pytest.raises(ValueError, match='either meta_file'):
        PairwiseIQADataset({**opt, 'meta_file': str(tmp_path / 'm.csv')})
    with pytest.raises(ValueError, match='needs meta_file'):
        PairwiseIQADataset({'dataroot': str(tmp_path)})


def test_shipped_option_file_loads_label_free_data(shared_dir, monkeypatch):
    """The shipped file's datasets (../shared images, synthetic pairs) build and give valid items."""
    from basicsr.data import build_dataset

    opt = yaml.safe_load((REPO / 'options' / 'metrics' / 'train_afine.yml').read_text())
    monkeypatch.chdir(REPO)
    for phase in ('train', 'val'):
        ds = build_dataset({**opt['datasets'][phase], 'phase': phase})
        item = ds[0]
        assert item['img1'].shape == item['ref'].shape == (3, 224, 224)
