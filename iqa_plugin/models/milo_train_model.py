"""``MILOPseudoMOSModel``: train MILO from scratch without human labels (``model_type: MILOPseudoMOSModel``).

Data: ``PseudoMOSDataset`` groups, each a reference patch with N distorted versions from the
distortion engine and their pseudo-MOS (``iqa_plugin.labels.pseudomos``; higher = worse, normalised
within the group).

Objective, per group (the pseudo-MOS is only trusted *within* a reference's group, where content
bias cancels):

* ``rank``: RankNet logistic loss over every pair of the group, on MILO's ``quality_score``
  (higher = worse, 0 = identical), pairs weighted by their pseudo-MOS gap, differences divided by
  the group's score spread (orders the scores without fixing their range);
* ``plcc``: ``1 - Pearson(quality_score, pseudo-MOS)`` within the group, a scale-free regression
  term that makes the score roughly linear in the label instead of merely monotonic;
* ``rank_raw``: the same ranking loss on ``raw_error`` (the value ``MILOLoss`` optimises), so the
  mask alone already orders distortions, not only the scaler network on top of it.

Options::

    network_g: {type: MILO, in_channels: 3, weights: ~}     # ~ = random init (train from scratch)
    train:
      rank_weight: 1.0
      rank_sigma: 2.0          # logistic slope on spread-normalised score differences
      rank_min_gap: 0.05       # pseudo-MOS gaps below this count as ties
      plcc_weight: 0.5
      raw_rank_weight: 0.5
      ema_decay: 0.95, augment: true, crop_size: 40, optim_g, scheduler, total_iter (see ``iqa_plugin.models.label_free_base.LabelFreeModel``)
    val: {val_freq: N, save_img: false}   # logs srcc / plcc / srcc_group / srcc_tier vs pseudo-MOS

Checkpoints: ``net_g_<iter>.pth`` (BasicSR layout, ``params`` and ``params_ema``) and
``milo_pseudomos_<iter>.pth``: a plain state dict in the official key layout
(``mask_finder_1.netBasic.*``, ``scaler_network.model.*``), loadable with
``build_milo_scorer(weights='milo-pseudomos', weights_path=...)``; ship it with
``python -m iqa_plugin.weights.export --name milo-pseudomos --checkpoint ...``.
"""
from collections import OrderedDict

from basicsr.utils.registry import MODEL_REGISTRY

from iqa_plugin.weights.export import plain_weights
from iqa_plugin.models.label_free_base import LabelFreeModel
from iqa_plugin.utils.ranking import group_plcc_loss, pairwise_rank_loss


def milo_group_scores(net, ref, dist):
    """MILO on groups: ref (B, 3, P, P), dist (B, N, 3, P, P) -> (quality_score, raw_error), each (B, N)."""
    b, n = dist.shape[:2]
    d = dist.reshape(b * n, *dist.shape[2:])
    r = ref.unsqueeze(1).expand(b, n, *ref.shape[1:]).reshape(b * n, *ref.shape[1:])
    out = net(d, r)
    return out.quality_score.view(b, n), out.raw_error.view(b, n)


@MODEL_REGISTRY.register()
class MILOPseudoMOSModel(LabelFreeModel):
    """MILO trained on pseudo-MOS groups (see the module docstring)."""
    arch_defaults = {'type': 'MILO', 'in_channels': 3, 'weights': None}
    plain_prefix = 'milo_pseudomos'

    def init_training_settings(self):
        super().init_training_settings()
        t = self.opt['train']
        self.rank_weight = float(t.get('rank_weight', 1.0))
        self.rank_sigma = float(t.get('rank_sigma', 2.0))
        self.rank_min_gap = float(t.get('rank_min_gap', 0.05))
        self.plcc_weight = float(t.get('plcc_weight', 0.5))
        self.raw_rank_weight = float(t.get('raw_rank_weight', 0.5))

    def compute_losses(self):
        q, raw = milo_group_scores(self.net_g, self.ref, self.dist)
        losses = OrderedDict()
        if self.rank_weight:
            losses['l_rank'] = self.rank_weight * pairwise_rank_loss(q, self.pmos, self.rank_sigma, self.rank_min_gap)
        if self.plcc_weight:
            losses['l_plcc'] = self.plcc_weight * group_plcc_loss(q, self.pmos)
        if self.raw_rank_weight:
            losses['l_rank_raw'] = self.raw_rank_weight * pairwise_rank_loss(raw, self.pmos, self.rank_sigma,
                                                                             self.rank_min_gap)
        return losses

    @staticmethod
    def badness(net, ref, dist):
        """(N,) quality_score of dist (N, 3, P, P) against ref (1, 3, P, P); higher = worse."""
        return milo_group_scores(net, ref, dist.unsqueeze(0))[0][0]

    @staticmethod
    def export_state_dict(net):
        """Plain state dict, official MILO key layout, CPU float32 tensors."""
        return plain_weights(net)
