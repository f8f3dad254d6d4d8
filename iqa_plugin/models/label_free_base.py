"""``LabelFreeModel``: the BasicSR model base of the label-free trainings (``MILOPseudoMOSModel``, ``NRLiteModel``).

One network ``net_g`` trained on ``PseudoMOSDataset`` groups and validated against the pseudo-MOS
(SRCC / PLCC; the validation items are computed once and kept in memory, so an on-the-fly
validation set runs the slow pseudo-MOS ensemble only at the first validation). Optimizer, training
step, validation log and checkpoint files come from ``MetricTrainModel``.

Conventions: pseudo-MOS is **higher = worse** (``iqa_plugin.labels.pseudomos``); ``badness`` scores are
oriented the same way (a higher-is-better model returns ``-score``).
"""
import numpy as np
import torch

from iqa_plugin.labels.augment import augment_group, random_crop_group
from iqa_plugin.models.metric_train_base import MetricTrainModel
from iqa_plugin.scoring import freeze
from iqa_plugin.utils.ranking import correlation_report


class LabelFreeModel(MetricTrainModel):
    """BasicSR model training one network ``net_g`` on ``PseudoMOSDataset`` groups.

    Subclasses set ``arch_defaults`` (merged under ``network_g``) and ``plain_prefix``, implement
    ``compute_losses()`` (an ordered dict of weighted scalar losses; their sum is minimised),
    ``badness(net, ref, dist)`` and ``export_state_dict(net)`` (the plain file the scorer loads).
    Options used here::

        network_g: {type: ..., ...}
        path: {pretrain_network_g: ~, strict_load_g: true, param_key_g: params}
        train:
          ema_decay: 0.999     # 0 = no EMA copy
          augment: true        # same random flip / rot90 for a reference and its group
          crop_size: ~         # train on a random crop of each group (speed; the label is the patch's)
          optim_g: {type: Adam, lr: !!float 1e-3}   # any torch.optim class
          scheduler: {type: CosineAnnealingRestartLR, periods: [N], restart_weights: [1], eta_min: !!float 1e-5}
          total_iter: N

    Validation feeds every item of the validation loader to ``badness`` (no grad; ref (1, 3, P, P),
    dist (N, 3, P, P)) and logs ``srcc``, ``plcc``, ``srcc_group`` and ``srcc_tier`` against the
    pseudo-MOS (all higher = better).
    """
    arch_defaults = {}

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
            freeze(self.net_g_ema)
        self.augment = bool(train_opt.get('augment', True))
        self.crop_size = int(train_opt.get('crop_size') or 0)
        params = [p for p in self.net_g.parameters() if p.requires_grad]
        if not params:
            raise ValueError('network_g has no trainable parameters (built with weights and frozen?)')
        self.optimizer_g = self.build_optimizer(train_opt['optim_g'], params)
        self.optimizers.append(self.optimizer_g)
        self.setup_schedulers()

    def model_ema(self, decay=0.999):
        super().model_ema(decay)  # BasicSR's: the parameters' moving average
        net_g = self.get_bare_model(self.net_g)
        with torch.no_grad():
            # buffers (e.g. NRLite's feature standardisation estimates) are state, not averages: copied
            ema_buffers = dict(self.net_g_ema.named_buffers())
            for k, b in net_g.named_buffers():
                if k in ema_buffers:
                    ema_buffers[k].copy_(b)

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
        self.zero_grad()
        self.apply_losses(self.compute_losses(), current_iter)
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

    # ------------------------------------------------------------------ validation
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
        self.record_validation(name, current_iter, tb_logger, f'Validation {name} (vs pseudo-MOS)',
                               better={k: 'higher' for k in self.metric_results})

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_networks(self):
        if getattr(self, 'ema_decay', 0) > 0:
            return [([self.net_g, self.net_g_ema], 'net_g', ['params', 'params_ema'])]
        return [(self.net_g, 'net_g', 'params')]

    def plain_state_dict(self):
        return self.export_state_dict(self.eval_net())
