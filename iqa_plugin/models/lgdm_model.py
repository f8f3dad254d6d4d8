"""``LGDMRegressorModel``: train the LGDM regressor on hyperfeatures of a frozen SD 1.x (``model_type: LGDMRegressorModel``).

The diffusion model is never trained: ``LGDMFeatures`` (``iqa_plugin.archs.lgdm_arch``) turns every
image into hyperfeatures once; they are cached (in memory, keyed by the item's identity, and in
``train.feature_cache`` when given, a file reused while the feature options are the same), so later
epochs only train the small ``LGDMRegressor``.

Data, either
* ``MOSCSVDataset`` items (``img``, ``score`` higher = better, ``key``): a user's MOS CSV; or
* ``PseudoMOSDataset`` groups (``ref``, ``dist``, ``pmos`` higher = worse, ``ref_path``, ``index``):
  label-free pseudo-MOS; quality = -pmos, the pristine reference ``ref_margin`` above its best version.

Targets are mapped to about [0, 1] by ``train.target_range: [lo, hi]`` ((q - lo) / (hi - lo)), the
scale of the ``lgdm`` table row. Loss: ``mse_weight`` x MSE + ``rank_weight`` x RankNet over the batch
(``iqa_plugin.utils.ranking.pairwise_rank_loss``). Validation logs SRCC and PLCC of the predictions
against the held-out targets.

Options::

    lgdm: {sd_path: <folder or hub id>, timesteps: [50, 100, 200], ddim_steps: 1, ddim_stride: 10,
           guidance_scale: 0.1, guidance_metric: milo-pseudomos, blocks: [down.1, mid, up.0, up.1],
           pooling: avg, seed: 0, prompt: auto, amp: ~, feature_batch: 4}
    network_g: {type: LGDMRegressor, regressor: linear | mlp, hidden: 256, dropout: 0.0}
    train: {target_range: [lo, hi], mse_weight: 1.0, rank_weight: 0.5, rank_sigma: 1.0, ref_margin: 1.0,
            feature_cache: ~, optim_g: {...}, scheduler: {...}, total_iter: N}

Checkpoints: ``net_g_<iter>.pth`` (BasicSR layout) and ``lgdm_<iter>.pth`` (``params`` + ``config``
with the feature options, the regressor's arguments and the target range) that
``build_lgdm_scorer(weights_path=...)`` loads.
"""
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import MODEL_REGISTRY
from torch.nn import functional as F

from iqa_plugin.archs.lgdm_arch import SD15_HUB_ID, LGDMRegressor, build_feature_extractor
from iqa_plugin.models.metric_train_base import MetricTrainModel
from iqa_plugin.utils.ranking import pairwise_rank_loss, plcc, srcc


