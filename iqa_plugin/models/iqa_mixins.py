"""The IQA training features as mixins over BasicSR's own models (no copy of their loops).

``IQAModelMixin`` put before a BasicSR model class gives it, with the same YAML blocks in every model:

* ``train.iqa_opt``: named plugin losses (``{milo: {type: MILOLoss, loss_weight: 0.05}}``), added to the
  model's pixel loss and logged as ``l_<name>``; losses with ``set_progress(p)`` get
  ``p = current_iter / total_iter`` (curricula). With ``iqa_opt`` alone (no pixel or perceptual loss) the
  model trains on the IQA losses only.
* ``val.metrics`` blocks whose ``type`` is a scoring-table name (``milo``, ``nr-lite``, ``musiq``...) run as
  ``calculate_iqa`` on the output tensors (no uint8 rounding); ``better`` defaults from the table for every
  plugin validator, so logs, TensorBoard and selection use the metric's real direction.
* ``val.select_by``: checkpoint selection (``iqa_plugin.models.selection``) saving ``net_g_best``.
* ``val.axis_report``: per validation, what changed in the outputs against the previous or best checkpoint, axis
  by axis (``iqa_plugin.models.axis_report``): one sentence in the log, ``axes/<axis>`` and a figure in TensorBoard.
* ``logger.progress_bar: true``: a tqdm bar of the iterations on rank 0.
* training state: ``iqa_best`` (the selection's state) and any other ``extra_training_state`` entry are added
  to BasicSR's ``<iter>.state`` file and restored on resume.
* a validation right after another one with no training step in between (BasicSR's final validation at
  ``total_iter + 1``) is skipped.

How each hooks in (BasicSR 1.4.2's seams; every override calls ``super()``):

* losses: after BasicSR builds ``cri_pix``, it is replaced by ``IQALossBundle(cri_pix, iqa losses)``, which
  every BasicSR model already calls with (output, target) in its generator step (SRModel, SRGANModel,
  ESRGANModel, RealESRGANModel). After ``super().optimize_parameters`` the log gets the separate terms.
* validators: ``nondist_validation`` runs inside ``val_tensors.collecting()`` and ``get_current_visuals``
  records the tensors that ``calculate_iqa`` then scores; selection runs after the loop.
* devices: ``model_to_device`` (``iqa_plugin.basicsr_glue.dist.CPUDistributedMixin``) builds a CPU DDP under
  ``--launcher pytorch`` without a GPU and is BasicSR's own method otherwise.
* state: ``save_training_state`` adds keys to the file BasicSR has just written (atomic rewrite).
"""
import os
from collections import OrderedDict

import torch
from basicsr.losses import build_loss
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info
from torch import nn
from tqdm import tqdm

from iqa_plugin import scoring
from iqa_plugin.models.axis_report import AxisReportMixin
from iqa_plugin.models.selection import build_selection, validator_metric
from iqa_plugin.utils import val_tensors
from iqa_plugin.basicsr_glue.dist import CPUDistributedMixin, read_training_state, wait_for_rank0_validation


class IQALossBundle(nn.Module):
    """BasicSR's pixel loss (or nothing) plus the named IQA losses, called as one ``cri_pix``.

    ``forward(output, target)`` returns the sum; ``terms`` keeps the last call's values (``l_pix`` when a
    pixel loss exists, ``l_<name>`` per IQA loss) for the log.
    """

    def __init__(self, pixel, losses):
        super().__init__()
        self.pixel = pixel
        self.losses = nn.ModuleDict(losses)
        self.terms = None

    def forward(self, output, target):
        terms = OrderedDict()
        if self.pixel is not None:
            terms['l_pix'] = self.pixel(output, target)
        for name, loss in self.losses.items():
            terms[f'l_{name}'] = loss(output, target)
        self.terms = terms
        return sum(terms.values())


