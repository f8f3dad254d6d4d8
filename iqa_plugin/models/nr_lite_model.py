"""``NRLiteModel``: train the no-reference ``NRLite`` without human labels (``model_type: NRLiteModel``).

Data: ``PseudoMOSDataset`` groups (a pristine reference patch, N distorted versions from the
distortion engine, their pseudo-MOS and their raw oriented member scores). The network sees
single images only (no reference); the reference patch is used as one more, best, image.

Objective:

* ``rank``: within each group (reference + its N versions), RankNet logistic loss on the
  predicted badness ``-logit`` (the quality before its sigmoid, so a wrong order never sits on a
  saturated, gradient-free sigmoid) against the pseudo-MOS, the reference ranked best of its group;
* ``cross``: across the whole batch (different contents), the same loss against a content-free
  target ``t = mean over members m of raw_m / rms_batch(raw_m)`` (each member's oriented score
  divided by its root-mean-square over the batch; 0 for the references), so the score is
  comparable between images, which an NR metric needs;
* ``anchor``: ``(logit(ref) - logit(ref_target))^2`` for the pristine references, which pins the
  top of the (0, 1) scale (quality = sigmoid(logit));
* ``hard`` (against degenerate images; off unless ``hard_weight > 0``): ``hard_per_group`` hard negatives made from
  each reference patch (``hard_negatives``: constant mean colour, black or white, heavy blur,
  3-level posterisation, uniform noise, over-sharpening halos) must score below every image of
  their group: RankNet loss on every (group image, hard negative) pair. The pseudo-MOS ensemble
  never sees them (full-reference metrics do not rank "black" against "JPEG q10" sensibly); they
  are worse by construction.

Options::

    network_g: {type: NRLite, channels: [16, 24, 32, 48, 64], hidden: 64, pooled_stages: 3}
    train:
      init: kaiming            # variance-preserving init (see variance_preserving_init); none = PyTorch default
      rank_weight: 1.0
      cross_weight: 0.5
      anchor_weight: 0.1
      ref_target: 0.9
      rank_sigma: 1.0          # logistic slope on logit differences
      rank_min_gap: 0.05
      hard_weight: 0.0         # > 0 adds the hard-negative loss (see hard_negatives)
      hard_per_group: 2        # hard negatives drawn per group (kinds sampled without replacement)
      ema_decay, augment, optim_g, scheduler, total_iter (see ``iqa_plugin.models.label_free_base.LabelFreeModel``)
    val: {val_freq: N, save_img: false}   # logs srcc / plcc / srcc_group / srcc_tier vs pseudo-MOS

Checkpoints: ``net_g_<iter>.pth`` (BasicSR layout) and ``nr_lite_<iter>.pth``, a plain state dict
plus a ``config`` entry (``NRLite`` arguments) that ``build_nr_lite_scorer(weights_path=...)`` loads;
ship it with ``python -m iqa_plugin.weights.export --name nr-lite --checkpoint ...``.
"""
import math
from collections import OrderedDict

import torch
from basicsr.utils.registry import MODEL_REGISTRY

from iqa_plugin.weights.export import plain_weights
from iqa_plugin.models.label_free_base import LabelFreeModel
from iqa_plugin.utils.ranking import pairwise_rank_loss


def content_free_target(raw):
    """raw (B, N, M) oriented member scores (0 = identical, higher = worse) -> (B, N) mean over members of
    ``raw_m / rms(raw_m)`` with the root-mean-square taken over the whole batch."""
    rms = raw.pow(2).mean(dim=(0, 1), keepdim=True).sqrt().clamp_min(1e-8)
    return (raw / rms).mean(2)


HARD_KINDS = ('constant', 'black_white', 'heavy_blur', 'posterise', 'noise', 'halo')


def _box_blur(x, k):
    pad = k // 2
    return torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (pad, pad, pad, pad), mode='replicate'),
                                          k, stride=1)


def hard_negatives(ref, kinds, generator=None):
    """Degenerate versions of pristine patches, worse than any graded distortion by construction.

    Args:
        ref: (B, 3, P, P) RGB in [0, 1].
        kinds: (B, K) int tensor of indices into ``HARD_KINDS``.
        generator: torch.Generator for the noise and the black/white choice.
    Returns:
        (B, K, 3, P, P) in [0, 1].
    """
    b = ref.shape[0]
    gen = dict(generator=generator, device=ref.device) if generator is not None else dict(device=ref.device)
    blur = _box_blur(_box_blur(ref, 9), 9)  # two box passes ~ Gaussian sigma 3.7
    mild = _box_blur(ref, 5)
    white = (torch.rand(b, 1, 1, 1, **gen) < 0.5).to(ref.dtype)
    cand = torch.stack([ref.mean(dim=(2, 3), keepdim=True).expand_as(ref),
                        white.expand_as(ref),
                        blur,
                        torch.round(ref * 2) / 2,
                        torch.rand(ref.shape, **gen).to(ref.dtype),
                        (ref + 4.0 * (ref - mild)).clamp(0, 1)], 1)  # (B, len(HARD_KINDS), 3, P, P)
    return cand[torch.arange(b, device=ref.device).unsqueeze(1), kinds.to(ref.device)]


