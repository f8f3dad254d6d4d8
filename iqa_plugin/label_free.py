"""Shared pieces of the label-free metric trainings (``MILOPseudoMOSModel``, ``NRLiteModel``).

* ranking / correlation losses on groups of scores: ``pairwise_rank_loss``, ``group_plcc_loss``;
* rank correlations for validation: ``srcc``, ``plcc``;
* ``LabelFreeValidation``: a BasicSR validation mixin scoring a ``PseudoMOSDataset`` and logging
  SRCC / PLCC against the pseudo-MOS (the validation items are computed once and kept in memory,
  so an on-the-fly validation set runs the slow pseudo-MOS ensemble only at the first validation).

Conventions: pseudo-MOS is **higher = worse** (``iqa_plugin.pseudomos``). Losses take ``badness``
scores oriented the same way (a higher-is-better model passes ``-score``).
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


# ----------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------
def random_crop_group(ref, dist, size, generator=None):
    """Same random ``size`` x ``size`` window of a reference batch and its groups:
    ref (B, 3, H, W), dist (B, N, 3, H, W) -> (B, 3, size, size), (B, N, 3, size, size)."""
    h, w = ref.shape[-2:]
    if size >= min(h, w):
        return ref, dist
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    return ref[..., top:top + size, left:left + size], dist[..., top:top + size, left:left + size]


def augment_group(ref, dist, generator=None):
    """Same random flip / 90-degree rotation for a reference batch and its distorted groups.

    ref (B, 3, P, P), dist (B, N, 3, P, P) -> the same shapes (square patches keep their size).
    """
    k = int(torch.randint(0, 4, (1,), generator=generator))
    flip = bool(torch.randint(0, 2, (1,), generator=generator))
    if flip:
        ref, dist = ref.flip(-1), dist.flip(-1)
    if k:
        ref, dist = torch.rot90(ref, k, (-2, -1)), torch.rot90(dist, k, (-2, -1))
    return ref.contiguous(), dist.contiguous()


# ----------------------------------------------------------------------------------------------
# BasicSR validation mixin
# ----------------------------------------------------------------------------------------------
class LabelFreeValidation:
    """Validation against pseudo-MOS for models trained on ``PseudoMOSDataset``.

    The model implements ``_val_badness(ref, dist) -> (N,)`` (no grad; ref (1, 3, P, P), dist
    (N, 3, P, P)); this mixin feeds it every item of the validation loader and logs
    ``srcc``, ``plcc``, ``srcc_group`` and ``srcc_tier`` (all higher = better) through BasicSR's
    logger / tensorboard, keeping the best value of each.
    """

    def _val_items(self, dataloader):
        name = dataloader.dataset.opt['name']
        cache = self.__dict__.setdefault('_label_free_val_items', {})
        if name not in cache:
            items = []
            for data in dataloader:
                if 'pmos' not in data:
                    raise ValueError(f'validation set {name} gives no pseudo-MOS (set pmos: true)')
                items.append({'ref': data['ref'][:1].float(), 'dist': data['dist'][0].float(),
                              'pmos': data['pmos'][0].float(), 'tier': data['tier'][0].long()})
            cache[name] = items
        return name, cache[name]

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img=False):
        name, items = self._val_items(dataloader)
        bad, pm, tiers = [], [], []
        for it in items:
            with torch.no_grad():
                b = self._val_badness(it['ref'].to(self.device), it['dist'].to(self.device))
            bad.append(b.detach().float().cpu().numpy())
            pm.append(it['pmos'].numpy())
            tiers.append(it['tier'].numpy())
        self.metric_results = correlation_report(np.stack(bad), np.stack(pm), np.stack(tiers))
        if not hasattr(self, 'best_metric_results'):
            self.best_metric_results = {}
        best = self.best_metric_results.setdefault(name, {})
        for k, v in self.metric_results.items():
            rec = best.setdefault(k, {'better': 'higher', 'val': float('-inf'), 'iter': -1})
            if v >= rec['val']:
                rec['val'], rec['iter'] = v, current_iter
        self._log_validation_metric_values(current_iter, name, tb_logger)

    def dist_validation(self, dataloader, current_iter, tb_logger, save_img=False):
        from basicsr.utils.dist_util import get_dist_info

        if get_dist_info()[0] == 0:
            self.nondist_validation(dataloader, current_iter, tb_logger, save_img)

    def _log_validation_metric_values(self, current_iter, dataset_name, tb_logger):
        from basicsr.utils import get_root_logger

        lines = [f'Validation {dataset_name} (vs pseudo-MOS)']
        for k, v in self.metric_results.items():
            b = self.best_metric_results[dataset_name][k]
            lines.append(f'\t # {k}: {v:.4f}\tBest: {b["val"]:.4f} @ {b["iter"]} iter')
        get_root_logger().info('\n'.join(lines))
        if tb_logger:
            for k, v in self.metric_results.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{k}', v, current_iter)


# ----------------------------------------------------------------------------------------------
# BasicSR model base
# ----------------------------------------------------------------------------------------------
def _base_model():
    from basicsr.models.base_model import BaseModel

    return BaseModel


class LabelFreeModel(LabelFreeValidation, _base_model()):
    """BasicSR model training one network ``net_g`` on ``PseudoMOSDataset`` groups.

    Subclasses set ``arch_defaults`` (merged under ``network_g``), implement ``compute_losses()``
    (returns an ordered dict of weighted scalar losses; their sum is minimised), ``_val_badness``
    and ``export_state_dict(net)`` (the plain file the scorer loads). Options used here::

        network_g: {type: ..., ...}
        path: {pretrain_network_g: ~, strict_load_g: true, param_key_g: params}
        train:
          ema_decay: 0.999     # 0 = no EMA copy
          augment: true        # same random flip / rot90 for a reference and its group
          crop_size: ~         # train on a random crop of each group (speed; the label is the patch's)
          optim_g: {type: Adam, lr: !!float 1e-3}
          scheduler: {type: CosineAnnealingRestartLR, periods: [N], restart_weights: [1], eta_min: !!float 1e-5}
          total_iter: N
    """
    arch_defaults = {}
    export_prefix = 'export'

    def __init__(self, opt):
        from basicsr.archs import build_network

        super().__init__(opt)
        net_opt = {**self.arch_defaults, **dict(opt['network_g'])}
        self.net_g = self.model_to_device(build_network(net_opt))
        self.print_network(self.net_g)
        load_path = (opt.get('path') or {}).get('pretrain_network_g')
        if load_path:
            self.load_network(self.net_g, load_path, opt['path'].get('strict_load_g', True),
                              opt['path'].get('param_key_g', 'params'))
        if self.is_train:
            self.init_training_settings()

    def init_training_settings(self):
        from basicsr.archs import build_network

        train_opt = self.opt['train']
        self.net_g.train()
        self.ema_decay = float(train_opt.get('ema_decay', 0) or 0)
        if self.ema_decay > 0:
            self.net_g_ema = build_network({**self.arch_defaults, **dict(self.opt['network_g'])}).to(self.device)
            self.model_ema(0)  # copy net_g
            self.net_g_ema.eval()
            for p in self.net_g_ema.parameters():
                p.requires_grad_(False)
        self.augment = bool(train_opt.get('augment', True))
        self.crop_size = int(train_opt.get('crop_size') or 0)
        optim_opt = dict(train_opt['optim_g'])
        optim_type = optim_opt.pop('type')
        params = [p for p in self.net_g.parameters() if p.requires_grad]
        if not params:
            raise ValueError('network_g has no trainable parameters (built with weights and frozen?)')
        self.optimizer_g = self.get_optimizer(optim_type, params, **optim_opt)
        self.optimizers.append(self.optimizer_g)
        self.setup_schedulers()

    def model_ema(self, decay=0.999):
        net_g = self.get_bare_model(self.net_g)
        ema = dict(self.net_g_ema.named_parameters())
        with torch.no_grad():
            for k, p in net_g.named_parameters():
                ema[k].mul_(decay).add_(p.detach(), alpha=1 - decay)

    def feed_data(self, data):
        """``data``: a batch of ``PseudoMOSDataset`` items: 'ref' (B, 3, P, P), 'dist' (B, N, 3, P, P),
        'pmos' (B, N) higher = worse, 'tier' (B, N), 'raw' (B, N, M)."""
        ref, dist = data['ref'].float(), data['dist'].float()
        if self.is_train and self.net_g.training:
            if getattr(self, 'crop_size', 0):
                ref, dist = random_crop_group(ref, dist, self.crop_size)
            if getattr(self, 'augment', False):
                ref, dist = augment_group(ref, dist)
        self.ref, self.dist = ref.to(self.device), dist.to(self.device)
        self.pmos = data['pmos'].float().to(self.device)
        self.tier = data['tier'].long().to(self.device) if 'tier' in data else None
        self.raw = data['raw'].float().to(self.device) if 'raw' in data else None

    def compute_losses(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def optimize_parameters(self, current_iter=0):
        self.net_g.train()
        self.optimizer_g.zero_grad(set_to_none=True)
        losses = self.compute_losses()
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f'non-finite training loss at iter {current_iter}: '
                                     f'{ {k: float(v) for k, v in losses.items()} }')
        total.backward()
        self.optimizer_g.step()
        losses['l_total'] = total.detach()
        self.log_dict = self.reduce_loss_dict(OrderedDict((k, v.detach()) for k, v in losses.items()))
        if getattr(self, 'ema_decay', 0) > 0:
            self.model_ema(self.ema_decay)

    def eval_net(self):
        """The network used for validation and export: the EMA copy when there is one."""
        net = getattr(self, 'net_g_ema', None)
        return net if net is not None else self.get_bare_model(self.net_g)

    def _val_badness(self, ref, dist):
        net = self.eval_net()
        was = net.training
        net.eval()
        try:
            return self.badness(net, ref, dist)
        finally:
            net.train(was)

    def get_current_visuals(self):
        return OrderedDict()

    def save(self, epoch, current_iter):
        import os

        if getattr(self, 'ema_decay', 0) > 0:
            self.save_network([self.net_g, self.net_g_ema], 'net_g', current_iter, param_key=['params', 'params_ema'])
        else:
            self.save_network(self.net_g, 'net_g', current_iter)
        self.save_training_state(epoch, current_iter)
        tag = 'latest' if current_iter == -1 else current_iter
        torch.save(self.export_state_dict(self.eval_net()),
                   os.path.join(self.opt['path']['models'], f'{self.export_prefix}_{tag}.pth'))
