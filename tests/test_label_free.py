"""Label-free metric training: shipped milo-pseudomos / nr-lite weights and the two BasicSR models."""
import json

import numpy as np
import pytest
import torch

import iqa_plugin  # noqa: F401
from iqa_plugin import weights as wm
from iqa_plugin.labels.augment import random_crop_group
from iqa_plugin.utils.ranking import correlation_report, group_plcc_loss, pairwise_rank_loss, plcc, srcc
from iqa_plugin.scoring import create_metric

SHIPPED = ('milo-pseudomos', 'nr-lite')


# ---------------------------------------------------------------------------------------- helpers
def test_correlations_match_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    y[:10] = y[10]  # ties
    assert srcc(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-9)
    assert plcc(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-9)
    with pytest.raises(ValueError, match='differ in length'):
        srcc(x, y[:3])
    rep = correlation_report(np.array([[1., 2., 3.], [3., 2., 1.]]), np.array([[1., 2., 3.], [1., 2., 3.]]),
                             np.array([[0, 1, 2], [0, 1, 2]]))
    assert rep['srcc_group'] == pytest.approx(0.0) and rep['srcc_tier'] == pytest.approx(0.0)


def test_rank_losses_prefer_the_right_order():
    target = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    good, bad = target * 0.1, -target * 0.1
    assert pairwise_rank_loss(good, target) < pairwise_rank_loss(bad, target)
    assert group_plcc_loss(good, target) == pytest.approx(0.0, abs=1e-5)
    assert group_plcc_loss(bad, target) == pytest.approx(2.0, abs=1e-5)
    # scale free: multiplying the scores does not change the loss
    assert pairwise_rank_loss(good * 7, target) == pytest.approx(float(pairwise_rank_loss(good, target)), rel=1e-4)
    with pytest.raises(ValueError, match='must both be'):
        pairwise_rank_loss(good, target[0])
    ref, dist = torch.rand(2, 3, 20, 20), torch.rand(2, 4, 3, 20, 20)
    r, d = random_crop_group(ref, dist, 8)
    assert r.shape == (2, 3, 8, 8) and d.shape == (2, 4, 3, 8, 8)


# ---------------------------------------------------------------------------------------- shipped weights
@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_weights_load_offline_and_match_manifest(name):
    entry = wm.get_entry(name)
    path = wm.PACKAGE_WEIGHTS_DIR / entry.filename
    assert path.is_file(), f'{path} is not shipped'
    with open(wm.MANIFEST, encoding='utf-8') as f:
        record = json.load(f)[entry.filename]
    assert record['sha256'] == wm.sha256sum(path)
    assert 'iqa-plugin train -opt options/metrics/' in record['command']
    assert (wm.PACKAGE_WEIGHTS_DIR / record['log']).is_file()
    assert wm.status(name)[2] == 'ok'
    assert path.stat().st_size < 2 * 2 ** 20  # small plain state dict
    sd = wm.load_state_dict(path)
    assert not any(k in sd for k in ('params', 'params_ema', 'optimizers'))
    scorer = create_metric(name)  # conftest: offline, empty torch home
    x = torch.rand(2, 3, 64, 64)
    out = scorer(x, x.flip(-1)) if scorer.kind == 'fr' else scorer(x)
    primary = next(iter(out.values()))
    assert primary.shape == (2,) and torch.isfinite(primary).all()


def test_shipped_milo_uses_official_layout():
    sd = wm.load_state_dict(wm.PACKAGE_WEIGHTS_DIR / 'milo_pseudomos.pth')
    assert 'mask_finder_1.netBasic.0.weight' in sd and 'scaler_network.model.0.weight' in sd


