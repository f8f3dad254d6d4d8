"""``FrozenIQALoss``: the one base of the plugin's losses that optimise a frozen IQA metric.

``MILOLoss``, ``MILOLatentLoss``, ``RelationalLoss``, ``AFINELoss`` and ``NRIQALoss`` specialise it. The base
owns what every such loss needs, so none of them repeats it:

* the frozen network comes from the one cache ``iqa_plugin.scoring.get_cached_metric`` (built once per
  process and device, shared with the validators); it is never a submodule, so it is not in
  ``parameters()``, ``state_dict()``, an optimizer or a DDP wrapper, and a parent's ``.train()`` cannot put
  it out of eval mode (the scorers' ``train()`` always keeps eval as well);
* it is built on the CPU at construction (``scoring.preflight_metric``), so missing weights fail before
  training starts; that CPU copy is released once the loss runs on another device;
* precision: ``forward`` runs ``per_image`` in float32 outside autocast (``scoring.float32_scoring``), so
  the loss value does not depend on the training step's ``amp`` or on the device;
* input checks (``prepare_pair`` / ``prepare_image`` here, ``utils.image.prepare_image``'s policy): the
  first call checks values (NaN/Inf, range: one read-back); every later call checks shapes and dtype
  only and reads nothing back to the host, so a GPU step is not synchronised (``out_of_range='error'``
  still reads the range each call, as asked). ``'clamp'`` is straight-through (the gradient reaches
  out-of-range pixels);
* ``loss_weight`` and ``reduction`` ('mean' | 'sum' | 'none'; 'none' returns the per-image loss, shape (B,));
* ``set_progress(p)`` for schedules (the SR models call it with ``current_iter / total_iter``);
* ``normalise(scores)``: the table's score range and direction turn a score into a lower-is-better value
  in about [0, 1], so one ``loss_weight`` means about the same across metrics;
* ``metric_of(**yaml_keys)`` (a classmethod): the table row and factory options a loss block will load,
  which the option pre-flight check resolves before anything is written.

A subclass implements ``metric_of`` and ``per_image(pred, target) -> (B,)``.
"""
import torch
from torch import nn

from iqa_plugin import scoring
from iqa_plugin.utils import image as image_utils
from iqa_plugin.utils.loss_util import check_reduction, weighted_reduce

OUT_OF_RANGE = ('clamp', 'error', 'ignore')


class FrozenIQALoss(nn.Module):
    """Base class; see the module docstring.

    Args:
        metric (str): scoring-table name.
        metric_opts (dict): factory options of that metric (weights, weights_path, ...).
        loss_weight (float): multiplier.
        reduction (str): 'mean' (over the batch), 'sum' or 'none' ((B,) per image).
        out_of_range (str): inputs outside [0, 1]: 'clamp' (straight-through clamp; warned on the first
            call), 'error' (checked every call: reads values back) or 'ignore'.
    """

    def __init__(self, metric, metric_opts=None, loss_weight=1.0, reduction='mean', out_of_range='clamp'):
        super().__init__()
        check_reduction(reduction)
        if out_of_range not in OUT_OF_RANGE:
            raise ValueError(f"out_of_range must be one of {', '.join(OUT_OF_RANGE)}, got {out_of_range!r}")
        self.spec = scoring.get_spec(metric)
        self.metric = metric
        self.metric_opts = {k: v for k, v in (metric_opts or {}).items() if v is not None}
        self.loss_weight = float(loss_weight)
        self.reduction = reduction
        self.out_of_range = out_of_range
        self.progress = 0.0
        self._values_checked = False  # the first successful forward checks input values (see module docstring)
        # Missing weights fail here, not at the first step: resolved even when the cache already holds the
        # network (a file that has gone since is reported, as a fresh process would report it).
        scoring.resolve_weights(metric, **self.metric_opts)
        scoring.preflight_metric(metric, **self.metric_opts)

    @classmethod
    def metric_of(cls, **kwargs):
        """(scoring-table name, factory options) loaded by a loss with these keyword arguments."""
        raise NotImplementedError

    def frozen_scorer(self, device='cpu'):
        """The shared frozen scorer on ``device`` (from ``scoring.get_cached_metric``)."""
        return scoring.get_cached_metric(self.metric, device, **self.metric_opts)

    def check_values_now(self):
        """Whether this call reads input values back: the first call, and every call with 'error'."""
        return not self._values_checked or self.out_of_range == 'error'

    def prepare_image(self, x, **kwargs):
        """``utils.image.prepare_image`` with this loss's ``out_of_range`` and value-check policy."""
        return image_utils.prepare_image(x, out_of_range=self.out_of_range, check_values=self.check_values_now(),
                                         **kwargs)

    def prepare_pair(self, dist, ref, **kwargs):
        """``utils.image.prepare_pair`` with this loss's ``out_of_range`` and value-check policy."""
        return image_utils.prepare_pair(dist, ref, out_of_range=self.out_of_range,
                                        check_values=self.check_values_now(), **kwargs)

    def set_progress(self, p):
        """Training progress ``p = current_iter / total_iter``, clipped to [0, 1]."""
        self.progress = min(max(float(p), 0.0), 1.0)

    def normalise(self, scores):
        """Scores in the metric's own scale -> lower-is-better loss values, (hi - lo) -> 1
        (``scoring.normalise_score``)."""
        return scoring.normalise_score(scores, self.spec.score_range, self.spec.lower_better, as_loss=True)

    def per_image(self, pred, target):
        """(B,) loss per image before ``loss_weight`` and the reduction."""
        raise NotImplementedError

    def forward(self, pred, target=None, weight=None):
        """``pred``, ``target``: (B, C, H, W) -> scalar, or (B,) with ``reduction='none'``.

        ``weight`` is accepted for BasicSR's loss signature; spatial weights are not supported (each of
        these losses weighs pixels through its own network) and raise ValueError.
        """
        if weight is not None:
            raise ValueError(f'{type(self).__name__} does not take spatial weights (weight=...)')
        device_type = pred.device.type if torch.is_tensor(pred) else 'cpu'
        with scoring.float32_scoring(device_type):
            per = self.per_image(scoring.as_float32(pred), scoring.as_float32(target))
        self._values_checked = True
        return weighted_reduce(per, self.reduction, self.loss_weight)

    def extra_repr(self):
        return f'metric={self.metric!r}, loss_weight={self.loss_weight}, reduction={self.reduction!r}'