def variance_preserving_init(net, slope=0.2):
    """He (fan-in, LeakyReLU ``slope``) initialisation of every convolution, zero biases, and the two
    branches of each residual stage scaled by 1/sqrt(2), so activations keep their scale through the
    stages. With PyTorch's default initialisation NRLite's activations shrink about 2x per stage
    (std 0.03 after the last one), which makes label-free ranking training crawl."""
    from torch import nn

    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=slope, nonlinearity='leaky_relu')
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for stage in getattr(net, 'stages', []):
        with torch.no_grad():
            stage.conv2.weight.mul_(2 ** -0.5)
            stage.skip.weight.mul_(2 ** -0.5)
    return net


@MODEL_REGISTRY.register()
class NRLiteModel(LabelFreeModel):
    """NRLite trained on pseudo-MOS groups (see the module docstring)."""
    arch_defaults = {'type': 'NRLite'}
    plain_prefix = 'nr_lite'

    def init_training_settings(self):
        init = self.opt['train'].get('init', 'kaiming')
        if init not in ('kaiming', 'none', None):
            raise ValueError(f"train.init must be 'kaiming' or 'none', got {init!r}")
        if init == 'kaiming' and not (self.opt.get('path') or {}).get('pretrain_network_g'):
            variance_preserving_init(self.get_bare_model(self.net_g))
        super().init_training_settings()  # the EMA copy starts from the initialised weights
        t = self.opt['train']
        self.rank_weight = float(t.get('rank_weight', 1.0))
        self.cross_weight = float(t.get('cross_weight', 0.5))
        self.anchor_weight = float(t.get('anchor_weight', 0.1))
        self.ref_target = float(t.get('ref_target', 0.9))
        if not 0.0 < self.ref_target < 1.0:
            raise ValueError(f'ref_target must be in (0, 1), got {self.ref_target}')
        self.rank_sigma = float(t.get('rank_sigma', 1.0))
        self.rank_min_gap = float(t.get('rank_min_gap', 0.05))
        self.hard_weight = float(t.get('hard_weight', 0.0))
        self.hard_per_group = int(t.get('hard_per_group', 2))
        if self.hard_weight and not 1 <= self.hard_per_group <= len(HARD_KINDS):
            raise ValueError(f'hard_per_group must be in 1..{len(HARD_KINDS)}, got {self.hard_per_group}')
        self._hard_gen = torch.Generator().manual_seed(int(self.opt.get('manual_seed') or 0))

    def compute_losses(self):
        b, n = self.dist.shape[:2]
        x = torch.cat([self.ref.unsqueeze(1), self.dist], 1)  # (B, N + 1, 3, P, P), reference first
        net = self.get_bare_model(self.net_g)
        # Ranking on the pre-sigmoid logit: no saturation, so a wrong order always has a gradient.
        logit = net.head(net.features(x.reshape(b * (n + 1), *x.shape[2:]))).view(b, n + 1)
        bad = -logit
        losses = OrderedDict()
        if self.rank_weight:
            best = self.pmos.min(1, keepdim=True).values - 1.0  # the reference beats its whole group
            target = torch.cat([best, self.pmos], 1)
            losses['l_rank'] = self.rank_weight * pairwise_rank_loss(bad, target, self.rank_sigma, self.rank_min_gap,
                                                                     scale_free=False)
        if self.cross_weight:
            if self.raw is None:
                raise ValueError("NRLiteModel: cross_weight > 0 needs the dataset's 'raw' member scores")
            raw = torch.cat([self.raw.new_zeros(b, 1, self.raw.shape[2]), self.raw], 1)
            t = content_free_target(raw)
            losses['l_cross'] = self.cross_weight * pairwise_rank_loss(bad.reshape(1, -1), t.reshape(1, -1),
                                                                       self.rank_sigma, self.rank_min_gap,
                                                                       scale_free=False)
        if self.anchor_weight:
            target_logit = math.log(self.ref_target / (1.0 - self.ref_target))
            losses['l_anchor'] = self.anchor_weight * (logit[:, 0] - target_logit).pow(2).mean()
        if self.hard_weight:
            kinds = torch.stack([torch.randperm(len(HARD_KINDS), generator=self._hard_gen)[:self.hard_per_group]
                                 for _ in range(b)])
            hard = hard_negatives(self.ref.detach().cpu(), kinds, self._hard_gen).to(self.ref)
            k = hard.shape[1]
            bad_hard = -net.head(net.features(hard.reshape(b * k, *hard.shape[2:]))).view(b, 1, k)
            # every (group image, hard negative) pair: the hard negative must be worse
            losses['l_hard'] = self.hard_weight * torch.nn.functional.softplus(
                self.rank_sigma * (bad.unsqueeze(2) - bad_hard)).mean()
        return losses

    @staticmethod
    def badness(net, ref, dist):
        """(N,) ``-quality`` of dist (N, 3, P, P) (the reference is not used); higher = worse."""
        return -net(dist)

    @staticmethod
    def export_state_dict(net):
        """Plain state dict (CPU float32) plus ``config``: the ``NRLite`` constructor arguments."""
        return plain_weights(net, net.config())
