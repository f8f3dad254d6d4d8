"""Checkpoint selection strategies for ``val.select_by`` (the IQA models' ``SelectionMixin``).

    val:
      select_by: milo                         # strategy from the metric: 'relational' for relational, else 'metric'
      select_by: {metric: relational, strategy: metric}   # or chosen explicitly

A strategy sees every validation image (``collect``) and, after each validation, decides whether the
current network is the best so far (``update``); the mixin then saves ``net_g_best`` (and its EMA). Its
``state`` (a plain dict) goes into the training state as ``iqa_best``, so a resumed run continues from it.

* ``metric``: the mean of the named ``val.metrics`` entry on the first validation set, compared in the
  metric's direction (``better`` of the block, which the IQA models default from the scoring table).
* ``relational``: each output is compared with the best checkpoint's output for the same image, relative to
  the same ground truth: ``d_i = s(cur_i | gt_i) - s(best_i | gt_i)`` and ``p_i = compare(cur_i, best_i, gt_i)``;
  a positive mean ``d`` makes a new best. The best checkpoint's outputs are kept on the CPU; after a resume
  they are recomputed from ``models/net_g_best.pth`` during the first validation. TensorBoard gets the
  scores, ``p_better`` and the per-axis maps of the first validation image.

A new strategy is one class here with ``collect``/``update`` and an entry in ``STRATEGIES``.
"""
import copy
import math
from os import path as osp

import torch
from basicsr.utils import get_root_logger

from iqa_plugin import scoring


def validator_metric(block):
    """(table name, factory options) of a ``val.metrics`` block served by a plugin validator, else None."""
    from basicsr.utils.registry import METRIC_REGISTRY

    if block.get('type') not in METRIC_REGISTRY:
        return None
    fn = METRIC_REGISTRY.get(block['type'])
    if not hasattr(fn, 'metric_of'):
        return None
    return fn.metric_of(**{k: v for k, v in block.items() if k != 'type'})


class MetricSelection:
    """Best checkpoint by the mean of one validation metric, in its direction."""

    def __init__(self, model, metric):
        self.model = model
        self.metric = metric
        self.block = model.opt['val']['metrics'][metric]
        self.state = None  # {'iter', 'val', 'metric', 'dataset', ...}

    @property
    def better(self):
        return self.block.get('better', 'higher')

    def collect(self, index, result, gt):
        """Called with each validation image's output and ground truth tensors (CPU, (1, C, H, W))."""

    def improved(self, value):
        if self.state is None:
            return True
        return value > self.state['val'] if self.better == 'higher' else value < self.state['val']

    def update(self, dataset_name, current_iter, tb_logger):
        """After a validation: True when the current network is the new best (the mixin then saves it)."""
        value = float(self.model.metric_results[self.metric])
        new = self.improved(value)
        if new:
            self.state = {'iter': int(current_iter), 'val': value, 'metric': self.metric, 'dataset': dataset_name}
            get_root_logger().info(f'New best {self.metric} on {dataset_name}: {value:.4f} @ iter {current_iter}; '
                                   'saved net_g_best')
        if tb_logger:
            tb_logger.add_scalar(f'select/{self.metric}/best', self.state['val'], current_iter)
            tb_logger.add_scalar(f'select/{self.metric}/best_iter', self.state['iter'], current_iter)
        return new


