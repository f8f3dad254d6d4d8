"""GT selection strategies of multi-GT training (iqa_plugin.models.gt_sampling)."""
import io

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from iqa_plugin.models import gt_sampling as gs

POS, SIM, NEG, ORIG = 1, 0, -1, 2

pytestmark = pytest.mark.usefixtures('one_torch_thread')


class BrightnessScorer:
    """A fake no-reference scorer with known outputs: score = mean brightness (higher = better)."""
    kind = 'nr'
    lower_better = False
    min_size = 8
    name = 'brightness'

    def __init__(self):
        self.calls = 0

    def score(self, x):
        self.calls += 1
        return x.mean(dim=(1, 2, 3))


def make_batch(levels, labels=None, size=16):
    """Candidates of constant brightness ``levels`` (B, N) and their labels (B, N)."""
    levels = torch.as_tensor(levels, dtype=torch.float32)
    b, n = levels.shape
    cands = levels[:, :, None, None, None].expand(b, n, 3, size, size).clone()
    if labels is None:
        labels = torch.full((b, n), POS, dtype=torch.int64)
        labels[:, 0] = ORIG
    return {'gt_candidates': cands, 'gt_labels': torch.as_tensor(labels, dtype=torch.int64),
            'group': [f'g{i}' for i in range(b)]}


# ---------------------------------------------------------------------------------------- cache helpers
def make_files(tmp_path, n):
    paths = []
    for k in range(n):
        p = tmp_path / f'cand_{k}.png'
        p.write_bytes(f'candidate {k}'.encode())
        paths.append(str(p))
    return paths


def make_cache(tmp_path, paths, scores, scorer='nr-lite'):
    name, opts = gs.scorer_spec(scorer)
    hashes = {p: gs.sha256sum(p) for p in paths}
    cache = tmp_path / 'scores.json'
    gs.write_score_cache(cache, name, opts, hashes, {hashes[p]: s for p, s in zip(paths, scores)},
                         option_file='options/train/multigt/x.yml')
    return cache


