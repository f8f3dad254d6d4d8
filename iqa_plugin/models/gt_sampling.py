"""Ground-truth selection strategies for multi-GT SR training (docs/multigt.md).

Why one file over 450 lines: the six strategies are one registry behind one interface (``pick``, ``check``,
``state_dict``) and share the option checks, the seeded generator and the score-cache file (written by ``iqa-plugin
score-gts``, read by sma/smp); each strategy is a short class, and splitting them per file would scatter those
shared helpers.

Every training sample carries N ground-truth candidates (``MultiGTDataset``: index 0 the original, then
the enhanced versions, each with a label). A strategy picks one candidate per sample every iteration:

    train:
      gt_sampling: {type: amo, scorer: {type: nr-lite}}                  # argmax-online, no labels
      gt_sampling: {type: sma, tau: 0.1, scores: scores/train.json}      # softmax over cached image scores
      gt_sampling: {type: upos, seed: 0}                                 # HGGT's uniform positive

=========  ==========================================================================================
``orig``   always the original (index 0): plain single-GT training
``rand``   uniform over all N candidates
``upos``   uniform over the candidates labelled Positive (HGGT's ``Ours_PosGT_Model``)
``sma``    SoftMax_tau over the image-level scores of all N candidates (Zhang et al., CVPR 2025)
``smp``    SoftMax_tau over the image-level scores of the positives only
``amo``    Argmax-Online: scores every candidate *crop* of the batch in one no-grad batched forward
           (``iqa_plugin.scoring.scorer.score_candidates``, higher = better) and takes the argmax per sample (ties:
           the lowest index); ``among: positives`` restricts it to the positives
=========  ==========================================================================================

Options: ``seed`` (int, default 0; the generator is seeded with ``seed + rank``), ``tau`` (> 0, required by
sma/smp), ``scores`` (the cache of ``iqa-plugin score-gts -opt YAML``, required by sma/smp), ``scorer``
(a scoring-table NR metric: ``{type: NAME, <factory options>}`` or ``NAME``, default ``nr-lite``; AMO
scores with it, SMA/SMP check that the cache was made by it), ``among`` (amo: ``all`` | ``positives``).
``check_options(block)`` validates a block (the option pre-flight calls it): bad input raises ValueError
with one line.

Every strategy owns a ``torch.Generator`` (CPU); ``state_dict()`` holds its state (a uint8 tensor, plus
numbers and strings: safe for ``torch.load(weights_only=True)``), so a resumed run continues the same
sequence of choices. ``last_stats()`` gives, for the batches chosen since the previous call (the last batch
when called every iteration), the fraction of samples that got each candidate index
(``gt_sampling/idx_<k>``) and, where scores exist (sma, smp, amo), the chosen candidates' mean score
(``gt_sampling/mean_score``, oriented higher = better).

Score cache (sma/smp): a JSON file written by ``iqa-plugin score-gts`` (``write_score_cache``) holding the
scorer's name and options, ``files`` {absolute path: content sha256} and ``scores`` {sha256: score,
higher = better}. ``load_score_cache`` hashes every file once (at construction, never per iteration) and
refuses, naming the command that rebuilds it, a cache made by another scorer or one missing a file or
holding a stale hash.
"""
import json
import os
import warnings
from pathlib import Path

import torch

from iqa_plugin import scoring
from iqa_plugin.data.multigt_layout import LABEL_POSITIVE
from iqa_plugin.weights import sha256sum

DEFAULT_SCORER = 'nr-lite'
CACHE_FORMAT = 'iqa-plugin gt-scores 1'
STAT_PREFIX = 'gt_sampling/'

GT_STRATEGIES = {}


def register(cls):
    """Class decorator: ``GT_STRATEGIES[cls.name] = cls``."""
    GT_STRATEGIES[cls.name] = cls
    return cls