class IQALossMixin:
    """``train.iqa_opt`` losses, their progress and their log entries."""

    def init_training_settings(self):
        train_opt = self.opt['train']
        self.cri_iqa = OrderedDict()
        for name, block in (train_opt.get('iqa_opt') or {}).items():
            loss = build_loss(dict(block)).to(self.device)
            trainable = [n for n, p in loss.named_parameters() if p.requires_grad]
            if trainable:
                raise ValueError(f'loss train.iqa_opt.{name} has trainable parameters: {trainable[:3]}')
            self.cri_iqa[name] = loss
        self.total_iter = int(train_opt.get('total_iter', 0)) or 1
        iqa_only = bool(self.cri_iqa) and not train_opt.get('pixel_opt') and not train_opt.get('perceptual_opt')
        if iqa_only:  # BasicSR's models refuse to train without a pixel or perceptual loss
            train_opt['pixel_opt'] = {'type': 'L1Loss', 'loss_weight': 0.0}
        super().init_training_settings()
        if self.cri_iqa:
            self.cri_pix = IQALossBundle(None if iqa_only else self.cri_pix, self.cri_iqa).to(self.device)

    def set_progress(self, current_iter):
        """``current_iter / total_iter`` (clipped) to every IQA loss that follows training progress."""
        p = min(max(current_iter / self.total_iter, 0.0), 1.0)
        for loss in self.cri_iqa.values():
            if hasattr(loss, 'set_progress'):
                loss.set_progress(p)
        return p

    def optimize_parameters(self, current_iter):
        self.set_progress(current_iter)
        bundle = self.cri_pix if isinstance(getattr(self, 'cri_pix', None), IQALossBundle) else None
        if bundle is not None:
            bundle.terms = None
        super().optimize_parameters(current_iter)
        if bundle is not None and bundle.terms is not None:
            # BasicSR logged the bundle's sum as its pixel loss: log the terms instead
            for key in ('l_pix', 'l_g_pix'):
                if key in self.log_dict:
                    del self.log_dict[key]
                    terms = OrderedDict((key if k == 'l_pix' else k, v) for k, v in bundle.terms.items())
                    self.log_dict.update(self.reduce_loss_dict(terms))
                    break


class IQAValidationMixin:
    """Tensor validators, table defaults for ``better``, and no validation twice on the same weights."""

    def _iqa_normalise_metrics(self):
        """``type: <table name>`` -> ``calculate_iqa``; ``better`` from the table for plugin validators."""
        for name, block in ((self.opt.get('val') or {}).get('metrics') or {}).items():
            if block.get('type') in scoring.METRICS:
                block['metric'] = block.pop('type')
                block['type'] = 'calculate_iqa'
            found = validator_metric(block)
            if found is not None:
                block.setdefault('better', scoring.get_spec(found[0]).better)

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        steps = getattr(self, '_iqa_steps', 0)
        seen = getattr(self, '_iqa_validated', {})
        name = dataloader.dataset.opt['name']
        if self.opt.get('is_train') and steps and seen.get(name, (None,))[0] == steps:
            get_root_logger().info(f'Validation {name} @ iter {current_iter} skipped: no training step since the '
                                   f'validation @ iter {seen[name][1]}')
            return
        super().validation(dataloader, current_iter, tb_logger, save_img)
        if self.opt.get('dist'):  # BasicSR validates on rank 0 only: the others wait here, not in NCCL
            wait_for_rank0_validation(self.opt)
        seen[name] = (steps, current_iter)
        self._iqa_validated = seen

    def optimize_parameters(self, current_iter):
        super().optimize_parameters(current_iter)
        self._iqa_steps = getattr(self, '_iqa_steps', 0) + 1

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        self._iqa_normalise_metrics()
        self._iqa_val_index = 0
        self.validating = True  # feed_data overrides can tell validation batches from training batches
        try:
            with val_tensors.collecting():
                super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            self.validating = False
        self.after_validation(dataloader.dataset.opt['name'], current_iter, tb_logger)

    def validation_extras(self):
        """Hook: extras recorded with each validation image for the validators (``val_tensors.extras``)."""
        return {}

    def get_current_visuals(self):
        visuals = super().get_current_visuals()
        val_tensors.record(visuals['result'], visuals.get('gt'), **self.validation_extras())
        self.on_validation_image(self._iqa_val_index if hasattr(self, '_iqa_val_index') else 0, visuals)
        self._iqa_val_index = getattr(self, '_iqa_val_index', 0) + 1
        return visuals

    def on_validation_image(self, index, visuals):
        """Hook: each validation image's visuals (CPU tensors), before BasicSR's metrics run."""

    def after_validation(self, dataset_name, current_iter, tb_logger):
        """Hook: after BasicSR's validation loop and logging (``self.metric_results`` holds the means)."""


