"""``RelationalModel``: train the relational IQA networks with BasicSR (``model_type: RelationalModel``).

Two stages, selected by ``train.stage`` (see ``iqa_plugin.archs.relational_arch`` for the networks):

1. map regression (``RelationalTripletDataset`` with ``mode: pairs``): for a reference ``r`` and two
   distorted versions ``d0``, ``d1`` with engine maps ``m0``, ``m1``, the anti-symmetric objective

       L1 = |P(d0, r) - m0| + |P(d1, r) - m1| + pair_weight * |P(d0, d1) - (m0 - m1)|

   (means over axes and pixels). The reversed terms (``P(r, d0)`` vs ``-m0``, ...) are identical by
   construction (``P(a, b) = -P(b, a)`` exactly), so they are not computed twice; the pair term
   between two distorted images is what makes the network relational rather than "distance to ref".
2. listwise ranking (``mode: tiers``): for tiers ``t = 0..T-1`` of one content at increasing
   severity, scores ``s_t = s(d_t | r)`` are trained with ListMLE (Plackett-Luce likelihood of the
   true order, best first): ``L2 = -sum_t [s_t - logsumexp(s_t, ..., s_{T-1})]`` (mean over items).
   The distortion network is frozen unless ``train.finetune_distortion: true``.
   With ``train.teacher`` (``{type: pseudomos, members: ...}``) the order comes from the label-free
   pseudo-MOS ensemble (``iqa_plugin.labels.pseudomos``) instead of the tier index; this is what
   ``mode: sets`` data (independent chains of different types, no constructed order) needs, and what
   teaches the score network how distortion *types* weigh against each other.

Options (besides BasicSR's ``datasets``, ``path``, ``logger``)::

    network_rel: {type: RelationalIQANet, num_feat: 32, num_head: 32, num_hidden: 16}
    path: {pretrain_network_rel: ~, strict_load_rel: true}     # stage 2 starts from stage 1's file
    train:
      stage: 1
      optim: {type: AdamW, lr: !!float 2e-3, weight_decay: !!float 1e-4}
      scheduler: {type: CosineAnnealingRestartLR, periods: [600], restart_weights: [1], eta_min: !!float 1e-5}
      total_iter: 600
      pair_weight: 1.0         # stage 1
      map_loss: l1             # stage 1: l1 | mse | l1+mse (see map_error)
      finetune_distortion: false  # stage 2
      teacher: ~               # stage 2: {type: pseudomos, members: [nlpd, gmsd, fsim]} orders 'sets' data
      num_threads: 1           # torch CPU threads (1 is fastest on a shared machine); ~ = leave as is
    val:
      val_freq: 100
      metrics:
        map_l1: {type: relational_map_l1}     # mean |P(dist, ref) - maps|, lower is better
        kendall: {type: relational_kendall}   # Kendall tau of s over tiers vs. the true order ('tiers' data)

Checkpoints: ``net_rel_<iter>.pth`` (BasicSR layout) and ``relational_<iter>.pth``, a plain state dict
that ``build_relational_scorer(weights_path=...)`` loads (the format of the packaged
``iqa_plugin/weights/files/relational.pth``).
"""
from collections import OrderedDict

import torch
from basicsr.archs import build_network
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from iqa_plugin.weights.export import plain_weights
from iqa_plugin.models.metric_train_base import MetricTrainModel
from iqa_plugin.utils.ranking import kendall_tau, listmle_loss

STAGES = (1, 2)
MAP_LOSSES = ('l1', 'mse', 'l1+mse')


def map_error(pred, target, kind='l1'):
    """Scalar map regression error: 'l1' (mean |e|), 'mse' (mean e^2, scaled by 4 so a 0.25 error
    weighs as in L1) or 'l1+mse' (their sum).

    Why not only L1: most pixels of most axes are 0 (an operation touches one or two of the 8 axes),
    so the L1 optimum, the conditional median, stays at 0 for an axis the network is not yet sure
    about; the squared error's optimum is the conditional mean, which keeps gradients on rare axes.
    """
    e = pred - target
    if kind == 'l1':
        return e.abs().mean()
    mse = 4.0 * (e * e).mean()
    return mse if kind == 'mse' else mse + e.abs().mean()


_VAL_TYPES = {'relational_map_l1': 'lower', 'relational_kendall': 'higher'}  # iqa_plugin.metrics.relational_metric