# ------------------------------------------------------------------------------------------ options
def scorer_spec(block):
    """A ``scorer:`` block (``NAME``, ``{type: NAME, ...}`` or None) -> (table name, factory options with the
    table's defaults filled in). Raises ValueError for an unknown or full-reference metric."""
    if block is None:
        block = DEFAULT_SCORER
    if isinstance(block, str):
        block = {'type': block}
    if not isinstance(block, dict) or not isinstance(block.get('type'), str):
        raise ValueError(f'gt_sampling.scorer must be a scoring-table metric name or {{type: NAME, ...}}, '
                         f'got {block!r}')
    name = block['type']
    spec = scoring.get_spec(name)
    if spec.kind != 'nr':
        raise ValueError(f"gt_sampling.scorer: '{name}' is a full-reference metric; GT selection needs a "
                         f"no-reference one (e.g. {DEFAULT_SCORER}, musiq)")
    opts = {k: v for k, v in block.items() if k != 'type' and v is not None}
    return name, {**spec.defaults, **opts}


def check_options(block):
    """Validate a ``train.gt_sampling`` block; returns its class. ValueError (one line) on bad input.

    Checks the type, the keys each type accepts, ``seed``, ``tau > 0`` and ``scores`` (sma/smp: required, an
    existing file), ``among`` (amo), and that ``scorer`` names a no-reference table metric. The score cache's
    content (scorer, hashes) is checked when the strategy is built."""
    if isinstance(block, str):
        block = {'type': block}
    if not isinstance(block, dict) or 'type' not in block:
        raise ValueError(f"train.gt_sampling must be a mapping with a type: key ({', '.join(GT_STRATEGIES)}), "
                         f"got {block!r}")
    name = block['type']
    if name not in GT_STRATEGIES:
        raise ValueError(f"unknown gt_sampling type '{name}'; known: {', '.join(GT_STRATEGIES)}")
    cls = GT_STRATEGIES[name]
    extra = sorted(set(block) - cls.OPTIONS - {'type'})
    if extra:
        raise ValueError(f"unknown key{'s' if len(extra) > 1 else ''} {', '.join(map(repr, extra))} in "
                         f"train.gt_sampling ({name}); allowed: {', '.join(sorted(cls.OPTIONS))}")
    seed = block.get('seed', 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f'train.gt_sampling.seed must be an integer, got {seed!r}')
    cls.check(block)
    return cls


def _check_tau(block):
    tau = block.get('tau')
    if tau is None:
        raise ValueError(f"train.gt_sampling ({block['type']}) needs tau (the softmax temperature, > 0, in the "
                         f"scorer's units)")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
        raise ValueError(f"train.gt_sampling.tau must be a number > 0, got {tau!r}")


def rebuild_command(option_file=None, out=None):
    """The command line that (re)builds a score cache."""
    cmd = f"iqa-plugin score-gts -opt {option_file or 'YOUR_OPTIONS.yml'}"
    return cmd + (f' --out {out}' if out else '')


# ------------------------------------------------------------------------------------------ score cache
def file_key(path):
    """How a candidate file is named in the cache and looked up: its absolute, symlink-resolved path."""
    return os.path.realpath(os.fspath(path))