class SelectionMixin:
    """``val.select_by``: a strategy of ``iqa_plugin.models.selection``; ``net_g_best`` on a new best."""

    def init_training_settings(self):
        super().init_training_settings()
        self._iqa_normalise_metrics()
        self.selection = build_selection(self)

    @property
    def best_select(self):
        return self.selection.state if getattr(self, 'selection', None) else None

    def on_validation_image(self, index, visuals):
        super().on_validation_image(index, visuals)
        if getattr(self, 'selection', None) is not None:
            self.selection.collect(index, visuals['result'].clamp(0, 1), visuals.get('gt'))

    def after_validation(self, dataset_name, current_iter, tb_logger):
        super().after_validation(dataset_name, current_iter, tb_logger)
        selection = getattr(self, 'selection', None)
        first = next(iter(self.best_metric_results)) if hasattr(self, 'best_metric_results') else dataset_name
        if selection is None or current_iter < 0 or dataset_name != first:  # the first validation set decides
            return
        if selection.update(dataset_name, current_iter, tb_logger):
            self.save_best_network()

    def save_best_network(self):
        if hasattr(self, 'net_g_ema'):
            self.save_network([self.net_g, self.net_g_ema], 'net_g', 'best', param_key=['params', 'params_ema'])
        else:
            self.save_network(self.net_g, 'net_g', 'best')

    def extra_training_state(self):
        state = super().extra_training_state()
        state['iqa_best'] = self.best_select
        return state

    def load_extra_training_state(self, state):
        super().load_extra_training_state(state)
        if getattr(self, 'selection', None) is not None and state.get('iqa_best'):
            self.selection.state = state['iqa_best']
            b = self.selection.state
            get_root_logger().info(f"Resumed checkpoint selection: best {b['metric']} {b['val']:.4f} @ iter {b['iter']}")


class ProgressBarMixin:
    """``logger.progress_bar: true``: tqdm over the training iterations on rank 0."""

    def optimize_parameters(self, current_iter):
        super().optimize_parameters(current_iter)
        if not (self.opt.get('logger') or {}).get('progress_bar') or self.opt.get('rank', 0) != 0:
            return
        if getattr(self, '_pbar', None) is None:
            total = getattr(self, 'total_iter', None) or int(self.opt['train'].get('total_iter', 0)) or None
            self._pbar = tqdm(total=total, initial=current_iter - 1, unit='it', dynamic_ncols=True,
                              desc=self.opt.get('name'))
        self._pbar.update(1)
        self._pbar.set_postfix({k: f'{v:.4f}' for k, v in (getattr(self, 'log_dict', None) or {}).items()},
                               refresh=False)
        if self._pbar.total and current_iter >= self._pbar.total:
            self._pbar.close()


class TrainingStateMixin:
    """Extra entries in BasicSR's training-state file, restored on resume.

    Subclasses extend ``extra_training_state()`` (a dict of picklable-safe values: numbers, strings,
    tensors, lists and dicts of them) and ``load_extra_training_state(state)``. In a DDP run every rank calls
    ``extra_training_state()`` (so it may gather per-rank state to rank 0) and rank 0 alone writes the file.
    """

    def extra_training_state(self):
        return {}

    def load_extra_training_state(self, state):
        pass

    def save_training_state(self, epoch, current_iter):
        # every rank builds the extra entries (they may gather per-rank state to rank 0); rank 0 alone writes
        extra = self.extra_training_state() if current_iter != -1 else {}
        if get_dist_info()[0] != 0:
            return
        super().save_training_state(epoch, current_iter)
        path = os.path.join(self.opt['path']['training_states'], f'{current_iter}.state')
        if current_iter == -1 or not extra or not os.path.isfile(path):
            return
        state = read_training_state(path)
        state.update(extra)
        tmp = path + '.tmp'
        torch.save(state, tmp)
        os.replace(tmp, path)  # a crash while rewriting leaves BasicSR's file as it was

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        self.load_extra_training_state(resume_state)


class IQAModelMixin(ProgressBarMixin, AxisReportMixin, SelectionMixin, IQAValidationMixin, IQALossMixin,
                    TrainingStateMixin, CPUDistributedMixin):
    """All IQA training features; put it before a BasicSR model class (see the module docstring)."""

    iqa_options = True  # the option pre-flight check accepts iqa_opt, table-name validators and select_by