def path_batch(paths, labels):
    """A collated batch of B samples all using the same N candidate files (gt_paths: N tuples of B)."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    b = labels.shape[0]
    return {'gt_labels': labels, 'gt_paths': [tuple([p] * b) for p in paths], 'group': [f'g{i}' for i in range(b)]}


# ---------------------------------------------------------------------------------------- AMO
def test_amo_takes_argmax_of_known_scorer():
    scorer = BrightnessScorer()
    strat = gs.build_gt_strategy({'type': 'amo', 'scorer': scorer})
    levels = [[0.2, 0.9, 0.5, 0.1, 0.3],
              [0.8, 0.1, 0.2, 0.3, 0.4],
              [0.1, 0.2, 0.3, 0.4, 0.6],
              [0.5, 0.7, 0.2, 0.7, 0.1]]  # a tie: the lowest index wins
    idx = strat.choose(make_batch(levels))
    assert idx.dtype == torch.int64 and idx.device.type == 'cpu'
    assert idx.tolist() == [1, 0, 4, 1]
    assert scorer.calls == 1  # every crop of the batch in one forward
    stats = strat.last_stats()
    assert stats['gt_sampling/mean_score'] == pytest.approx((0.9 + 0.8 + 0.6 + 0.7) / 4, abs=1e-6)
    assert [stats[f'gt_sampling/idx_{k}'] for k in range(5)] == [0.25, 0.5, 0.0, 0.0, 0.25]


def test_amo_among_positives_and_table_scorer():
    levels = [[0.9, 0.8, 0.1, 0.95], [0.1, 0.2, 0.3, 0.4]]
    labels = [[ORIG, POS, NEG, NEG], [ORIG, POS, POS, SIM]]
    strat = gs.build_gt_strategy({'type': 'amo', 'scorer': BrightnessScorer(), 'among': 'positives'})
    assert strat.needs_labels
    assert strat.choose(make_batch(levels, labels)).tolist() == [1, 2]
    # the default scorer comes from the scoring table's one cache (nr-lite ships with the package)
    from iqa_plugin import scoring
    table = gs.build_gt_strategy({'type': 'amo'}, device='cpu')
    assert table.scorer is scoring.get_cached_metric('nr-lite', device='cpu')
    idx = table.choose(make_batch(torch.rand(2, 3), size=32))
    assert idx.shape == (2,) and 0 <= int(idx.min()) and int(idx.max()) < 3


# ---------------------------------------------------------------------------------------- labels
def test_orig_always_original_and_upos_only_positives():
    labels = torch.tensor([[ORIG, NEG, POS, SIM, POS], [ORIG, POS, NEG, NEG, SIM], [ORIG, SIM, POS, POS, POS]])
    batch = make_batch(torch.rand(3, 5), labels)
    orig = gs.build_gt_strategy({'type': 'orig'})
    upos = gs.build_gt_strategy({'type': 'upos', 'seed': 3})
    seen = torch.zeros(3, 5, dtype=torch.int64)
    for _ in range(300):
        assert orig.choose(batch).tolist() == [0, 0, 0]
        idx = upos.choose(batch)
        seen[torch.arange(3), idx] += 1
    assert ((seen > 0) == (labels == POS)).all()  # every positive drawn, nothing else
    with pytest.raises(ValueError, match='group g1 has no positive.*require_positive'):
        upos.choose(make_batch(torch.rand(2, 3), [[ORIG, POS, NEG], [ORIG, SIM, NEG]]))


def test_rand_covers_all_candidates():
    strat = gs.build_gt_strategy({'type': 'rand', 'seed': 1})
    batch = make_batch(torch.rand(8, 4))
    counts = torch.zeros(4)
    for _ in range(50):
        counts += torch.bincount(strat.choose(batch), minlength=4)
    assert (counts > 0).all()
    assert strat.last_stats()['gt_sampling/idx_0'] > 0 and 'gt_sampling/mean_score' not in strat.last_stats()


# ---------------------------------------------------------------------------------------- SMA / SMP
def test_sma_frequencies_match_softmax(tmp_path):
    scores = [0.30, 0.45, 0.50, 0.20, 0.40]
    tau = 0.1
    paths = make_files(tmp_path, 5)
    cache = make_cache(tmp_path, paths, scores)
    strat = gs.build_gt_strategy({'type': 'sma', 'tau': tau, 'scores': str(cache), 'seed': 7}, files=paths)
    batch = path_batch(paths, [[ORIG, NEG, NEG, SIM, NEG]] * 50)  # SMA ignores labels
    counts = np.zeros(5)
    for _ in range(100):
        counts += np.bincount(strat.choose(batch).numpy(), minlength=5)
    expected = torch.softmax(torch.tensor(scores, dtype=torch.float64) / tau, 0).numpy() * counts.sum()
    assert chisquare(counts, expected).pvalue > 0.001
    # and a wrong temperature is detected by the same test (the test can fail)
    wrong = torch.softmax(torch.tensor(scores, dtype=torch.float64) / (2 * tau), 0).numpy() * counts.sum()
    assert chisquare(counts, wrong).pvalue < 0.001
    stats = strat.last_stats()
    assert sum(stats[f'gt_sampling/idx_{k}'] for k in range(5)) == pytest.approx(1.0)
    assert stats['gt_sampling/mean_score'] == pytest.approx(float((counts * np.array(scores)).sum() / counts.sum()))


def test_smp_only_positives_with_softmax_frequencies(tmp_path):
    scores = [0.9, 0.45, 0.50, 0.99, 0.40]
    labels = [ORIG, POS, POS, NEG, POS]
    paths = make_files(tmp_path, 5)
    cache = make_cache(tmp_path, paths, scores)
    strat = gs.build_gt_strategy({'type': 'smp', 'tau': 0.05, 'scores': str(cache)})
    counts = np.zeros(5)
    for _ in range(100):
        counts += np.bincount(strat.choose(path_batch(paths, [labels] * 40)).numpy(), minlength=5)
    assert counts[0] == 0 and counts[3] == 0  # best-scored but not positive: never drawn
    pos = [1, 2, 4]
    p = torch.softmax(torch.tensor([scores[k] for k in pos], dtype=torch.float64) / 0.05, 0).numpy()
    assert chisquare(counts[pos], p * counts.sum()).pvalue > 0.001


# ---------------------------------------------------------------------------------------- resume
@pytest.mark.parametrize('block', [{'type': 'rand'}, {'type': 'upos', 'seed': 5}, {'type': 'sma', 'tau': 0.2}])
def test_resume_continues_same_sequence(tmp_path, block):
    paths = make_files(tmp_path, 4)
    if block['type'] == 'sma':
        block = {**block, 'scores': str(make_cache(tmp_path, paths, [0.1, 0.2, 0.3, 0.25]))}
    labels = [[ORIG, POS, NEG, POS]] * 6
    batch = {**make_batch(torch.rand(6, 4), labels), **path_batch(paths, labels)}
    first = gs.build_gt_strategy(block)
    for _ in range(5):
        first.choose(batch)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    uninterrupted = [first.choose(batch).tolist() for _ in range(10)]
    buf.seek(0)
    resumed = gs.build_gt_strategy(block)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert [resumed.choose(batch).tolist() for _ in range(10)] == uninterrupted
    fresh = gs.build_gt_strategy(block)  # without the state the sequence starts over (the test can fail)
    if block['type'] != 'orig':
        assert [fresh.choose(batch).tolist() for _ in range(10)] != uninterrupted


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize('block, message', [
    ({'type': 'sma', 'tau': 0, 'scores': 'x.json'}, 'tau must be a number > 0'),
    ({'type': 'smp', 'tau': -0.5, 'scores': 'x.json'}, 'tau must be a number > 0'),
    ({'type': 'sma', 'scores': 'x.json'}, 'needs tau'),
    ({'type': 'argmax'}, "unknown gt_sampling type 'argmax'; known: orig, rand, upos, sma, smp, amo"),
    ({'type': 'upos', 'tau': 0.1}, "unknown key 'tau'"),
    ({'type': 'amo', 'among': 'best'}, "among must be 'all' or 'positives'"),
    ({'type': 'amo', 'scorer': {'type': 'milo'}}, 'full-reference'),
    ({'type': 'sma', 'tau': 0.1, 'scores': '/nonexistent/scores.json'}, 'file not found.*iqa-plugin score-gts -opt'),
])
def test_bad_options_one_line(block, message):
    with pytest.raises(ValueError, match=message) as e:
        gs.build_gt_strategy(block)
    assert '\n' not in str(e.value)


def test_option_preflight_rejects_bad_gt_sampling():
    from iqa_plugin.basicsr_glue.options_check import OptionError, check_options

    for block, message in [({'type': 'sma', 'tau': 0.0, 'scores': 'x'}, 'tau'), ({'type': 'nope'}, 'unknown')]:
        with pytest.raises(OptionError, match=f'train.gt_sampling.*{message}'):
            check_options({'train': {'gt_sampling': block}}, resolve_weights=False)
    check_options({'train': {'gt_sampling': {'type': 'amo', 'scorer': {'type': 'nr-lite'}}}}, resolve_weights=False)


def test_stale_or_foreign_cache_refused_naming_command(tmp_path):
    paths = make_files(tmp_path, 3)
    cache = make_cache(tmp_path, paths, [0.1, 0.2, 0.3])
    block = {'type': 'sma', 'tau': 0.1, 'scores': str(cache)}
    gs.build_gt_strategy(block, files=paths)  # fresh: accepted
    with pytest.raises(ValueError, match='made by scorer nr-lite.*not musiq.*rebuild it with: iqa-plugin score-gts '
                                         r'-opt options/train/multigt/x.yml --out'):
        gs.build_gt_strategy({**block, 'scorer': 'musiq'})
    extra = tmp_path / 'new.png'
    extra.write_bytes(b'not scored')
    with pytest.raises(ValueError, match='has no score for .*new.png; rebuild it with: iqa-plugin score-gts -opt'):
        gs.build_gt_strategy(block, files=paths + [str(extra)])
    with open(paths[1], 'ab') as f:
        f.write(b' edited')
    with pytest.raises(ValueError, match=r'stale: .*cand_1.png changed.*rebuild it with: iqa-plugin score-gts -opt '
                                         r'options/train/multigt/x.yml --out .*scores.json') as e:
        gs.build_gt_strategy(block, files=paths)
    assert '\n' not in str(e.value)


# ---------------------------------------------------------------------------------------- score-gts
def test_score_gts_cache_drives_sma_and_refuses_stale(tmp_path, capsys):
    """``iqa-plugin score-gts`` on a tiny set made by make-multigt: the cache holds nr-lite's score of every
    candidate file of the training dataset; sma reads it; editing a candidate makes it stale."""
    import yaml
    from torch.utils.data import DataLoader

    from conftest import make_sr_folder
    from iqa_plugin.cli import dispatch
    from iqa_plugin.apps.multigt_make import make_multigt
    from iqa_plugin.scoring.scorer import score_candidates
    from iqa_plugin.scoring import get_cached_metric
    from iqa_plugin.utils.image import read_image

    make_sr_folder(tmp_path / 'hr', n=3, size=64)
    make_multigt(tmp_path / 'hr' / 'HR', tmp_path / 'set', set_name='train', seed=0, candidates=3)
    cache = tmp_path / 'scores.json'
    dataset = {'type': 'MultiGTDataset', 'layout': 'hggt', 'dataroot': str(tmp_path / 'set'), 'set': 'train',
               'lq_mode': 'bicubic', 'scale': 4, 'gt_size': 32, 'use_hflip': False, 'use_rot': False}
    opt = {'scale': 4, 'datasets': {'train': dataset},
           'train': {'gt_sampling': {'type': 'sma', 'tau': 0.05, 'scores': str(cache), 'scorer': {'type': 'nr-lite'}}}}
    yml = tmp_path / 'opt.yml'
    yml.write_text(yaml.safe_dump(opt))
    assert dispatch(['score-gts', '-opt', str(yml), '--device', 'cpu']) == 0
    data = gs.read_score_cache(cache)
    files = sorted(data['files'])
    assert len(files) == 3 * 4  # 3 groups x (original + 3 candidates)
    nr_lite = get_cached_metric('nr-lite', device='cpu')
    first = files[0]
    expected = float(score_candidates(nr_lite, read_image(first)[None])[0, 0])
    assert data['scores'][data['files'][first]] == pytest.approx(expected, abs=1e-6)

    strat = gs.build_gt_strategy(opt['train']['gt_sampling'], files=files)
    from basicsr.data import build_dataset
    batch = next(iter(DataLoader(build_dataset({**dataset, 'phase': 'train', 'name': 't'}), batch_size=3)))
    idx = strat.choose(batch)
    assert idx.shape == (3,) and int(idx.max()) < 4

    with open(files[5], 'ab') as f:
        f.write(b'\0')  # same image, different content hash
    with pytest.raises(ValueError, match=f'stale: .* rebuild it with: iqa-plugin score-gts -opt {yml} --out {cache}'):
        gs.build_gt_strategy(opt['train']['gt_sampling'])
    # rebuilding rescores only the changed file and is accepted again
    capsys.readouterr()
    assert dispatch(['score-gts', '-opt', str(yml), '--device', 'cpu']) == 0
    assert '11 already scored, 1 to score' in capsys.readouterr().out
    gs.build_gt_strategy(opt['train']['gt_sampling'], files=files)


def test_bench_gt_sampling_smoke(capsys):
    """The bench's one JSON line: AMO/UPos ratio and the scorer's share, for a tiny setting."""
    from iqa_plugin.apps.bench import BENCHES, describe
    from iqa_plugin.apps.bench.gt_sampling_bench import main

    assert 'gt-sampling' in BENCHES and describe('gt-sampling').startswith('time per training iteration')
    out = main(['--arch', 'small', '--batch', '1', '--candidates', '2', '--size', '32', '--repeats', '1',
                '--device', 'cpu'])
    assert out['ratio'] > 0 and out['ratio_within'] > 0.5 and 0 < out['scorer_share'] < 1
    assert set(out['per_arch']) == {'small'}
    assert 'amo / upos' in capsys.readouterr().out
