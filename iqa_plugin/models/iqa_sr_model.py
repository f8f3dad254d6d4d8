"""``IQASRModel``: BasicSR's SRModel with IQA losses, tensor validators and checkpoint selection.

What changes against ``basicsr.models.sr_model.SRModel`` (everything else is inherited):

* ``train.iqa_opt``: named loss blocks (``{milo: {type: MILOLoss, loss_weight: 0.1}}``), logged as
  ``l_<name>``; losses that define ``set_progress(p)`` receive ``p = current_iter / total_iter``.
  The networks inside them are frozen (checked) and never handed to an optimizer or to DDP.
* ``val.metrics`` blocks whose ``type`` is a name from ``iqa_plugin.scoring.METRICS`` (``milo``,
  ``nr-lite``, ``musiq``, ...) are computed on the output tensors in [0, 1] by a cached scorer,
  without the uint8 round trip; registered ``calculate_*`` functions work as in SRModel.
* ``val.select_by: <metric name>``: when that metric reaches a new best, ``net_g_best`` (and its EMA)
  is saved and the iteration is kept in the training state, so a resumed run continues from it.
* ``logger.progress_bar: true`` shows a tqdm bar of the training iterations on rank 0.
"""
from collections import OrderedDict
from os import path as osp

import torch
from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.registry import MODEL_REGISTRY
from tqdm import tqdm

from iqa_plugin import scoring
from iqa_plugin.models.relational_select import RelationalSelectionMixin  # val.select_by: relational


