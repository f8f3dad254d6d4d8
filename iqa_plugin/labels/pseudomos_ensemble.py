"""The pseudo-MOS ensemble: quality labels without human ratings, from full-reference metrics.

Each member is a full-reference metric of the scoring table (``iqa_plugin.scoring.METRICS``, where its
direction, minimum size and files live) that models some form of visual masking and runs offline (no
download): pyiqa's ``nlpd``, ``gmsd``, ``fsim``, ``vsi``, ``ms_ssim`` and ``mad``; ``lpips`` and ``dists``
join only when their weight files are already on disk. Every member is built through the one cache of frozen
scorers (``scoring.get_cached_metric``). Scores are

1. oriented so that higher = worse: lower-is-better metrics as they are, higher-is-better similarity
   indices (value 1 for identical images) as ``1 - score``;
2. normalised per member, ``'zscore'`` or ``'rank'`` within each group of distortions of the same
   reference (content bias removed), or ``'global'`` z-score over all pairs;
3. averaged over members.

The resulting pseudo-MOS is unitless, **higher = worse**: with ``'zscore'`` each group has mean 0,
with ``'rank'`` values lie in [0, 1] (0 = best of its group). See ``docs/distortions.md``.

This module is the ensemble itself; ``iqa_plugin.labels.pseudomos`` re-exports it and adds the cache builder
and the command line, ``pseudomos_cache`` reads and writes cache files.
"""
from dataclasses import dataclass

import torch

from iqa_plugin.scoring import METRICS

NORMALIZATIONS = ('zscore', 'rank', 'global', 'none')


@dataclass(frozen=True)
class Member:
    """One ensemble member: a view of its scoring-table row.

    Attributes:
        name: member name (the scoring-table row).
        lower_better: direction of the raw score.
        min_size: smallest image side the implementation accepts.
        source: 'pyiqa' (no files) or 'pyiqa+files' (needs weight files: ``lpips``, ``dists``).
        description: what it measures / how it models masking.
    """
    name: str
    lower_better: bool
    min_size: int = 16
    source: str = 'pyiqa'
    description: str = ''


MEMBER_NAMES = ('nlpd', 'gmsd', 'fsim', 'vsi', 'ms_ssim', 'mad', 'lpips', 'dists')
MEMBERS = {n: Member(n, METRICS[n].lower_better, METRICS[n].min_size, 'pyiqa+files' if METRICS[n].files else 'pyiqa',
                     METRICS[n].description) for n in MEMBER_NAMES}

DEFAULT_MEMBERS = ('nlpd', 'gmsd', 'fsim')
"""Default ensemble: fast on CPU, contrast masking (NLPD), structure (GMSD) and colour (FSIM, chromatic)."""


# ----------------------------------------------------------------------------------------------
# Availability (nothing is ever downloaded from here)
# ----------------------------------------------------------------------------------------------
def member_status(name):
    """(available, reason) for member ``name``; never downloads."""
    if name not in MEMBERS:
        raise ValueError(f"unknown pseudo-MOS member '{name}'; known: {', '.join(MEMBERS)}")
    from iqa_plugin.scoring import available_offline

    ok, why = available_offline(name)
    return (True, 'ok') if ok else (False, why)


def available_members():
    """Names of the members that can be built now, offline."""
    return [n for n in MEMBERS if member_status(n)[0]]


def resolve_members(members=None):
    """Member names from None (``DEFAULT_MEMBERS``), 'auto' (defaults + lpips/dists when present),
    a comma-separated string or a sequence. Unknown or unavailable names raise."""
    if members is None:
        return tuple(DEFAULT_MEMBERS)
    if isinstance(members, str):
        if members == 'auto':
            return tuple(DEFAULT_MEMBERS) + tuple(n for n in MEMBER_NAMES if METRICS[n].files and member_status(n)[0])
        members = [m.strip() for m in members.split(',') if m.strip()]
    members = tuple(members)
    if not members:
        raise ValueError('the pseudo-MOS ensemble needs at least one member')
    if len(set(members)) != len(members):
        raise ValueError(f'duplicate pseudo-MOS members: {members}')
    for n in members:
        ok, reason = member_status(n)
        if not ok:
            raise FileNotFoundError(f"pseudo-MOS member '{n}' is not available offline: {reason}")
    return members


def _build_member(name, device):
    """A callable ``f(dist, ref) -> (B,) raw scores`` and its ``lower_better`` (the table row's)."""
    from iqa_plugin.scoring import get_cached_metric

    scorer = get_cached_metric(name, device=device)
    return (lambda d, r: scorer(d, r)[name].reshape(-1)), bool(scorer.lower_better)


# ----------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------
def _ranks(x):
    """Average ranks (0-based) of a 1-D tensor, ties share their mean rank."""
    n = x.numel()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = torch.arange(n, dtype=torch.float64)
    uniq, inv = torch.unique(x, return_inverse=True)
    if uniq.numel() < n:  # average ties
        sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, ranks)
        counts = torch.bincount(inv, minlength=uniq.numel()).to(torch.float64)
        ranks = (sums / counts)[inv]
    return ranks


