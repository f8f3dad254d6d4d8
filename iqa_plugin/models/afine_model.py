"""``AFINEModel``: fine-tune A-FINE on pairwise (2AFC) data with BasicSR (``model_type: AFINEModel``).

A-FINE is trained in three stages (Chen et al., CVPR 2025), selected by ``train.stage``:

1. CLIP ViT + naturalness head: the raw naturalness N of img1, img2 (and the reference, when the
   records carry ``label_1ref``/``label_2ref``) is compared pairwise;
2. fidelity head (alpha, beta) on the raw fidelity F(ref, img), CLIP frozen;
3. the two calibrators (eta3, eta4 of each) and the adaptive weight k, on D = A-FINE's combined score.

For each comparison of two lower-is-better scores D1, D2 the model predicts the Thurstone (case V)
probability that the first image is better, ``p = Phi((D2 - D1) / sqrt(2))``, and minimises the
fidelity loss ``1 - sqrt(p g) - sqrt((1 - p)(1 - g))`` against the label g = P(first better).

Options (besides BasicSR's usual ``datasets``/``path``/``logger``/``val``)::

    network_afine: {type: AFINE, weights: afine, clip_weights: clip-vit-b-32}  # AFINE() arguments
    path: {pretrain_network_afine: ~, strict_load_afine: true}  # our checkpoint or an afine.pth
    train:
      stage: 1                # 1, 2 or 3
      finetune_clip: true     # stage 1 only by default; CLIP stays frozen in stages 2 and 3
      optim: {type: AdamW, lr: !!float 5e-6, weight_decay: !!float 1e-3, betas: [0.9, 0.99]}
      optim_clip: ~           # optional separate optimizer options for CLIP (stage 1)
      ref_loss_weight: 1.0    # stage 1: weight of the img-vs-reference comparisons (when labelled)
      scheduler: {type: CosineAnnealingRestartLR, periods: [10000], restart_weights: [1], eta_min: !!float 1e-8}
      total_iter: 10000
    val:
      val_freq: 500
      metrics:  # registered functions called with the whole set's scores: fn(d1=, d2=, label=)
        acc: {type: calculate_2afc_accuracy}       # 2AFC accuracy on pairs with label != 0.5
        fid: {type: calculate_pairwise_fidelity}   # mean fidelity loss (better: lower)

Training runs in a single process (one GPU or the CPU); distributed launches are refused.

Checkpoints: ``net_afine_<iter>.pth`` (BasicSR layout, key ``params``) and ``afine_<iter>.pth`` in the
published ``afine.pth`` layout (``finetuned_clip`` with ``visual.*`` keys), which the A-FINE scorer,
loss and validator load with ``weights_path=``.
"""
import math
from collections import OrderedDict

import torch
from basicsr.archs import build_network
from basicsr.utils import get_root_logger
from basicsr.utils.registry import METRIC_REGISTRY, MODEL_REGISTRY

from iqa_plugin import weights as weights_mod
from iqa_plugin.archs.afine_arch import AFINE_KEYS, Encoded, fidelity_loss, thurstone_prob
from iqa_plugin.metrics.afine_metric import calculate_2afc_accuracy
from iqa_plugin.models.metric_train_base import MetricTrainModel

STAGES = (1, 2, 3)
# validators that take the scores of the whole validation set: (d1, d2, label) -> float
_DEFAULT_BETTER = {'calculate_2afc_accuracy': 'higher', 'calculate_pairwise_fidelity': 'lower'}


