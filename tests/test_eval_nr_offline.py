"""docs/scripts/eval_nr_offline.py (pick-the-positive rows) and docs/scripts/attack_nr_offline.py (smoke).

The scripts are not a package: they are imported from docs/scripts. Scorers are built here (mean
brightness as an ``NRScorer``; a random-init nr-lite file), so nothing needs shipped or official weights.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from iqa_plugin.data.multigt_layout import LABEL_NEGATIVE as NEG
from iqa_plugin.data.multigt_layout import LABEL_ORIGINAL as ORIG
from iqa_plugin.data.multigt_layout import LABEL_POSITIVE as POS
from iqa_plugin.data.multigt_layout import LABEL_SIMILAR as SIM
from iqa_plugin.scoring.scorer import NRScorer, score_candidates
from conftest import find_shared

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'docs' / 'scripts'))
import eval_nr_offline as E  # noqa: E402

pytestmark = pytest.mark.usefixtures('one_torch_thread')


class _Brightness(nn.Module):
    """(B, 3, H, W) -> (B,) mean value: a scorer whose preference is set by the images' brightness."""

    def forward(self, x):
        return x.mean((1, 2, 3))


def _brightness_scorer(lower_better):
    return NRScorer('brightness', _Brightness(), lower_better=lower_better, score_range=(0.0, 1.0), min_size=3)


def _synthetic_groups():
    """3 groups of (original, 4 candidates), 8 px flat images: Positives bright, Negatives dark."""
    labels = np.array([[ORIG, POS, NEG, SIM, NEG],
                       [ORIG, NEG, POS, POS, SIM],
                       [ORIG, SIM, SIM, NEG, SIM]])  # no Positive: takes part in neither statistic
    level = {ORIG: 0.5, POS: 0.8, SIM: 0.5, NEG: 0.2}
    vals = np.array([[level[int(v)] + 0.01 * j for j, v in enumerate(row)] for row in labels], dtype=np.float32)
    images = torch.from_numpy(vals)[:, :, None, None, None].expand(-1, -1, 3, 8, 8).contiguous()
    return images, labels


def test_pick_positive_scorer_preferring_positives_gets_one_and_reversed_gets_zero():
    images, labels = _synthetic_groups()
    good = E.pick_positive(score_candidates(_brightness_scorer(False), images).numpy(), labels)
    assert good == {'pos>neg': 1.0, 'pairs': 1 * 2 + 2 * 1, 'argmax pos': 1.0, 'groups': 2}
    # the same network read as lower-better: score_candidates negates it, every preference flips
    bad = E.pick_positive(score_candidates(_brightness_scorer(True), images).numpy(), labels)
    assert bad == {'pos>neg': 0.0, 'pairs': 4, 'argmax pos': 0.0, 'groups': 2}


def test_pick_positive_counts_pairs_ties_and_ignores_the_original():
    labels = np.array([[ORIG, POS, POS, NEG, NEG]])
    # P1 beats both N, P2 ties N1 (a tie is not a win) and loses to N2; the original scores highest of all
    scores = np.array([[9.0, 3.0, 1.0, 1.0, 2.0]])
    assert E.pick_positive(scores, labels) == {'pos>neg': 0.5, 'pairs': 4, 'argmax pos': 1.0, 'groups': 1}
    scores = np.array([[9.0, 1.0, 1.0, 3.0, 0.0]])  # a Negative is the best candidate
    assert E.pick_positive(scores, labels) == {'pos>neg': 0.5, 'pairs': 4, 'argmax pos': 0.0, 'groups': 1}
    none = E.pick_positive(np.zeros((1, 3)), np.array([[ORIG, SIM, NEG]]))
    assert none == {'pos>neg': None, 'pairs': 0, 'argmax pos': None, 'groups': 0}
    with pytest.raises(ValueError, match='both be'):
        E.pick_positive(np.zeros((2, 3)), np.zeros((2, 4)))


def test_multigt_set_reads_make_multigt_groups_of_the_crops():
    rng = np.random.default_rng(0)
    clean = rng.random((2, 32, 32, 3), dtype=np.float32)
    clean = np.round(clean * 255) / 255  # what the 8-bit PNGs hold
    images, labels = E.multigt_set(clean, seed=3, candidates=3, sets=2)
    assert images.shape == (4, 4, 3, 32, 32) and labels.shape == (4, 4)
    assert torch.allclose(images[:2, 0], torch.from_numpy(clean).permute(0, 3, 1, 2), atol=1e-6)
    assert torch.equal(images[:2, 0], images[2:, 0])  # both sets start from the same crops
    assert (labels[:, 0] == ORIG).all() and set(labels[:, 1:].ravel()) <= {POS, SIM, NEG}
    assert not torch.equal(images[:2, 1:], images[2:, 1:])  # seeds 3 and 4 give other candidates
    again = E.multigt_set(clean, seed=3, candidates=3, sets=1)
    assert torch.equal(again[0], images[:2]) and np.array_equal(again[1], labels[:2])


def test_attack_script_smoke(tmp_path, capsys):
    from PIL import Image

    from iqa_plugin.archs.nr_lite_arch import NRLite
    import attack_nr_offline as A

    torch.manual_seed(0)
    weights = tmp_path / 'nr_lite_random.pth'
    torch.save(NRLite().state_dict(), weights)
    photos = tmp_path / 'photos'
    photos.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96] / 95.0
    img = np.stack([yy, xx, 0.5 + 0.3 * np.sin(12 * yy)], -1) + 0.05 * rng.standard_normal((96, 96, 3))
    Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(photos / 'p.png')

    shared = find_shared()  # the script's default is ../shared's official MILO, else the shipped milo-pseudomos
    milo = str(shared / 'weights' / 'milo' / 'MILO.pth') if shared is not None else ''
    records = A.main(['--weights', str(weights), '--dataroot', str(photos), '--photos', '1', '--size', '96',
                      '--steps', '2', '--lr', '1e-2', '--save-dir', str(tmp_path / 'png'), '--milo-weights', milo])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out['report'] == [0, 2] and len(out['records']) == len(records) == 2 * 2  # 2 starts x steps 0, 2
    by = {(r['start'], r['step']): r for r in records}
    assert by[('clean', 0)]['psnr'] == 100.0 and by[('clean', 0)]['milo_error'] < 1e-6
    for start in A.STARTS:
        assert by[(start, 2)]['score'] > by[(start, 0)]['score']  # ascent raised the attacked score
        assert by[(start, 2)]['psnr'] < 100.0 and np.isfinite(by[(start, 2)]['niqe_fitted'])
    assert len(list((tmp_path / 'png').glob('*.png'))) == 4
