"""No-reference IQA as a training loss: push the restored image towards higher predicted quality.

``NRIQALoss(metric='musiq')`` scores ``pred`` with a frozen no-reference metric from the scoring
table (pyiqa metrics, ``nr-lite``) and returns a lower-is-better value normalised by the
metric's score range, so one ``loss_weight`` means about the same across metrics:

    higher-better metric: loss = (hi - s) / (hi - lo)        lower-better: loss = (s - lo) / (hi - lo)

``target`` is ignored (no reference needed). The metric network never trains: it is kept out of
``loss.parameters()`` / ``state_dict()``, its parameters have ``requires_grad=False`` and it stays
in eval mode when ``loss.train()`` is called. It follows ``pred`` to its device. Precision and input
checks follow ``FrozenIQALoss`` (float32 outside autocast; values read back on the first call only).
"""
from basicsr.utils.registry import LOSS_REGISTRY

from iqa_plugin.losses.frozen_iqa import FrozenIQALoss
from iqa_plugin.scoring.scorer import NRScorer


@LOSS_REGISTRY.register()
class NRIQALoss(FrozenIQALoss):
    """Loss from a no-reference quality metric.

    Args:
        metric (str): scoring-table name of a no-reference metric (``musiq``, ``topiq_nr``,
            ``liqe``, ``nima``, ``paq2piq``, ``arniqa``, ``clipiqa``, ``nr-lite``, ...).
        loss_weight (float): multiplier.
        weights_path (str | None): explicit weights file for the metric.
        pretrained (bool): False builds the metric with random weights (tests, structure only).
        reduction (str): 'mean' | 'sum' | 'none' over the batch.
    Forward:
        pred (Tensor): (B, 3, H, W) RGB in [0, 1]; target: ignored.
        returns a scalar (or (B,) with reduction='none').
    """

    def __init__(self, metric='musiq', loss_weight=1.0, weights_path=None, pretrained=True, reduction='mean'):
        name, opts = self.metric_of(metric=metric, weights_path=weights_path, pretrained=pretrained)
        super().__init__(name, opts, loss_weight=loss_weight, reduction=reduction)

    @classmethod
    def metric_of(cls, metric='musiq', weights_path=None, pretrained=True, **_):
        from iqa_plugin.scoring import get_spec

        spec = get_spec(metric)
        if spec.kind != 'nr':
            raise ValueError(f"NRIQALoss needs a no-reference metric; '{metric}' is full-reference")
        if not spec.loss_capable:
            raise ValueError(f"metric '{metric}' cannot be a loss ({spec.loss}); use it as a validator "
                             f"(calculate_iqa, metric: {metric})")
        return metric, {'weights_path': weights_path, 'pretrained': bool(pretrained)}

    @property
    def scorer(self):
        """The frozen scorer on the CPU (the one built at construction)."""
        return self.frozen_scorer('cpu')

    def per_image(self, pred, target=None):
        scorer = self.frozen_scorer(pred.device)
        if isinstance(scorer, NRScorer):  # input checks by this loss's policy (FrozenIQALoss), then the network
            return self.normalise(scorer.score(self.prepare_image(pred, name='pred', min_size=scorer.min_size)))
        return self.normalise(scorer(pred)[scorer.output_names[0]])
