"""Offline NR scorers must rate degenerate images (flat, constant, black/white, pure noise, heavy blur,
posterised) below clean photos. Images are made at test time: scikit-image's bundled photos,
centre-cropped and resized to 192 px (not the held-out set of docs/scripts/eval_nr_offline.py).

``niqe-fitted`` (the NIQE pristine model fitted on ../shared's training photos) must keep the ordering for
every kind but heavy blur (its known failure, pinned by a strict test); the shipped ``nr-lite`` (0.2.0) must
keep it for every kind (0.1.0 rated black and flat grey above photos), and the same architecture untrained
must fail it.
"""
import math

import numpy as np
import pytest
import torch

import iqa_plugin  # noqa: F401
from iqa_plugin.archs.niqe_fitted_arch import NIQEFitted, build_niqe_fitted_scorer
from iqa_plugin.scoring.scorer import NRScorer, score_candidates
from iqa_plugin.scoring import get_cached_metric

SIZE = 192
PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket')
DEGENERATE = ('black', 'white', 'grey', 'flat_colour', 'pure_noise', 'blur_s8', 'posterised')


def _photo(name):
    from skimage import data
    from skimage.transform import resize

    a = getattr(data, name)().astype(np.float32) / 255.0
    h, w = a.shape[:2]
    s = min(h, w)
    a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return resize(a, (SIZE, SIZE), order=3, anti_aliasing=True).clip(0, 1).astype(np.float32)


@pytest.fixture(scope='module')
def images():
    from scipy.ndimage import gaussian_filter

    pytest.importorskip('skimage')
    clean = {n: _photo(n) for n in PHOTOS}
    ref = clean['astronaut']
    rng = np.random.default_rng(0)
    shape = ref.shape
    degen = {'black': np.zeros(shape, np.float32), 'white': np.ones(shape, np.float32),
             'grey': np.full(shape, 0.5, np.float32),
             'flat_colour': np.broadcast_to(np.array([0.8, 0.3, 0.2], np.float32), shape).copy(),
             'pure_noise': rng.random(shape, dtype=np.float32),
             'blur_s8': gaussian_filter(ref, sigma=(8, 8, 0), mode='reflect').astype(np.float32),
             'posterised': (np.round(ref * 2) / 2).astype(np.float32)}
    to_t = lambda d: torch.from_numpy(np.stack(list(d.values()))).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return list(clean), to_t(clean), list(degen), to_t(degen)


def violations(scorer, images, only=None):
    """Degenerate images scoring at or above the lowest clean photo: [(name, quality, lowest clean)]."""
    _, clean, degen_names, degen = images
    q_clean = score_candidates(scorer, clean.unsqueeze(0), chunk_size=4)[0]
    q_degen = score_candidates(scorer, degen.unsqueeze(0), chunk_size=4)[0]
    assert torch.isfinite(q_clean).all() and torch.isfinite(q_degen).all()
    lo = float(q_clean.min())
    return [(n, float(q), lo) for n, q in zip(degen_names, q_degen) if not float(q) < lo and n in (only or [n])]


# NIQE's blur response saturates: a sigma-8 blur of the astronaut scores 13.2, skimage's rocket photo (large
# smooth sky) 14.9 at 192 px; the eval table shows the same gap on held-out photos (docs/nriqa.md).
NIQE_KNOWN_FAILURES = {'blur_s8'}


@pytest.mark.parametrize('kind', DEGENERATE)
def test_niqe_fitted_ranks_degenerate_images_below_clean_photos(images, kind):
    if kind in NIQE_KNOWN_FAILURES:
        pytest.xfail('known limit (docs/nriqa.md): fitted NIQE rates a heavy blur above a smooth clean photo')
    assert violations(get_cached_metric('niqe-fitted'), images, only=[kind]) == []


def test_niqe_fitted_known_failure_is_still_a_failure(images):
    # strict counterpart of the xfail above: when NIQE (or its penalty) changes and blur passes, update the list
    assert {n for n, _, _ in violations(get_cached_metric('niqe-fitted'), images)} == NIQE_KNOWN_FAILURES


def test_nr_lite_ranks_degenerate_images_below_clean_photos(images):
    # nr-lite 0.1.0 failed this (black, white, grey, flat colour, blur and posterised above the photos)
    assert violations(get_cached_metric('nr-lite'), images) == []


def test_ordering_guard_fails_an_untrained_nr_lite(images):
    # the same check on the shipped architecture with random weights (its standardisation fitted on the
    # test photos, as the first training batches would do): it must not pass by accident
    from iqa_plugin.archs.nr_lite_arch import build_nr_lite_scorer
    from iqa_plugin.weights import resolve, load_state_dict

    config = load_state_dict(resolve('nr-lite')).get('config', {})
    torch.manual_seed(0)
    untrained = build_nr_lite_scorer(pretrained=False)
    net = type(untrained.net)(**config)
    if getattr(net, 'nss', None) is not None:
        net.train()(images[1])
    untrained.net = net.eval()
    assert violations(untrained, images) != []