def write_score_cache(path, scorer, scorer_options, files, scores, option_file=None):
    """Write a score cache (JSON, atomically).

    Args:
        scorer (str), scorer_options (dict): the table metric and its options (defaults filled in).
        files (dict): {path: content sha256}; scores (dict): {sha256: float, higher = better}.
        option_file: the option file it was computed for (named in refusal messages).
    """
    path = Path(path)
    data = {'format': CACHE_FORMAT, 'scorer': {'type': scorer, 'options': dict(scorer_options)},
            'orientation': 'higher is better', 'option_file': str(option_file) if option_file else None,
            'files': {file_key(p): h for p, h in files.items()}, 'scores': {h: float(s) for h, s in scores.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_score_cache(path, option_file=None):
    """The cache's dict; ValueError naming the rebuild command when it is missing or unreadable."""
    path = Path(path)
    cmd = rebuild_command(option_file, path)
    if not path.is_file():
        raise ValueError(f'GT score cache not found: {path}; build it with: {cmd}')
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"GT score cache {path} is unreadable ({' '.join(str(e).split())}); rebuild it with: "
                         f"{cmd}") from e
    if not isinstance(data, dict) or data.get('format') != CACHE_FORMAT:
        raise ValueError(f'{path} is not a GT score cache of this version ({CACHE_FORMAT}); rebuild it with: {cmd}')
    return data


def same_options(a, b):
    """Whether two scorer option dicts are equal (compared as sorted JSON)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def load_score_cache(path, scorer, scorer_options, files=None, option_file=None):
    """{absolute file path: score (higher = better)} from a score cache, after checking it.

    Every file (``files``, else every file the cache lists) is hashed now, once; a cache made by another
    scorer or other options, or missing a file, or whose hash for a file differs from its content now
    (stale) is refused with a ValueError naming the ``iqa-plugin score-gts`` command that rebuilds it."""
    data = read_score_cache(path, option_file)
    option_file = option_file or data.get('option_file')
    cmd = rebuild_command(option_file, path)
    made_by = data.get('scorer') or {}
    if made_by.get('type') != scorer or not same_options(made_by.get('options') or {}, scorer_options):
        raise ValueError(f"GT score cache {path} was made by scorer {made_by.get('type')} {made_by.get('options')}, "
                         f"not {scorer} {scorer_options}; rebuild it with: {cmd}")
    recorded, scores = data.get('files') or {}, data.get('scores') or {}
    wanted = [file_key(p) for p in files] if files is not None else list(recorded)
    out = {}
    for key in wanted:
        if key not in recorded:
            raise ValueError(f'GT score cache {path} has no score for {key}; rebuild it with: {cmd}')
        if not os.path.isfile(key):
            raise ValueError(f'GT score cache {path} lists {key}, which no longer exists; rebuild it with: {cmd}')
        digest = sha256sum(key)
        if digest != recorded[key] or digest not in scores:
            raise ValueError(f'GT score cache {path} is stale: {key} changed since it was scored (content hash '
                             f'differs); rebuild it with: {cmd}')
        out[key] = float(scores[digest])
    return out


# ------------------------------------------------------------------------------------------ batches
def batch_size_and_n(batch):
    """(B, N) of a collated batch, from 'gt_candidates' (B, N, 3, H, W) or else 'gt_labels' (B, N)."""
    for key, ndim in (('gt_candidates', 5), ('gt_labels', 2)):
        t = batch.get(key)
        if torch.is_tensor(t):
            if t.ndim != ndim:
                raise ValueError(f"batch['{key}'] must have {ndim} dimensions (a collated batch), "
                                 f"got shape {tuple(t.shape)}")
            return int(t.shape[0]), int(t.shape[1])
    raise ValueError("a multi-GT batch needs 'gt_candidates' (B, N, 3, H, W) or 'gt_labels' (B, N); "
                     "use MultiGTDataset")


def positive_mask(batch):
    """(B, N) bool: candidates labelled Positive; ValueError naming the group of a sample without one."""
    labels = batch.get('gt_labels')
    if not torch.is_tensor(labels) or labels.ndim != 2:
        raise ValueError("this GT strategy needs batch['gt_labels'] (B, N): use MultiGTDataset with labels")
    mask = labels.cpu() == LABEL_POSITIVE
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        groups = batch.get('group')
        name = groups[empty[0]] if isinstance(groups, (list, tuple)) and len(groups) > empty[0] else f'#{empty[0]}'
        raise ValueError(f"group {name} has no positive candidate; set require_positive: true in the training "
                         f"dataset so such groups are dropped")
    return mask


def candidate_paths(batch):
    """batch['gt_paths'] as B lists of N paths (default_collate gives N tuples of B strings)."""
    paths = batch.get('gt_paths')
    b, n = batch_size_and_n(batch)
    if not isinstance(paths, (list, tuple)) or len(paths) != n:
        raise ValueError(f"batch['gt_paths'] must list the N={n} candidate files, got {type(paths).__name__}")
    cols = [[p] * b if isinstance(p, (str, os.PathLike)) else list(p) for p in paths]
    if any(len(c) != b for c in cols):
        raise ValueError(f"batch['gt_paths'] must hold N={n} entries of B={b} paths")
    return [[cols[k][i] for k in range(n)] for i in range(b)]


# ------------------------------------------------------------------------------------------ strategies
class GTStrategy:
    """Base class: the generator, its state, the statistics. Subclasses implement ``pick(batch)``."""
    name = ''
    needs_labels = False
    OPTIONS = frozenset({'type', 'seed'})

    def __init__(self, seed=0, rank=0, **_):
        self.seed = int(seed) + int(rank)
        self.generator = torch.Generator().manual_seed(self.seed)
        self._counts = None  # (N,) int64: choices since the last last_stats()
        self._score_sum, self._scored = 0.0, 0
        self._stats, self._closed = {}, False

    @classmethod
    def check(cls, block):
        """Type-specific checks of a block (``check_options`` has checked type, keys and seed)."""

    def pick(self, batch):
        """-> (indices (B,) int64 CPU, scores of the chosen candidates (B,) or None)."""
        raise NotImplementedError

    def choose(self, batch):
        """(B,) int64 CPU indices into ``batch['gt_candidates']``, one per sample."""
        idx, chosen_scores = self.pick(batch)
        idx = idx.to('cpu', torch.int64)
        self._record(idx, batch_size_and_n(batch)[1], chosen_scores)
        return idx

    def _record(self, idx, n, chosen_scores):
        if self._closed or self._counts is None or self._counts.numel() != n:
            self._counts = torch.zeros(n, dtype=torch.int64)
            self._score_sum, self._scored, self._closed = 0.0, 0, False
        self._counts += torch.bincount(idx, minlength=n)
        if chosen_scores is not None:
            self._score_sum += float(chosen_scores.double().sum())
            self._scored += int(chosen_scores.numel())

    def last_stats(self):
        """{'gt_sampling/idx_<k>': fraction of samples given candidate k, 'gt_sampling/mean_score': mean score
        of the chosen candidates (strategies with scores)} over the batches since the previous call."""
        if self._counts is not None and not self._closed:
            total = max(int(self._counts.sum()), 1)
            self._stats = {f'{STAT_PREFIX}idx_{k}': float(c) / total for k, c in enumerate(self._counts.tolist())}
            if self._scored:
                self._stats[f'{STAT_PREFIX}mean_score'] = self._score_sum / self._scored
            self._closed = True
        return dict(self._stats)

    def state_dict(self):
        """{'type', 'seed', 'rng' (uint8 tensor)}: weights_only-safe."""
        return {'type': self.name, 'seed': self.seed, 'rng': self.generator.get_state()}

    def load_state_dict(self, state):
        """Restore the generator; a state saved by another strategy type is ignored with a warning."""
        if not isinstance(state, dict) or not torch.is_tensor(state.get('rng')):
            raise ValueError(f'not a GT strategy state: {type(state).__name__} without an rng tensor')
        if state.get('type') != self.name:
            warnings.warn(f"GT strategy state was saved by '{state.get('type')}', this run uses '{self.name}': "
                          f"starting its generator from seed {self.seed}")
            return
        self.generator.set_state(state['rng'].to('cpu', torch.uint8))


def sample_rows(weights, generator):
    """One index per row of ``weights`` (B, N) >= 0, drawn with probabilities proportional to the row."""
    return torch.multinomial(weights.double(), 1, generator=generator).squeeze(1)


@register
class OrigStrategy(GTStrategy):
    """Always the original (index 0)."""
    name = 'orig'

    def pick(self, batch):
        b, _ = batch_size_and_n(batch)
        return torch.zeros(b, dtype=torch.int64), None


@register
class RandStrategy(GTStrategy):
    """Uniform over all N candidates."""
    name = 'rand'

    def pick(self, batch):
        b, n = batch_size_and_n(batch)
        return torch.randint(n, (b,), generator=self.generator), None


@register
class UPosStrategy(GTStrategy):
    """Uniform over the positives (HGGT)."""
    name = 'upos'
    needs_labels = True

    def pick(self, batch):
        return sample_rows(positive_mask(batch).double(), self.generator), None


class _ScoreCacheStrategy(GTStrategy):
    """SoftMax_tau over image-level scores from the ``score-gts`` cache."""
    OPTIONS = GTStrategy.OPTIONS | {'tau', 'scores', 'scorer'}

    def __init__(self, tau=None, scores=None, scorer=None, files=None, option_file=None, **kw):
        super().__init__(**kw)
        self.check({'type': self.name, 'tau': tau, 'scores': scores, 'scorer': scorer})
        self.tau = float(tau)
        self.scorer_name, self.scorer_options = scorer_spec(scorer)
        self.cache_path, self.option_file = Path(scores), option_file
        self.scores = load_score_cache(scores, self.scorer_name, self.scorer_options, files, option_file)
        self._keys = {}  # path as the batch gives it -> cache key (resolved once per path)

    @classmethod
    def check(cls, block):
        _check_tau(block)
        scores = block.get('scores')
        if not isinstance(scores, (str, os.PathLike)) or not str(scores):
            raise ValueError(f"train.gt_sampling ({block['type']}) needs scores: PATH, the cache written by "
                             f"{rebuild_command()} --out PATH")
        if not Path(scores).is_file():
            raise ValueError(f'train.gt_sampling.scores: file not found: {scores}; build it with: '
                             f'{rebuild_command(None, scores)}')
        scorer_spec(block.get('scorer'))

    def batch_scores(self, batch):
        """(B, N) float64 cached scores of the batch's candidate files."""
        rows = []
        for paths in candidate_paths(batch):
            row = []
            for p in paths:
                key = self._keys.get(p)
                if key is None:
                    key = self._keys[p] = file_key(p)
                if key not in self.scores:
                    raise ValueError(f'GT score cache {self.cache_path} has no score for {key}; rebuild it with: '
                                     f'{rebuild_command(self.option_file, self.cache_path)}')
                row.append(self.scores[key])
            rows.append(row)
        return torch.tensor(rows, dtype=torch.float64)

    def probabilities(self, batch, scores=None):
        """(B, N) softmax of scores / tau over the eligible candidates (0 elsewhere); ``scores``: the batch's
        ``batch_scores`` when already looked up."""
        logits = (self.batch_scores(batch) if scores is None else scores) / self.tau
        mask = self.eligible(batch)
        if mask is not None:
            logits = logits.masked_fill(~mask, float('-inf'))
        return torch.softmax(logits, dim=1)

    def eligible(self, batch):
        return None

    def pick(self, batch):
        scores = self.batch_scores(batch)
        idx = sample_rows(self.probabilities(batch, scores), self.generator)
        return idx, scores.gather(1, idx[:, None]).squeeze(1)


@register
class SMAStrategy(_ScoreCacheStrategy):
    """SoftMax_tau over the cached scores of all N candidates (no labels)."""
    name = 'sma'


@register
class SMPStrategy(_ScoreCacheStrategy):
    """SoftMax_tau over the cached scores of the positives."""
    name = 'smp'
    needs_labels = True

    def eligible(self, batch):
        return positive_mask(batch)


@register
class AMOStrategy(GTStrategy):
    """Argmax-Online: every candidate crop scored in one no-grad batched forward, argmax per sample.

    ``scorer`` may also be a built no-reference scorer object (``kind == 'nr'``, ``lower_better``,
    ``score(x)`` or ``forward``), e.g. a fake with known outputs in tests."""
    name = 'amo'
    OPTIONS = GTStrategy.OPTIONS | {'scorer', 'among', 'chunk_size'}

    def __init__(self, scorer=None, among='all', chunk_size=None, device=None, **kw):
        super().__init__(**kw)
        self.check({'type': self.name, 'among': among, 'chunk_size': chunk_size})
        self.among = among
        self.chunk_size = chunk_size
        if hasattr(scorer, 'kind') and not isinstance(scorer, (str, dict)):
            if scorer.kind != 'nr':
                raise ValueError(f'gt_sampling.scorer must be a no-reference scorer, got kind {scorer.kind!r}')
            self.scorer_name, self.scorer = getattr(scorer, 'name', type(scorer).__name__), scorer
        else:
            name, opts = scorer_spec(scorer)
            device = device if device is not None else ('cuda' if torch.cuda.is_available() else 'cpu')
            self.scorer_name, self.scorer = name, scoring.get_cached_metric(name, device=device, **opts)
        self.needs_labels = among == 'positives'

    @classmethod
    def check(cls, block):
        among = block.get('among', 'all')
        if among not in ('all', 'positives'):
            raise ValueError(f"train.gt_sampling.among must be 'all' or 'positives', got {among!r}")
        chunk = block.get('chunk_size')
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f'train.gt_sampling.chunk_size must be an integer >= 1, got {chunk!r}')
        if not hasattr(block.get('scorer'), 'kind'):
            scorer_spec(block.get('scorer'))

    def score(self, batch):
        """(B, N) float32 CPU scores of every candidate crop, higher = better."""
        from iqa_plugin.scoring.scorer import score_candidates

        cands = batch.get('gt_candidates')
        if not torch.is_tensor(cands) or cands.ndim != 5:
            raise ValueError("amo needs batch['gt_candidates'] (B, N, 3, H, W)")
        b, n = cands.shape[:2]
        chunk = self.chunk_size or b * n  # default: the whole batch in one forward
        return score_candidates(self.scorer, cands, chunk_size=chunk).float().cpu()

    def pick(self, batch):
        scores = self.score(batch)
        ranked = torch.nan_to_num(scores, nan=float('-inf'))
        if self.among == 'positives':
            ranked = ranked.masked_fill(~positive_mask(batch), float('-inf'))
        idx = ranked.argmax(dim=1)  # the first maximal index: ties go to the lowest index
        return idx, scores.gather(1, idx[:, None]).squeeze(1)