def _held_out_images(size=96):
    """Centre crops of scikit-image's bundled photos (in its wheel, so every clone has them; never used to
    train the shipped weights): astronaut, coffee, rocket."""
    from skimage import data

    out = []
    for name in ('astronaut', 'coffee', 'rocket'):
        img = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float() / 255.0
        h, w = img.shape[-2:]
        out.append(img[:, (h - size) // 2:(h + size) // 2, (w - size) // 2:(w + size) // 2].contiguous())
    return out


def _severity_srcc(scorer):
    """Chains of 5 increasingly strong versions (same operations) of the held-out images, 3 images x 4 plans:
    the SRCC of the score (badness) with the severity, one per chain."""
    from iqa_plugin.labels.distortions import DistortionEngine

    eng = DistortionEngine(seed=0)
    rhos = []
    for ref in _held_out_images():
        for seed in range(4):
            dist, _, _ = eng.make_tiers_tensor(ref, 5, rng=np.random.default_rng(100 + seed))
            dist = dist.clamp(0, 1)
            with torch.no_grad():
                if scorer.kind == 'fr':
                    s = scorer(dist, ref.expand_as(dist))['quality_score']
                else:
                    s = -next(iter(scorer(dist).values()))  # badness
            rhos.append(srcc(s.numpy(), np.arange(5)))
    return rhos


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_models_rank_severity(name):
    """The mean SRCC of the shipped score with the severity must exceed 0.6 (measured: milo-pseudomos 1.0,
    nr-lite 0.84). A random-weight MILO ranks these chains as well (any growing distance does), so for
    milo-pseudomos this is a sanity check only; nr-lite with random weights fails it (next test)."""
    rhos = _severity_srcc(create_metric(name))
    assert np.mean(rhos) > 0.6, rhos


def test_untrained_nr_lite_does_not_rank_severity(tmp_path):
    """The check above fails for the nr-lite architecture with random weights (seeds 0-3 measured: mean SRCC
    0.23, -0.34, 0.15, 0.08), so passing it says something about the training."""
    from iqa_plugin.archs.nr_lite_arch import NRLite

    torch.manual_seed(0)
    path = tmp_path / 'nr_lite_random.pth'
    torch.save(NRLite().state_dict(), path)
    rhos = _severity_srcc(create_metric('nr-lite', weights_path=str(path)))
    assert np.mean(rhos) < 0.6, rhos


# ---------------------------------------------------------------------------------------- tiny trainings
@pytest.fixture(scope='module')
def tiny_batch(tmp_path_factory):
    import cv2

    from basicsr.data import build_dataset
    from conftest import smooth_image

    root = tmp_path_factory.mktemp('imgs')
    for i in range(2):
        cv2.imwrite(str(root / f'{i}.png'), smooth_image(40, 40, seed=i)[..., ::-1])
    ds = build_dataset({'name': 'tiny', 'type': 'PseudoMOSDataset', 'phase': 'train', 'dataroot': str(root),
                        'patch_size': 32, 'group_size': 4, 'chains': 2, 'length': 2, 'return_maps': False,
                        'seed': 0, 'members': ['gmsd', 'nlpd']})
    items = [ds[i] for i in range(2)]
    return {k: torch.stack([it[k] for it in items]) for k in ('ref', 'dist', 'pmos', 'tier', 'raw')}


@pytest.mark.parametrize('model_type,net', [('MILOPseudoMOSModel', {'type': 'MILO', 'weights': None}),
                                            ('NRLiteModel', {'type': 'NRLite', 'channels': [8, 8, 16, 16, 16],
                                                             'hidden': 16})])
def test_tiny_training_decreases_loss(tmp_path, tiny_batch, model_type, net):
    from conftest import build_label_free_model

    torch.manual_seed(0)
    model = build_label_free_model(tmp_path, model_type, net)
    assert all(not p.requires_grad for p in model.net_g_ema.parameters())
    losses = []
    for i in range(8):
        model.feed_data(tiny_batch)
        model.optimize_parameters(i)
        losses.append(float(model.log_dict['l_total']))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-2:]) < losses[0], losses
    model.save(0, 8)
    plain = tmp_path / f'{model.plain_prefix}_8.pth'
    assert plain.is_file() and (tmp_path / 'net_g_8.pth').is_file()
    # the plain export loads through the scoring table's factory
    name = 'milo-pseudomos' if model_type == 'MILOPseudoMOSModel' else 'nr-lite'
    scorer = create_metric(name, weights_path=str(plain))
    x = torch.rand(1, 3, 32, 32)
    out = scorer(x, x) if scorer.kind == 'fr' else scorer(x)
    assert torch.isfinite(next(iter(out.values()))).all()


def test_export_keeps_other_manifest_entries(tmp_path):
    from iqa_plugin.weights.export import export

    other = dict(wm.read_manifest()['relational.pth'])
    (tmp_path / 'manifest.json').write_text(json.dumps({'relational.pth': other}))
    log = tmp_path / 'run.log'
    log.write_text('training log\n')
    src = wm.PACKAGE_WEIGHTS_DIR / 'nr_lite.pth'
    dest, record = export('nr-lite', src, log=log, command='iqa-plugin train -opt x.yml', out_dir=tmp_path)
    data = json.loads((tmp_path / 'manifest.json').read_text())
    assert data['relational.pth'] == other
    assert data['nr_lite.pth']['sha256'] == wm.sha256sum(dest) == record['sha256']
    assert (tmp_path / 'nr_lite_train.log').read_text() == 'training log\n'
    with pytest.raises(wm.WeightsError, match="fit the 'milo-pseudomos' network"):
        export('milo-pseudomos', src, log=log, command='c', out_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        export('nr-lite', tmp_path / 'missing.pth', log=log, command='c', out_dir=tmp_path)


# ---------------------------------------------------------------------------------------- shared model base
def test_metric_train_base_optimizer_step_and_validation_record():
    from iqa_plugin.models.metric_train_base import MetricTrainModel

    model = MetricTrainModel({'num_gpu': 0, 'is_train': True, 'dist': False,
                              'val': {'metrics': {'err': {'better': 'lower'}}}})
    w = torch.nn.Parameter(torch.ones(3))
    block = {'type': 'SGD', 'lr': 0.5, 'momentum': 0.0}
    opt = model.build_optimizer(block, [w])
    assert isinstance(opt, torch.optim.SGD) and block['type'] == 'SGD'  # the option block is not consumed
    assert isinstance(model.build_optimizer({'lr': 1e-3}, [w]), torch.optim.Adam)
    for bad in ('Nope', 'Optimizer', 'lr_scheduler'):
        with pytest.raises(ValueError, match=f"unknown optimizer type '{bad}'"):
            model.get_optimizer(bad, [w], 1e-3)
    model.optimizers.append(opt)
    model.zero_grad()
    model.apply_losses({'l_a': (w * w).sum(), 'l_b': w.sum()}, 1)  # grad 2w + 1 = 3
    assert torch.allclose(w.detach(), torch.full((3,), -0.5))
    assert set(model.log_dict) == {'l_a', 'l_b', 'l_total'} and model.log_dict['l_total'] == pytest.approx(6.0)
    model.zero_grad()
    with pytest.raises(FloatingPointError, match="'l_a': nan"):
        model.apply_losses({'l_a': w.sum() * float('nan')}, 2)
    for it, (err, acc) in enumerate([(0.5, 0.2), (0.7, 0.9), (0.6, 0.1)], 1):
        model.metric_results = {'err': err, 'acc': acc}
        model.record_validation('val', it, None, 'Validation val')
    best = model.best_metric_results['val']
    assert (best['err']['better'], best['err']['val'], best['err']['iter']) == ('lower', 0.5, 1)
    assert (best['acc']['better'], best['acc']['val'], best['acc']['iter']) == ('higher', 0.9, 2)