def test_guard_catches_a_scorer_that_rewards_flat_images(images):
    # NIQE without the structureless-block penalty scores a flat image 0 = perfect: the guard must see it.
    scorer = get_cached_metric('niqe-fitted')
    broken = NRScorer('niqe-broken', NIQEFitted(scorer.net.mu_pris_param, scorer.net.cov_pris_param, flat_penalty=0.0),
                      lower_better=True, score_range=(0.0, 100.0), min_size=96, loss_capable=False)
    bad = {n for n, _, _ in violations(broken, images)}
    assert {'black', 'white', 'grey', 'flat_colour'} <= bad


def test_niqe_fitted_flat_and_partly_flat_images():
    scorer = get_cached_metric('niqe-fitted')
    flat = torch.full((2, 3, 192, 192), 0.25)
    s = scorer(flat)['niqe-fitted']
    assert torch.equal(s, torch.full((2,), scorer.net.flat_penalty))  # the documented value, not NaN / error
    half = flat[:1].clone()
    half[..., :, 96:] = torch.from_numpy(_photo('astronaut')).permute(2, 0, 1)[:, :, 96:]
    photo = torch.from_numpy(_photo('astronaut')).permute(2, 0, 1).unsqueeze(0)
    s_half, s_photo = scorer(half)['niqe-fitted'], scorer(photo)['niqe-fitted']
    assert math.isfinite(float(s_half)) and float(s_photo) < float(s_half) < scorer.net.flat_penalty + 100


def test_niqe_fitted_bad_input():
    scorer = build_niqe_fitted_scorer(pretrained=False)
    with pytest.raises(ValueError, match='smaller than the minimum side of 96'):
        scorer(torch.rand(1, 3, 95, 128))
    with pytest.raises(ValueError):
        scorer(torch.full((1, 3, 96, 96), float('nan')))
    with pytest.raises(ValueError, match='cannot be used as a loss'):
        build_niqe_fitted_scorer(pretrained=False, as_loss=True)


def test_hard_negatives_kinds_and_range():
    from iqa_plugin.models.nr_lite_model import HARD_KINDS, hard_negatives

    ref = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    kinds = torch.tensor([list(range(len(HARD_KINDS))), list(range(len(HARD_KINDS)))])
    hard = hard_negatives(ref, kinds, torch.Generator().manual_seed(1))
    assert hard.shape == (2, len(HARD_KINDS), 3, 40, 40) and 0 <= float(hard.min()) and float(hard.max()) <= 1
    by = dict(zip(HARD_KINDS, hard.unbind(1)))
    assert torch.equal(by['constant'][0], ref[0].mean(dim=(1, 2), keepdim=True).expand(3, 40, 40))
    assert set(by['black_white'].unique().tolist()) <= {0.0, 1.0}
    assert set(by['posterise'].unique().tolist()) <= {0.0, 0.5, 1.0}
    assert float(by['heavy_blur'].std()) < float(ref.std())


def test_nr_lite_training_with_hard_negatives_learns_to_rank_them_last(tmp_path):
    """A few steps of NRLiteModel with ``hard_weight`` (groups made by hand: noise of increasing strength
    on smooth patches, pseudo-MOS = the strength) lower the hard-negative loss."""
    from conftest import build_label_free_model, smooth_image

    torch.manual_seed(0)
    ref = torch.stack([torch.from_numpy(smooth_image(32, 32, seed=i).astype(np.float32) / 255.0).permute(2, 0, 1)
                       for i in range(2)])
    g = torch.Generator().manual_seed(0)
    dist = torch.stack([(ref + s * torch.randn(ref.shape, generator=g)).clamp(0, 1) for s in (0.02, 0.05, 0.1, 0.2)], 1)
    pmos = torch.tensor([[-1.5, -0.5, 0.5, 1.5]] * 2)
    batch = {'ref': ref, 'dist': dist, 'pmos': pmos, 'tier': torch.arange(4).repeat(2, 1), 'raw': pmos.unsqueeze(2) + 2}
    net = {'type': 'NRLite', 'channels': [8, 8, 16, 16, 16], 'hidden': 16}
    model = build_label_free_model(tmp_path, 'NRLiteModel', net, cross_weight=0.0, hard_weight=1.0, hard_per_group=6,
                                   total_iter=30)
    hard = []
    for i in range(25):
        model.feed_data(batch)
        model.optimize_parameters(i)
        hard.append(float(model.log_dict['l_hard']))
    assert np.isfinite(hard).all()
    assert np.mean(hard[-5:]) < 0.5 * hard[0], hard
    # independent of the loss's sign convention: after 25 steps the trained net scores every hard negative
    # below the clean reference and >= 85 % of the (group image, hard negative) pairs in the right order
    # (measured 93 %: heavy blur and halos still beat the sigma-0.2 noise version; a sign-flipped loss fails)
    from iqa_plugin.models.nr_lite_model import HARD_KINDS, hard_negatives

    kinds = torch.arange(len(HARD_KINDS)).repeat(2, 1)
    negs = hard_negatives(ref, kinds, torch.Generator().manual_seed(5))
    net = model.get_bare_model(model.net_g).eval()
    with torch.no_grad():
        q_group = net(torch.cat([ref.unsqueeze(1), dist], 1).flatten(0, 1)).view(2, -1)
        q_hard = net(negs.flatten(0, 1)).view(2, -1)
    assert (q_hard.max(1).values < q_group[:, 0]).all(), (q_hard, q_group)
    assert float((q_hard.unsqueeze(1) < q_group.unsqueeze(2)).float().mean()) >= 0.85, (q_hard, q_group)