@MODEL_REGISTRY.register()
class RelationalModel(MetricTrainModel):
    """Stage 1 (maps) or stage 2 (ranking) training of ``RelationalIQANet`` (see the module docstring)."""
    plain_prefix = 'relational'

    def __init__(self, opt):
        super().__init__(opt)
        train_opt = opt.get('train') or {}
        threads = train_opt.get('num_threads')
        if threads:
            torch.set_num_threads(int(threads))
        net_opt = dict(opt.get('network_rel') or {'type': 'RelationalIQANet'})
        net_opt.setdefault('type', 'RelationalIQANet')
        self.net_rel = self.model_to_device(build_network(net_opt))
        self.print_network(self.net_rel)
        path_opt = opt.get('path') or {}
        if path_opt.get('pretrain_network_rel'):
            self.load_rel(path_opt['pretrain_network_rel'], strict=path_opt.get('strict_load_rel', True))
        self.stage = int(train_opt.get('stage', 1))
        if self.stage not in STAGES:
            raise ValueError(f"train.stage must be 1 or 2, got {train_opt.get('stage')!r}")
        if self.is_train:
            self.init_training_settings()

    @property
    def net(self):
        return self.get_bare_model(self.net_rel)

    def load_rel(self, path, strict=True):
        from iqa_plugin.archs.relational_arch import load_relational_weights

        if strict:
            load_relational_weights(self.net, 'relational', path)
            get_root_logger().info(f'Loaded RelationalIQANet from {path}')
            return
        from iqa_plugin import weights as weights_mod

        sd, _ = weights_mod.unwrap_state_dict(weights_mod.load_state_dict(weights_mod.resolve('relational', path)),
                                              path, ('params_ema', 'params'))
        missing, unexpected = self.net.load_state_dict(sd, strict=False)
        get_root_logger().info(f'Loaded RelationalIQANet from {path} (non-strict; missing: {missing or "none"}, '
                               f'unexpected: {unexpected or "none"})')

    # ------------------------------------------------------------------ setup
    def init_training_settings(self):
        train_opt = self.opt['train']
        self.net_rel.train()
        self.pair_weight = float(train_opt.get('pair_weight', 1.0))
        self.teacher = self._build_teacher(train_opt.get('teacher')) if self.stage == 2 else None
        self.map_loss = train_opt.get('map_loss', 'l1')
        if self.map_loss not in MAP_LOSSES:
            raise ValueError(f"train.map_loss must be one of {', '.join(MAP_LOSSES)}, got {self.map_loss!r}")
        finetune = bool(train_opt.get('finetune_distortion', False))
        for p in self.net.distortion.parameters():
            p.requires_grad_(self.stage == 1 or finetune)
        for p in self.net.score.parameters():
            p.requires_grad_(self.stage == 2)
        params = [p for p in self.net_rel.parameters() if p.requires_grad]
        self.optimizer = self.build_optimizer(train_opt.get('optim') or {'type': 'AdamW', 'lr': 1e-3}, params,
                                              default_type='AdamW')
        self.optimizers.append(self.optimizer)
        if train_opt.get('scheduler'):
            self.setup_schedulers()

    def _build_teacher(self, opt):
        """The stage-2 ranking teacher from ``train.teacher`` (None: order by tier index)."""
        if not opt:
            return None
        opt = dict(opt)
        kind = opt.pop('type', 'pseudomos')
        if kind != 'pseudomos':
            raise ValueError(f"train.teacher.type must be 'pseudomos', got {kind!r}")
        from iqa_plugin.labels.pseudomos import PseudoMOS

        return PseudoMOS(device=self.device, **opt)

    # ------------------------------------------------------------------ data
    def feed_data(self, data):
        self.ref = data['ref'].to(self.device)
        self.dist = data['dist'].to(self.device)
        self.maps = data['maps'].to(self.device)
        self.tier = data.get('tier')

    # ------------------------------------------------------------------ losses
    def stage1_losses(self):
        """OrderedDict of scalar losses of stage 1 for the fed batch (needs 2 distorted versions)."""
        if self.dist.shape[1] < 2:
            raise ValueError('stage 1 needs items with 2 distorted versions (dataset mode: pairs)')
        dnet = self.net.distortion
        size = self.ref.shape[-2:]
        fr = dnet.features(self.ref)
        f0, f1 = dnet.features(self.dist[:, 0]), dnet.features(self.dist[:, 1])
        m0, m1 = self.maps[:, 0], self.maps[:, 1]
        out = OrderedDict()
        kind = self.map_loss
        out['l_ref'] = 0.5 * (map_error(dnet.forward_features(f0, fr, size), m0, kind)
                              + map_error(dnet.forward_features(f1, fr, size), m1, kind))
        if self.pair_weight > 0:
            out['l_pair'] = self.pair_weight * map_error(dnet.forward_features(f0, f1, size), m0 - m1, kind)
        return out

    def tier_scores(self):
        """(B, T) relational scores of the fed tiers relative to their reference."""
        b, t = self.dist.shape[:2]
        ref = self.ref[:, None].expand(-1, t, -1, -1, -1).reshape(b * t, *self.ref.shape[1:])
        return self.net.relational_score(self.dist.reshape(b * t, *self.dist.shape[2:]), ref).view(b, t)

    @torch.no_grad()
    def quality_order(self):
        """(B, T) target quality of the fed set, higher = better: ``-tier`` or, with a teacher, ``-pseudo-MOS``
        (z-scored within each set)."""
        b, t = self.dist.shape[:2]
        if self.teacher is not None:
            ref = self.ref[:, None].expand(-1, t, -1, -1, -1).reshape(b * t, *self.ref.shape[1:])
            groups = torch.arange(b).repeat_interleave(t)
            pmos, _ = self.teacher(self.dist.reshape(b * t, *self.dist.shape[2:]), ref, groups=groups)
            return -pmos.view(b, t).to(self.dist.device)
        if self.tier is None or bool((self.tier < 0).any()):
            raise ValueError("stage 2 on data without tiers (mode: sets) needs train.teacher, e.g. {type: pseudomos}")
        return -self.tier.to(self.dist.device).float()

    def optimize_parameters(self, current_iter):
        self.zero_grad()
        if self.stage == 1:
            self.apply_losses(self.stage1_losses(), current_iter)
            return
        quality = self.quality_order()
        order = torch.argsort(quality, dim=1, descending=True, stable=True)  # best first
        scores = self.tier_scores()
        loss_dict = OrderedDict(l_listmle=listmle_loss(scores.gather(1, order)).mean())
        self.apply_losses(loss_dict, current_iter, {'train_tau': kendall_tau(scores.detach(), quality).mean()})

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def evaluate(self, dataloader):
        """{'relational_map_l1': mean |P(dist, ref) - maps|, 'relational_kendall': mean tau} on ``dataloader``."""
        self.net_rel.eval()
        l1, taus = [], []
        try:
            for batch in dataloader:
                self.feed_data(batch)
                b, n = self.dist.shape[:2]
                ref = self.ref[:, None].expand(-1, n, -1, -1, -1).reshape(b * n, *self.ref.shape[1:])
                dist = self.dist.reshape(b * n, *self.dist.shape[2:])
                maps = self.net.distortion(dist, ref)
                l1.append((maps - self.maps.reshape(b * n, *self.maps.shape[2:])).abs().mean(dim=(1, 2, 3)).cpu())
                if n > 2 or (self.tier is not None and bool((self.tier >= 0).all())):
                    s = self.net.score(maps).view(b, n)
                    taus.append(kendall_tau(s, -self.tier.to(s.device).float()).cpu())
        finally:
            self.net_rel.train()
        nan = float('nan')
        return {'relational_map_l1': float(torch.cat(l1).mean()) if l1 else nan,
                'relational_kendall': float(torch.cat(taus).mean()) if taus else nan}

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        dataset_name = dataloader.dataset.opt.get('name', 'val')
        metrics = (self.opt.get('val') or {}).get('metrics') or {}
        for name, m in metrics.items():
            if m.get('type') not in _VAL_TYPES:
                raise ValueError(f"val.metrics.{name}: RelationalModel supports type {' or '.join(_VAL_TYPES)}, "
                                 f"got {m.get('type')!r}")
            m.setdefault('better', _VAL_TYPES[m['type']])
        values = self.evaluate(dataloader)
        self.metric_results = {name: values[m['type']] for name, m in metrics.items()}
        self.record_validation(dataset_name, current_iter, tb_logger, f'Validation {dataset_name} (stage {self.stage})')

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_networks(self):
        return [(self.net_rel, 'net_rel', 'params')]

    def plain_state_dict(self):
        """``relational_<iter>.pth``: the plain state dict the scorer loads (``relational.pth`` format)."""
        return plain_weights(self.net)