@MODEL_REGISTRY.register()
class IQASRModel(RelationalSelectionMixin, SRModel):

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
        self.best_select = None  # {'iter': int, 'val': float} for val.select_by
        self._pbar = None
        super().init_training_settings()

    # ------------------------------------------------------------------ training
    def set_progress(self, current_iter):
        p = min(max(current_iter / self.total_iter, 0.0), 1.0)
        for loss in self.cri_iqa.values():
            if hasattr(loss, 'set_progress'):
                loss.set_progress(p)
        return p

    def optimize_parameters(self, current_iter):
        self.set_progress(current_iter)
        self.optimizer_g.zero_grad()
        self.output = self.net_g(self.lq)

        l_total = 0
        loss_dict = OrderedDict()
        if self.cri_pix:
            l_pix = self.cri_pix(self.output, self.gt)
            l_total += l_pix
            loss_dict['l_pix'] = l_pix
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            for key, value in (('l_percep', l_percep), ('l_style', l_style)):
                if value is not None:
                    l_total += value
                    loss_dict[key] = value
        for name, loss in self.cri_iqa.items():
            value = loss(self.output, self.gt)
            l_total += value
            loss_dict[f'l_{name}'] = value

        l_total.backward()
        self.optimizer_g.step()
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)
        self._update_pbar(current_iter, loss_dict)

    def _update_pbar(self, current_iter, loss_dict):
        if not self.opt['logger'].get('progress_bar') or self.opt['rank'] != 0:
            return
        if self._pbar is None:
            self._pbar = tqdm(total=self.total_iter, initial=current_iter - 1, unit='it', dynamic_ncols=True,
                              desc=self.opt['name'])
        self._pbar.update(1)
        self._pbar.set_postfix({k: f'{v.item():.4f}' for k, v in loss_dict.items()}, refresh=False)
        if current_iter >= self.total_iter:
            self._pbar.close()

    # ------------------------------------------------------------------ validation
    def _tensor_metric(self, name, opt_):
        """A cached scorer for a val.metrics block whose type is a scoring-table name."""
        kwargs = {k: v for k, v in opt_.items() if k not in ('type', 'better', 'crop_border', 'output')}
        return scoring.get_cached_metric(opt_['type'], device=self.device, **kwargs)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        dataset_name = dataloader.dataset.opt['name']
        metrics_opt = self.opt['val'].get('metrics') or {}
        with_metrics = bool(metrics_opt)
        if with_metrics:
            self.metric_results = {m: 0.0 for m in metrics_opt}
            self._initialize_best_metric_results(dataset_name)
        pbar = tqdm(total=len(dataloader), unit='image') if self.opt['val'].get('pbar', False) else None

        count = 0
        for val_data in dataloader:
            img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
            self.feed_data(val_data)
            self.test()
            visuals = self.get_current_visuals()
            out_t = visuals['result'].clamp(0, 1)
            gt_t = visuals.get('gt')
            sr_img = tensor2img([visuals['result']])
            metric_data = {'img': sr_img}
            if gt_t is not None:
                metric_data['img2'] = tensor2img([gt_t])
            if save_img:
                if self.opt['is_train']:
                    save_path = osp.join(self.opt['path']['visualization'], img_name, f'{img_name}_{current_iter}.png')
                else:
                    suffix = self.opt['val'].get('suffix') or self.opt['name']
                    save_path = osp.join(self.opt['path']['visualization'], dataset_name, f'{img_name}_{suffix}.png')
                imwrite(sr_img, save_path)
            self._relational_collect(img_name, out_t, gt_t)  # relational checkpoint selection
            for name, opt_ in metrics_opt.items():
                if opt_['type'] in scoring.METRICS:
                    self.metric_results[name] += self._score_tensor(name, opt_, out_t, gt_t)
                else:
                    self.metric_results[name] += calculate_metric(metric_data, opt_)
            count += 1
            del self.lq, self.output
            if hasattr(self, 'gt'):
                del self.gt
            if pbar:
                pbar.update(1)
                pbar.set_description(f'Test {img_name}')
        if pbar:
            pbar.close()

        if with_metrics:
            for metric in self.metric_results:
                self.metric_results[metric] /= max(count, 1)
                self._update_best_metric_result(dataset_name, metric, self.metric_results[metric], current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
            self._select_checkpoint(dataset_name, current_iter, tb_logger)

    @torch.no_grad()
    def _score_tensor(self, name, opt_, out_t, gt_t):
        scorer = self._tensor_metric(name, opt_)
        border = int(opt_.get('crop_border', 0) or 0)
        if border:
            out_t = out_t[..., border:-border, border:-border]
            gt_t = gt_t[..., border:-border, border:-border] if gt_t is not None else None
        if scorer.kind == 'fr' and gt_t is None:
            raise ValueError(f'val.metrics.{name}: {opt_["type"]} needs a ground truth (dataroot_gt)')
        result = scorer(out_t, gt_t if scorer.kind == 'fr' else None)
        key = opt_.get('output') or next(iter(result))
        if key not in result:
            raise ValueError(f"val.metrics.{name}: unknown output '{key}'; available: {', '.join(result)}")
        return float(result[key].mean())

    # ------------------------------------------------------------------ checkpoint selection
    def _select_checkpoint(self, dataset_name, current_iter, tb_logger):
        """Save net_g_best when val.select_by reaches a new best (first validation dataset decides)."""
        select_by = self.opt['val'].get('select_by')
        if not select_by or not self.opt['is_train'] or current_iter < 0:
            return
        if select_by not in self.metric_results:
            raise ValueError(f"val.select_by: '{select_by}' is not one of val.metrics: {', '.join(self.metric_results)}")
        if self._relational_selection(select_by):
            return self._select_relational(dataset_name, current_iter, tb_logger, select_by,
                                           self.opt['val']['metrics'][select_by])
        val = float(self.metric_results[select_by])
        better = self.opt['val']['metrics'][select_by].get('better', 'higher')
        best = self.best_select
        improved = best is None or (val > best['val'] if better == 'higher' else val < best['val'])
        if improved:
            self.best_select = {'iter': int(current_iter), 'val': val, 'metric': select_by, 'dataset': dataset_name}
            self.save_best_network()
            get_root_logger().info(f'New best {select_by} on {dataset_name}: {val:.4f} @ iter {current_iter}; '
                                   'saved net_g_best')
        if tb_logger:
            tb_logger.add_scalar(f'select/{select_by}/best', self.best_select['val'], current_iter)
            tb_logger.add_scalar(f'select/{select_by}/best_iter', self.best_select['iter'], current_iter)

    def save_best_network(self):
        if hasattr(self, 'net_g_ema'):
            self.save_network([self.net_g, self.net_g_ema], 'net_g', 'best', param_key=['params', 'params_ema'])
        else:
            self.save_network(self.net_g, 'net_g', 'best')

    # ------------------------------------------------------------------ training state
    def save_training_state(self, epoch, current_iter):
        """BasicSR's training state plus ``iqa_best`` (the checkpoint selected by val.select_by)."""
        if current_iter == -1 or self.opt['rank'] != 0:
            return
        import os
        state = {'epoch': epoch, 'iter': current_iter,
                 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers],
                 'iqa_best': self.best_select}
        path = os.path.join(self.opt['path']['training_states'], f'{current_iter}.state')
        tmp = path + '.tmp'
        torch.save(state, tmp)
        os.replace(tmp, path)  # a crash while saving never leaves a truncated state behind

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        self.best_select = resume_state.get('iqa_best')
        if self.best_select:
            b = self.best_select
            get_root_logger().info(f"Resumed checkpoint selection: best {b['metric']} {b['val']:.4f} @ iter {b['iter']}")