def build_gt_strategy(opt, device=None, rank=0, files=None, option_file=None):
    """The strategy of a ``train.gt_sampling`` block.

    Args:
        opt (dict | str): ``{type: NAME, seed, ...}`` (see the module docstring) or just the type name.
        device: where AMO's scorer runs (default: CUDA when available).
        rank (int): added to the seed, so distributed ranks draw differently.
        files (list | None): the dataset's candidate files; sma/smp then check at construction that the
            cache covers each of them with its current content.
        option_file: named in the rebuild command of refusal messages.
    Returns:
        GTStrategy. Raises ValueError (one line) on a bad block or a refused score cache.
    """
    if isinstance(opt, str):
        opt = {'type': opt}
    opt = dict(opt)
    scorer = opt.get('scorer')
    if hasattr(scorer, 'kind') and not isinstance(scorer, (str, dict)):  # a built scorer object
        cls = check_options({k: v for k, v in opt.items() if k != 'scorer'})
    else:
        cls = check_options(opt)
    kwargs = {k: v for k, v in opt.items() if k != 'type'}
    kwargs['rank'] = rank
    if cls is AMOStrategy:
        kwargs['device'] = device
    elif issubclass(cls, _ScoreCacheStrategy):
        kwargs.update(files=files, option_file=option_file)
    return cls(**kwargs)
