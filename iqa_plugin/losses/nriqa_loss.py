"""No-reference IQA as a training loss: push the restored image towards higher predicted quality.

``NRIQALoss(metric='musiq')`` scores ``pred`` with a frozen no-reference metric from the scoring
table (pyiqa metrics, ``nr-lite``) and returns a lower-is-better value normalised by the
metric's score range, so one ``loss_weight`` means about the same across metrics:

    higher-better metric: loss = (hi - s) / (hi - lo)        lower-better: loss = (s - lo) / (hi - lo)

``target`` is ignored (no reference needed). The metric network never trains: it is kept out of
``loss.parameters()`` / ``state_dict()``, its parameters have ``requires_grad=False`` and it stays
in eval mode when ``loss.train()`` is called. It follows ``pred`` to its device.
"""
from torch import nn

from basicsr.utils.registry import LOSS_REGISTRY

from iqa_plugin.scoring import create_metric, get_spec
from iqa_plugin.utils.loss_util import check_reduction, weighted_reduce



@LOSS_REGISTRY.register()
class NRIQALoss(nn.Module):
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
        super().__init__()
        check_reduction(reduction)
        spec = get_spec(metric)
        if spec.kind != 'nr':
            raise ValueError(f"NRIQALoss needs a no-reference metric; '{metric}' is full-reference")
        self.metric = metric
        self.loss_weight = float(loss_weight)
        self.reduction = reduction
        scorer = create_metric(metric, device='cpu', weights_path=weights_path, pretrained=pretrained, as_loss=True)
        if not getattr(scorer, 'loss_capable', True):
            raise ValueError(f"metric '{metric}' cannot be used as a loss; use it as a validator (calculate_nriqa)")
        # A plain attribute, not a submodule: kept out of parameters(), state_dict() and train().
        object.__setattr__(self, '_scorer', scorer)

    @property
    def scorer(self):
        return self._scorer

    def train(self, mode=True):
        super().train(mode)
        self._scorer.eval()
        return self

    def forward(self, pred, target=None, **kwargs):
        scorer = self._scorer
        if scorer.device != pred.device:
            scorer.to(pred.device)
        scores = scorer(pred)[scorer.output_names[0]]
        lo, hi = scorer.score_range
        if scorer.lower_better:
            loss = (scores - lo) / (hi - lo)
        else:
            loss = (hi - scores) / (hi - lo)
        return weighted_reduce(loss, self.reduction, self.loss_weight)

    def extra_repr(self):
        return f"metric='{self.metric}', loss_weight={self.loss_weight}, reduction='{self.reduction}'"