def normalize_scores(raw, groups=None, method='zscore', eps=1e-8):
    """Normalise oriented member scores.

    Args:
        raw (Tensor): (N, M) scores, higher = worse.
        groups (Tensor | None): (N,) integer reference ids; None = one group.
        method (str): 'zscore' (per group and member: mean 0, std 1; 0 for a constant column),
            'rank' (per group and member: average rank / (n - 1) in [0, 1]; 0.5 for a single item),
            'global' (z-score over all N, groups ignored) or 'none'.

    Returns:
        (N, M) float32 tensor.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got '{method}'")
    raw = torch.as_tensor(raw)
    if raw.ndim != 2:
        raise ValueError(f'raw scores must have shape (N, M), got {tuple(raw.shape)}')
    x = raw.to(torch.float64)
    if method == 'none':
        return x.float()
    n = x.shape[0]
    if groups is None or method == 'global':
        groups = torch.zeros(n, dtype=torch.long)
    groups = torch.as_tensor(groups).reshape(-1)
    if groups.numel() != n:
        raise ValueError(f'groups has {groups.numel()} entries for {n} scores')
    out = torch.zeros_like(x)
    for g in torch.unique(groups):
        idx = (groups == g).nonzero().reshape(-1)
        xg = x[idx]
        if method in ('zscore', 'global'):
            std = xg.std(0, unbiased=False)
            z = (xg - xg.mean(0)) / std.clamp_min(eps)
            out[idx] = torch.where(std > eps, z, torch.zeros_like(z))
        else:
            k = len(idx)
            for m in range(x.shape[1]):
                out[idx, m] = _ranks(xg[:, m]) / (k - 1) if k > 1 else torch.full((k,), 0.5, dtype=torch.float64)
    return out.float()


# ----------------------------------------------------------------------------------------------
# The ensemble
# ----------------------------------------------------------------------------------------------
class PseudoMOS:
    """Ensemble of full-reference metrics giving pseudo-MOS labels (higher = worse).

    Args:
        members (None | str | sequence): see ``resolve_members``; default ``DEFAULT_MEMBERS``.
        normalize (str): default normalisation, see ``normalize_scores``.
        device (str | torch.device): where the metrics run.
        batch_size (int): pairs per metric call.

    Call ``ens(dist, ref, groups=None)`` with dist (N, 3, H, W) and ref (N, 3, H, W) or one (3, H, W)
    reference shared by all, RGB in [0, 1]; returns ``(pmos (N,), raw (N, M))``, raw oriented so that
    higher = worse and 0 = identical.
    """

    def __init__(self, members=None, normalize='zscore', device='cpu', batch_size=16):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got '{normalize}'")
        if int(batch_size) < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self.members = resolve_members(members)
        self.normalize = normalize
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.min_size = max(MEMBERS[n].min_size for n in self.members)
        self._fns = {}
        self.lower_better = {}
        for n in self.members:
            self._fns[n], self.lower_better[n] = _build_member(n, self.device)

    def _inputs(self, dist, ref):
        from iqa_plugin.utils.image import prepare_image

        dist = prepare_image(dist, name='dist', min_size=self.min_size)
        ref = prepare_image(ref, name='ref', min_size=self.min_size)
        if ref.shape[0] == 1 and dist.shape[0] > 1:
            ref = ref.expand(dist.shape[0], -1, -1, -1)
        if dist.shape != ref.shape:
            raise ValueError(f'dist and ref shapes differ: dist {tuple(dist.shape)} vs ref {tuple(ref.shape)}')
        return dist, ref

    @torch.no_grad()
    def member_scores(self, dist, ref):
        """(N, M) float32 oriented member scores (higher = worse, 0 = identical), on the CPU."""
        dist, ref = self._inputs(dist, ref)
        cols = []
        for n in self.members:
            fn, lower = self._fns[n], self.lower_better[n]
            vals = []
            for i in range(0, dist.shape[0], self.batch_size):
                d = dist[i:i + self.batch_size].to(self.device, torch.float32)
                r = ref[i:i + self.batch_size].to(self.device, torch.float32)
                vals.append(fn(d, r).detach().to('cpu', torch.float64))
            v = torch.cat(vals)
            cols.append(v if lower else 1.0 - v)
        return torch.stack(cols, 1).float()

    def __call__(self, dist, ref, groups=None, normalize=None):
        raw = self.member_scores(dist, ref)
        return combine(raw, groups, normalize or self.normalize), raw


def combine(raw, groups=None, normalize='zscore'):
    """Pseudo-MOS (N,) = mean over members of the normalised oriented scores (higher = worse)."""
    return normalize_scores(raw, groups, normalize).mean(1)