@MODEL_REGISTRY.register()
class LGDMRegressorModel(MetricTrainModel):
    """LGDM regressor on cached hyperfeatures (see the module docstring)."""
    plain_prefix = 'lgdm'

    def __init__(self, opt):
        super().__init__(opt)
        lg = dict(opt.get('lgdm') or {})
        self.sd_path = str(lg.pop('sd_path', SD15_HUB_ID))
        amp = lg.pop('amp', None)
        self.feature_batch = int(lg.pop('feature_batch', 4))
        self.prompt = lg.get('prompt', 'auto')
        self.extractor = build_feature_extractor(self.device, self.sd_path, amp=amp, **lg)
        net_opt = dict(opt.get('network_g') or {})
        if net_opt.pop('type', 'LGDMRegressor') != 'LGDMRegressor':
            raise ValueError('LGDMRegressorModel: network_g.type must be LGDMRegressor')
        self.net_g = self.model_to_device(LGDMRegressor(self.extractor.dim, **net_opt))
        self.print_network(self.net_g)
        load_path = (opt.get('path') or {}).get('pretrain_network_g')
        if load_path:
            self.load_network(self.net_g, load_path, (opt['path'] or {}).get('strict_load_g', True), 'params')
        t = opt.get('train') or {}
        rng = t.get('target_range', [0.0, 1.0])
        if len(rng) != 2 or float(rng[1]) <= float(rng[0]):
            raise ValueError(f'train.target_range must be [lo, hi] with hi > lo, got {rng}')
        self.target_range = (float(rng[0]), float(rng[1]))
        self.ref_margin = float(t.get('ref_margin', 1.0))
        self.cache = {}
        self.cache_file = t.get('feature_cache')
        self._cache_dirty = False
        if self.cache_file and Path(self.cache_file).is_file():
            saved = torch.load(self.cache_file, map_location='cpu', weights_only=True)
            if saved.get('config') == self.feature_config():
                self.cache = dict(saved['features'])
                get_root_logger().info(f'LGDM: {len(self.cache)} cached feature vectors from {self.cache_file}')
            else:
                get_root_logger().info(f'LGDM: {self.cache_file} was made with other feature options; recomputing')
        if self.is_train:
            self.init_training_settings()

    def feature_config(self):
        return {**self.extractor.config(), 'sd_path': self.sd_path, 'prompt': self.prompt}

    def init_training_settings(self):
        t = self.opt['train']
        self.net_g.train()
        self.mse_weight = float(t.get('mse_weight', 1.0))
        self.rank_weight = float(t.get('rank_weight', 0.5))
        self.rank_sigma = float(t.get('rank_sigma', 1.0))
        self.optimizers.append(self.build_optimizer(t.get('optim_g', {'type': 'Adam', 'lr': 1e-3}),
                                                    self.net_g.parameters()))
        if t.get('scheduler'):
            self.setup_schedulers()

    # ------------------------------------------------------------------ data
    def _items(self, data):
        """(images (M, 3, H, W), quality (M,) higher = better, keys [M])."""
        if 'img' in data:
            return data['img'], data['score'].float(), [f'mos:{k}' for k in data['key']]
        if 'dist' in data and 'pmos' in data:
            ref, dist, q = data['ref'], data['dist'], -data['pmos'].float()
            b, n = dist.shape[:2]
            q = torch.cat([q.max(1, keepdim=True).values + self.ref_margin, q], 1)
            imgs = torch.cat([ref.unsqueeze(1), dist], 1).reshape(b * (n + 1), *dist.shape[2:])
            idx = [int(i) for i in data['index']]
            keys = [f'pmos:{p}:{i}:{m}' for p, i in zip(data['ref_path'], idx) for m in range(n + 1)]
            return imgs, q.reshape(-1), keys
        raise ValueError("LGDMRegressorModel: data needs 'img' and 'score' (MOSCSVDataset) or 'ref', 'dist' and "
                         f"'pmos' (PseudoMOSDataset); got keys {sorted(data)}")

    def features(self, imgs, keys):
        """(M, F) hyperfeatures, computed for keys not in the cache, in chunks of ``feature_batch``."""
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        for s in range(0, len(todo), self.feature_batch):
            chunk = todo[s:s + self.feature_batch]
            f = self.extractor(imgs[chunk].to(self.device)).cpu()
            for i, row in zip(chunk, f):
                self.cache[keys[i]] = row.clone()
            self._cache_dirty = True
        return torch.stack([self.cache[k] for k in keys]).to(self.device)

    def feed_data(self, data):
        imgs, q, keys = self._items(data)
        self.feat = self.features(imgs, keys)
        lo, hi = self.target_range
        self.target = ((q - lo) / (hi - lo)).to(self.device)

    # ------------------------------------------------------------------ training
    def optimize_parameters(self, current_iter):
        if self.feat.shape[0] < 2:
            raise ValueError('LGDMRegressorModel: training batches need >= 2 images (batch_size_per_gpu >= 2)')
        self.net_g.train()
        self.zero_grad()
        pred = self.net_g(self.feat)
        losses = OrderedDict()
        if self.mse_weight:
            losses['l_mse'] = self.mse_weight * F.mse_loss(pred, self.target)
        if self.rank_weight:
            losses['l_rank'] = self.rank_weight * pairwise_rank_loss(-pred[None], -self.target[None], self.rank_sigma,
                                                                     scale_free=False)
        self.apply_losses(losses, current_iter)

    # ------------------------------------------------------------------ validation
    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img=False):
        name = dataloader.dataset.opt['name']
        self.net_g.eval()
        preds, targets = [], []
        with torch.no_grad():
            for data in dataloader:
                self.feed_data(data)
                preds.append(self.net_g(self.feat).cpu())
                targets.append(self.target.cpu())
        self.net_g.train()
        p, t = torch.cat(preds).numpy(), torch.cat(targets).numpy()
        self.metric_results = OrderedDict(srcc=srcc(p, t), plcc=plcc(p, t),
                                          rmse=float(np.sqrt(np.mean((p - t) ** 2))))
        self.record_validation(name, current_iter, tb_logger, f'Validation {name} ({len(p)} images, held out)',
                               better={'srcc': 'higher', 'plcc': 'higher', 'rmse': 'lower'})
        self.save_feature_cache()

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_networks(self):
        return [(self.net_g, 'net_g', 'params')]

    def plain_state_dict(self):
        net = self.get_bare_model(self.net_g)
        return {'params': {k: v.detach().cpu() for k, v in net.state_dict().items()},
                'config': {'features': self.feature_config(), 'regressor': net.config(),
                           'target_range': list(self.target_range)}}

    @master_only  # one writer in DDP (rank 0's features; the cache is only a speed-up)
    def save_feature_cache(self):
        if self.cache_file and self._cache_dirty:
            Path(self.cache_file).parent.mkdir(parents=True, exist_ok=True)
            tmp = f'{self.cache_file}.part'
            torch.save({'config': self.feature_config(), 'features': self.cache}, tmp)
            os.replace(tmp, self.cache_file)
            self._cache_dirty = False

    def save(self, epoch, current_iter):
        super().save(epoch, current_iter)
        self.save_feature_cache()