@MODEL_REGISTRY.register()
class AFINEModel(MetricTrainModel):
    """Three-stage pairwise training of A-FINE (see the module docstring)."""
    plain_prefix = 'afine'

    def __init__(self, opt):
        super().__init__(opt)
        if opt.get('dist') and opt.get('is_train'):
            raise ValueError('AFINEModel trains in a single process (one GPU or the CPU); '
                             'launch without --launcher pytorch/slurm')
        net_opt = dict(opt['network_afine'])
        net_opt.setdefault('type', 'AFINE')
        net_opt.setdefault('out_of_range', 'ignore')  # dataset images are in [0, 1]
        self.net_afine = build_network(net_opt).to(self.device)
        self.print_network(self.net_afine)
        load_path = (opt.get('path') or {}).get('pretrain_network_afine')
        if load_path:
            self.load_afine(load_path, strict=(opt.get('path') or {}).get('strict_load_afine', True))
        train_opt = opt.get('train') or {}
        self.stage = int(train_opt.get('stage', 1))
        if self.stage not in STAGES:
            raise ValueError(f'train.stage must be 1, 2 or 3, got {train_opt.get("stage")!r}')
        self.finetune_clip = bool(train_opt.get('finetune_clip', self.stage == 1))
        if self.is_train:
            self.init_training_settings()

    # ------------------------------------------------------------------ weights
    def load_afine(self, path, strict=True):
        """Load our BasicSR checkpoint (``params``) or a file in the published ``afine.pth`` layout."""
        sd = weights_mod.load_state_dict(weights_mod.resolve('afine', path))
        logger = get_root_logger()
        if isinstance(sd, dict) and all(k in sd for k in AFINE_KEYS):
            self.net_afine.load_afine_state_dict(sd, source=str(path))
            logger.info(f'Loaded A-FINE weights (afine.pth layout) from {path}')
            return
        for key in ('params', 'params_ema'):
            if isinstance(sd, dict) and key in sd:
                sd = sd[key]
                break
        sd = {k.removeprefix('module.'): v for k, v in sd.items()}
        self.net_afine.load_state_dict(sd, strict=strict)
        logger.info(f'Loaded AFINE network from {path}')

    # ------------------------------------------------------------------ setup
    def _stage_modules(self):
        net = self.net_afine
        if self.stage == 1:
            return [net.natural] + ([net.clip] if self.finetune_clip else [])
        if self.stage == 2:
            return [net.fidelity] + ([net.clip] if self.finetune_clip else [])
        return [net.natural_scale, net.fidelity_scale, net.adapter] + ([net.clip] if self.finetune_clip else [])

    def init_training_settings(self):
        train_opt = self.opt['train']
        self.net_afine.train()
        for p in self.net_afine.parameters():
            p.requires_grad_(False)
        for m in self._stage_modules():
            for p in m.parameters():
                p.requires_grad_(True)
        self.ref_loss_weight = float(train_opt.get('ref_loss_weight', 1.0))
        self.setup_optimizers()
        if train_opt.get('scheduler'):
            self.setup_schedulers()

    def setup_optimizers(self):
        train_opt = self.opt['train']
        optim_opt = train_opt.get('optim') or {'type': 'AdamW', 'lr': 1e-4}
        clip_opt = train_opt.get('optim_clip')
        net = self.net_afine
        head_params, clip_params = [], []
        for m in self._stage_modules():
            (clip_params if m is net.clip else head_params).extend(p for p in m.parameters() if p.requires_grad)
        if clip_opt and clip_params:
            self.optimizers.append(self.build_optimizer(clip_opt, clip_params, optim_opt.get('type', 'AdamW')))
            clip_params = []
        self.optimizers.insert(0, self.build_optimizer(optim_opt, head_params + clip_params, 'AdamW'))

    # ------------------------------------------------------------------ data
    def feed_data(self, data):
        self.img1 = data['img1'].to(self.device)
        self.img2 = data['img2'].to(self.device)
        self.ref = data['ref'].to(self.device)
        b = self.img1.shape[0]
        nan = torch.full((b,), float('nan'), device=self.device)
        self.label = data['label'].to(self.device).float().view(-1)
        self.label_1ref = data.get('label_1ref', nan).to(self.device).float().view(-1)
        self.label_2ref = data.get('label_2ref', nan).to(self.device).float().view(-1)

    # ------------------------------------------------------------------ scores
    def _encode_all(self, grad):
        """Encode img1, img2, ref in one CLIP pass (with a graph only when CLIP is trained)."""
        net = self.net_afine
        img1, img2, ref = (net._check(x, n) for x, n in ((self.img1, 'img1'), (self.img2, 'img2'), (self.ref, 'ref')))
        x = torch.cat([img1, img2, ref], dim=0)
        if grad and self.finetune_clip:
            enc = net.encode(x)
        else:
            with torch.no_grad():
                enc = net.encode(x)
        b = img1.shape[0]
        parts = [Encoded(enc.pixels[i * b:(i + 1) * b], [f[i * b:(i + 1) * b] for f in enc.feats]) for i in range(3)]
        return parts

    def stage_scores(self, grad=True):
        """Lower-is-better scores of img1, img2 (and ref in stage 1) that this stage compares: dict of (B,)."""
        net = self.net_afine
        e1, e2, er = self._encode_all(grad)
        if self.stage == 1:
            return {'d1': net.natural(e1), 'd2': net.natural(e2), 'dref': net.natural(er)}
        if self.stage == 2:
            return {'d1': net.fidelity(e1, er), 'd2': net.fidelity(e2, er)}
        t1, t2 = net.terms(e1, er, which='afine_all'), net.terms(e2, er, which='afine_all')
        return {'d1': t1['afine_all'], 'd2': t2['afine_all']}

    def losses(self, scores):
        """Fidelity losses of this batch: OrderedDict of scalars (``l_pair`` and, in stage 1, ``l_ref``)."""
        out = OrderedDict()
        out['l_pair'] = fidelity_loss(thurstone_prob(scores['d1'], scores['d2']), self.label).mean()
        if self.stage == 1 and self.ref_loss_weight > 0:
            terms = []
            for d, g in ((scores['d1'], self.label_1ref), (scores['d2'], self.label_2ref)):
                known = ~torch.isnan(g)
                if bool(known.any()):
                    terms.append(fidelity_loss(thurstone_prob(d[known], scores['dref'][known]), g[known]))
            if terms:
                out['l_ref'] = self.ref_loss_weight * torch.cat(terms).mean()
        return out

    def optimize_parameters(self, current_iter):
        self.zero_grad()
        scores = self.stage_scores(grad=True)
        self.apply_losses(self.losses(scores), current_iter)
        acc = calculate_2afc_accuracy(scores['d1'], scores['d2'], self.label)
        if not math.isnan(acc):
            self.log_dict['train_acc'] = acc

    @torch.no_grad()
    def test(self):
        self.net_afine.eval()
        try:
            self.output = self.stage_scores(grad=False)
        finally:
            self.net_afine.train()
        return self.output

    # ------------------------------------------------------------------ validation
    def evaluate(self, dataloader):
        """Scores of the current stage over ``dataloader``: dict of (N,) CPU tensors d1, d2, label."""
        d1, d2, labels = [], [], []
        for batch in dataloader:
            self.feed_data(batch)
            out = self.test()
            d1.append(out['d1'].float().cpu())
            d2.append(out['d2'].float().cpu())
            labels.append(self.label.cpu())
        return {'d1': torch.cat(d1), 'd2': torch.cat(d2), 'label': torch.cat(labels)}

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        dataset_name = dataloader.dataset.opt.get('name', 'val')
        metrics = (self.opt.get('val') or {}).get('metrics') or {}
        for m in metrics.values():
            m.setdefault('better', _DEFAULT_BETTER.get(m.get('type'), 'higher'))
        data = self.evaluate(dataloader)
        self.metric_results = {}
        for name, m in metrics.items():
            m = dict(m)
            fn = METRIC_REGISTRY.get(m.pop('type'))
            self.metric_results[name] = float(fn(**data, **m))
        n = int((data['label'] != 0.5).sum())
        self.record_validation(dataset_name, current_iter, tb_logger,
                               f'Validation {dataset_name} (stage {self.stage}, {len(data["label"])} pairs, {n} untied)')

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_networks(self):
        return [(self.net_afine, 'net_afine', 'params')]

    def plain_state_dict(self):
        """``afine_<iter>.pth`` in the published ``afine.pth`` layout (loadable with ``weights_path=``)."""
        return self.net_afine.afine_state_dict()
