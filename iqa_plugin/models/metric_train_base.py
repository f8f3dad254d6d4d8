"""``MetricTrainModel``: the BasicSR model base of the plugin's metric trainings.

``MILOPseudoMOSModel`` and ``NRLiteModel`` (through ``iqa_plugin.labels.augment.LabelFreeModel``),
``RelationalModel`` and ``AFINEModel`` share, instead of each writing its own:

* optimizers: ``get_optimizer`` builds any ``torch.optim`` class by name (BasicSR 1.4.2's knows only
  Adam; Adam is built exactly as there) and ``build_optimizer(optim_opt, params)`` reads an option
  block ``{type: AdamW, lr: ..., ...}``;
* the training step: ``zero_grad()`` then ``apply_losses(loss_dict, current_iter)``, which sums the
  scalar losses, refuses a non-finite total (``FloatingPointError`` naming each loss), back-propagates,
  steps every optimizer and sets ``log_dict`` (the losses and ``l_total``, reduced over processes);
* validation: ``dist_validation`` runs ``nondist_validation`` on rank 0 only (the other ranks wait for it,
  ``iqa_plugin.basicsr_glue.dist.wait_for_rank0_validation``); ``record_validation``
  keeps BasicSR's best-metric bookkeeping (``better`` per metric: argument, else the option's
  ``val.metrics.<name>.better``, else 'higher'), logs one block and writes
  ``metrics/<dataset>/<name>`` TensorBoard scalars;
* devices: ``model_to_device`` is BasicSR's, but a CPU DDP under ``--launcher pytorch`` without a GPU
  (``iqa_plugin.basicsr_glue.dist.CPUDistributedMixin``);
* checkpoints: ``save`` writes BasicSR's network files (``checkpoint_networks()``), the plain weights
  file ``<plain_prefix>_<iter>.pth`` the scorer loads (``plain_state_dict()``) and the training state.

Subclasses implement ``checkpoint_networks``, ``plain_state_dict``, ``feed_data``,
``optimize_parameters`` and ``nondist_validation``. Not a ``*_model.py`` file, so it is not scanned
into BasicSR's registry itself.
"""
from collections import OrderedDict
from os import path as osp

import torch
from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info, master_only

from iqa_plugin.basicsr_glue.dist import CPUDistributedMixin, wait_for_rank0_validation


class MetricTrainModel(CPUDistributedMixin, BaseModel):
    """BasicSR ``BaseModel`` with the shared parts of the metric trainings (see the module docstring)."""

    plain_prefix = ''  # file stem of the plain weights written with every checkpoint

    # ------------------------------------------------------------------ optimizers
    def get_optimizer(self, optim_type, params, lr, **kwargs):
        """Any ``torch.optim`` optimizer by class name (``Adam``, ``AdamW``, ``SGD``, ...)."""
        cls = getattr(torch.optim, str(optim_type), None)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or cls is torch.optim.Optimizer:
            raise ValueError(f"unknown optimizer type '{optim_type}' (a torch.optim class name, e.g. AdamW)")
        return cls(params, lr, **kwargs)

    def build_optimizer(self, optim_opt, params, default_type='Adam'):
        """The optimizer an option block ``{type: ..., lr: ..., <kwargs>}`` describes (``type`` defaults
        to ``default_type``); the block itself is not modified."""
        optim_opt = dict(optim_opt)
        return self.get_optimizer(optim_opt.pop('type', default_type), params, **optim_opt)

    # ------------------------------------------------------------------ training step
    def zero_grad(self):
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def apply_losses(self, loss_dict, current_iter, log_extra=None):
        """Back-propagate the sum of ``loss_dict`` (scalars) and step every optimizer.

        ``log_dict`` becomes the detached losses, ``l_total`` and ``log_extra`` (tensors), reduced
        over processes. Returns the total loss (detached).
        """
        total = sum(loss_dict.values())
        if not torch.isfinite(total):
            raise FloatingPointError(f'non-finite training loss at iter {current_iter}: '
                                     f"{ {k: float(v.detach()) for k, v in loss_dict.items()} }")
        total.backward()
        for optimizer in self.optimizers:
            optimizer.step()
        log = OrderedDict((k, v.detach()) for k, v in loss_dict.items())
        log['l_total'] = total.detach()
        log.update(log_extra or {})
        self.log_dict = self.reduce_loss_dict(log)
        return total.detach()

    # ------------------------------------------------------------------ validation
    def dist_validation(self, dataloader, current_iter, tb_logger, save_img=False):
        if get_dist_info()[0] == 0:
            self.nondist_validation(dataloader, current_iter, tb_logger, save_img)
        wait_for_rank0_validation(self.opt)  # the other ranks wait on a gloo barrier, not in NCCL

    def record_validation(self, dataset_name, current_iter, tb_logger, header, better=None):
        """Update the best value of every entry of ``self.metric_results`` and log them.

        Args:
            dataset_name (str): validation set name.
            current_iter (int): iteration of this validation.
            tb_logger: TensorBoard writer or None.
            header (str): first line of the logged block.
            better (dict | None): {metric name: 'higher' | 'lower'} overriding the option file.
        """
        metrics_opt = (self.opt.get('val') or {}).get('metrics') or {}
        if not hasattr(self, 'best_metric_results'):
            self.best_metric_results = {}
        record = self.best_metric_results.setdefault(dataset_name, {})
        for name, value in self.metric_results.items():
            if name not in record:
                b = (better or {}).get(name) or (metrics_opt.get(name) or {}).get('better', 'higher')
                record[name] = {'better': b, 'val': float('-inf') if b == 'higher' else float('inf'), 'iter': -1}
            self._update_best_metric_result(dataset_name, name, value, current_iter)
        lines = [header]
        for name, value in self.metric_results.items():
            best = record[name]
            lines.append(f'\t # {name}: {value:.4f}\tBest: {best["val"]:.4f} @ {best["iter"]} iter')
        get_root_logger().info('\n'.join(lines))
        if tb_logger:
            for name, value in self.metric_results.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{name}', value, current_iter)

    def get_current_visuals(self):
        return OrderedDict()

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_networks(self):  # pragma: no cover - abstract
        """[(net or [nets], label, param_key or [keys])] saved as ``<label>_<iter>.pth`` in BasicSR's layout."""
        raise NotImplementedError

    def plain_state_dict(self):  # pragma: no cover - abstract
        """The plain weights the metric's scorer loads (``weights_path=``)."""
        raise NotImplementedError

    @master_only
    def save_plain(self, current_iter):
        """Write ``<plain_prefix>_<iter>.pth`` (``latest`` for -1) into the models folder; returns its path."""
        tag = 'latest' if current_iter == -1 else current_iter
        path = osp.join(self.opt['path']['models'], f'{self.plain_prefix}_{tag}.pth')
        torch.save(self.plain_state_dict(), path)
        return path

    def save(self, epoch, current_iter):
        for net, label, param_key in self.checkpoint_networks():
            self.save_network(net, label, current_iter, param_key=param_key)
        self.save_plain(current_iter)
        self.save_training_state(epoch, current_iter)