class RelationalSelection(MetricSelection):
    """Best checkpoint by pairwise relational comparison with the best outputs so far (module docstring)."""

    def __init__(self, model, metric):
        super().__init__(model, metric)
        found = validator_metric(self.block)
        if found is None or found[0] != 'relational':
            raise ValueError(f"val.select_by: the relational strategy needs a relational metric; "
                             f"val.metrics.{metric} is {self.block.get('type')}")
        self.scorer_opts = found[1]
        self.current = {}  # index -> (output, gt) on the CPU
        self.best_outputs = None  # index -> output of the best checkpoint
        self.recomputed = {}
        self.best_net = None

    def scorer(self):
        return scoring.get_cached_metric('relational', self.model.device, **self.scorer_opts)

    def collect(self, index, result, gt):
        if gt is None:
            raise ValueError('val.select_by relational needs a ground truth (dataroot_gt)')
        self.current[index] = (result.detach().float().cpu(), gt.detach().float().cpu())
        if self.best_outputs is None and self.state and self.state.get('mode') == 'relational':
            net = self._best_net()  # after a resume: recompute the best checkpoint's outputs
            if net is not None:
                with torch.no_grad():
                    self.recomputed[index] = net(self.model.lq).clamp(0, 1).float().cpu()

    def _best_net(self):
        """A copy of the validating network loaded from net_g_best.pth (None when the file is missing)."""
        if self.best_net is not None:
            return self.best_net
        path = osp.join(self.model.opt['path']['models'], 'net_g_best.pth')
        if not osp.isfile(path):
            get_root_logger().warning(f'Relational selection: {path} not found; the next validation becomes the best')
            return None
        model = self.model
        use_ema = hasattr(model, 'net_g_ema')
        src = model.net_g_ema if use_ema else model.get_bare_model(model.net_g)
        net = copy.deepcopy(src).eval()
        model.load_network(net, path, strict=True, param_key='params_ema' if use_ema else 'params')
        self.best_net = net
        return net

    def update(self, dataset_name, current_iter, tb_logger):
        logger = get_root_logger()
        current, self.current = self.current, {}
        if not current:
            return False
        scorer, device = self.scorer(), self.model.device
        best_outputs = self.best_outputs
        if best_outputs is None and self.recomputed:
            best_outputs = self.recomputed
            logger.info(f"Resumed relational selection: recomputed the outputs of net_g_best (iter "
                        f"{self.state['iter']}) for {len(best_outputs)} validation images")
        self.recomputed = {}
        diffs, probs, scores = [], [], []
        with torch.no_grad():
            for index, (out, gt) in current.items():
                out_d, gt_d = out.to(device), gt.to(device)
                scores.append(float(scorer(out_d, gt_d)['relational'].mean()))
                if best_outputs is not None and index in best_outputs:
                    b = best_outputs[index].to(device)
                    diffs.append(scores[-1] - float(scorer(b, gt_d)['relational'].mean()))
                    probs.append(float(scorer.compare(out_d, b, gt_d).mean()))
        score = sum(scores) / len(scores)
        if diffs:
            mean_diff, p_better = sum(diffs) / len(diffs), sum(probs) / len(probs)
            new = mean_diff > 0
            best_iter = self.state['iter'] if self.state else '-'
            logger.info(f'Relational selection @ iter {current_iter}: s(current) {score:.4f}, s(current) - s(best @ '
                        f'iter {best_iter}) {mean_diff:+.5f}, P(current better) {p_better:.3f} over {len(diffs)} '
                        f"images -> {'new best' if new else 'keep best'}")
        else:
            mean_diff, p_better, new = math.nan, math.nan, True
        if new:
            self.state = {'iter': int(current_iter), 'val': score, 'metric': self.metric, 'dataset': dataset_name,
                          'mode': 'relational', 'p_better': p_better}
            best_outputs = {index: out for index, (out, _) in current.items()}
            self.best_net = None  # net_g_best.pth is about to change
            logger.info(f'New best relational on {dataset_name}: {score:.4f} @ iter {current_iter}; saved net_g_best')
        self.best_outputs = best_outputs
        if tb_logger:
            tb_logger.add_scalar('select/relational/score', score, current_iter)
            tb_logger.add_scalar('select/relational/best_iter', self.state['iter'], current_iter)
            if diffs:
                tb_logger.add_scalar('select/relational/p_better', p_better, current_iter)
                tb_logger.add_scalar('select/relational/score_diff', mean_diff, current_iter)
            self._log_maps(scorer, current[next(iter(current))], tb_logger, current_iter)
        return new

    def _log_maps(self, scorer, pair, tb_logger, current_iter):
        from iqa_plugin.labels.distortions import AXES
        from iqa_plugin.scoring.relational_vis import map_to_rgb

        out, gt = pair
        with torch.no_grad():
            maps = scorer.maps(out.to(self.model.device), gt.to(self.model.device))[0].float().cpu().numpy()
        for k, axis in enumerate(AXES):
            tb_logger.add_image(f'select/relational/maps/{axis}', torch.from_numpy(map_to_rgb(maps[k])).permute(2, 0, 1),
                                current_iter)


STRATEGIES = {'metric': MetricSelection, 'relational': RelationalSelection}


def build_selection(model):
    """The strategy for ``val.select_by`` of ``model.opt`` (None when absent or not training)."""
    val = model.opt.get('val') or {}
    select = val.get('select_by')
    if not select or not model.opt.get('is_train'):
        return None
    if isinstance(select, str):
        select = {'metric': select}
    metric = select.get('metric')
    metrics = val.get('metrics') or {}
    if metric not in metrics:
        raise ValueError(f"val.select_by: '{metric}' is not one of val.metrics: {', '.join(metrics)}")
    strategy = select.get('strategy')
    if strategy is None:
        found = validator_metric(metrics[metric])
        strategy = 'relational' if found is not None and found[0] == 'relational' else 'metric'
    if strategy not in STRATEGIES:
        raise ValueError(f"val.select_by: unknown strategy '{strategy}'; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy](model, metric)
