"""Ranking losses and rank correlations shared by the metric trainings and their validators.

Losses (torch, differentiable; all take **badness**-oriented scores, higher = worse, unless said):

* ``pairwise_rank_loss``: RankNet logistic loss over every ordered pair of each row (label-free models);
* ``group_plcc_loss``: ``1 - Pearson`` within each row (label-free MILO);
* ``listmle_loss``: ListMLE (Plackett-Luce) for scores whose true order is the column order (relational).

Rank agreement (no gradient):

* ``kendall_tau`` (torch, batched rows; relational training and its validator);
* ``plcc``, ``srcc``, ``correlation_report`` (numpy, 1-D arrays / groups; label-free validation and
  evaluation scripts).

A plain helper module: not a BasicSR registry module (nothing here is registered).
"""
import math
from collections import OrderedDict

import numpy as np
import torch
from torch.nn import functional as F


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------
def pairwise_rank_loss(badness, target, sigma=1.0, min_gap=0.0, valid=None, scale_free=True):
    """RankNet-style logistic loss over every ordered pair of each row.

    Args:
        badness (Tensor): (B, N) model scores, higher = worse.
        target (Tensor): (B, N) labels, higher = worse (pseudo-MOS).
        sigma (float): logistic slope on score differences.
        min_gap (float): pairs whose targets differ by <= min_gap are ignored (label ties / noise).
        valid (Tensor | None): (B, N) bool, items to use (default all).
        scale_free (bool): divide each row's score differences by the row's standard deviation of
            ``badness`` (so the loss fixes the order, not the range of the scores).
    Returns:
        scalar: mean over pairs (i, j) with target_i > target_j + min_gap of
        ``softplus(-sigma * (badness_i - badness_j))``, each pair weighted by ``|target_i - target_j|``
        normalised to mean 1 (large label gaps matter more); 0 when no pair qualifies.
    """
    if badness.shape != target.shape or badness.ndim != 2:
        raise ValueError(f'badness and target must both be (B, N), got {tuple(badness.shape)} and {tuple(target.shape)}')
    ds = badness.unsqueeze(2) - badness.unsqueeze(1)  # (B, N, N): s_i - s_j
    if scale_free:
        ds = ds / (badness.std(dim=1, keepdim=True).unsqueeze(2) + 1e-6)
    dt = (target.unsqueeze(2) - target.unsqueeze(1)).detach()
    keep = dt > min_gap
    if valid is not None:
        keep = keep & valid.unsqueeze(2) & valid.unsqueeze(1)
    if not bool(keep.any()):
        return badness.sum() * 0.0
    w = dt[keep]
    w = w / w.mean().clamp_min(1e-8)
    return (w * F.softplus(-sigma * ds[keep])).mean()


def group_plcc_loss(badness, target, eps=1e-8):
    """``1 - mean over rows of Pearson(badness_row, target_row)``; (B, N) x2 -> scalar in [0, 2].

    Scale and offset invariant, so it shapes the score as a linear function of the label within each
    group without fixing its range. Rows with a constant target are skipped.
    """
    x = badness - badness.mean(1, keepdim=True)
    y = (target - target.mean(1, keepdim=True)).detach()
    ny = y.norm(dim=1)
    keep = ny > eps
    if not bool(keep.any()):
        return badness.sum() * 0.0
    r = (x * y).sum(1) / (x.norm(dim=1) * ny).clamp_min(eps)
    return 1.0 - r[keep].mean()


def listmle_loss(scores):
    """ListMLE for scores (B, T) whose true order is column 0 (best) to T-1 (worst): (B,) losses."""
    rev = torch.flip(scores, dims=[1])
    tail_lse = torch.flip(torch.logcumsumexp(rev, dim=1), dims=[1])  # logsumexp(s_t..s_{T-1})
    return (tail_lse - scores).sum(1)


def kendall_tau(scores, order):
    """Kendall tau-a between ``scores`` (B, T) and a quality order (B, T) (higher = better): (B,)."""
    ds = scores[:, :, None] - scores[:, None, :]
    do = order[:, :, None] - order[:, None, :]
    t = scores.shape[1]
    iu = torch.triu_indices(t, t, 1)
    prod = torch.sign(ds[:, iu[0], iu[1]]) * torch.sign(do[:, iu[0], iu[1]])
    return prod.mean(1)


# ----------------------------------------------------------------------------------------------
# Correlations (numpy, for validation and evaluation)
# ----------------------------------------------------------------------------------------------
def _rankdata(x):
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind='mergesort')
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return (sums / counts)[inv]


def plcc(x, y):
    """Pearson linear correlation of two 1-D arrays (nan when either is constant or n < 2)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f'plcc: arrays differ in length: {x.shape[0]} vs {y.shape[0]}')
    if len(x) < 2:
        return float('nan')
    x, y = x - x.mean(), y - y.mean()
    d = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / d) if d > 0 else float('nan')


def srcc(x, y):
    """Spearman rank correlation (average ranks for ties) of two 1-D arrays."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f'srcc: arrays differ in length: {x.shape[0]} vs {y.shape[0]}')
    return plcc(_rankdata(x), _rankdata(y))


def correlation_report(badness, pmos, tier=None):
    """Validation figures for (G, N) arrays of model badness and pseudo-MOS (both higher = worse).

    Returns an ordered dict: ``srcc`` / ``plcc`` over all pairs, ``srcc_group`` (mean within-group
    SRCC, the content-independent ordering), and ``srcc_tier`` (mean within-group SRCC with the
    engine's severity tier, when tiers are known).
    """
    badness, pmos = np.asarray(badness, np.float64), np.asarray(pmos, np.float64)
    res = OrderedDict()
    res['srcc'] = srcc(badness, pmos)
    res['plcc'] = plcc(badness, pmos)
    res['srcc_group'] = float(np.nanmean([srcc(b, p) for b, p in zip(badness, pmos)]))
    if tier is not None:
        tier = np.asarray(tier)
        rows = [srcc(b, t) for b, t in zip(badness, tier) if (t >= 0).all() and len(set(t.tolist())) > 1]
        if rows:
            res['srcc_tier'] = float(np.nanmean(rows))
    return res
