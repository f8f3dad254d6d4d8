"""Relational checkpoint selection for ``IQASRModel`` (``val.select_by`` naming a ``type: relational`` metric).

At each validation the current outputs are compared with those of the best checkpoint so far, image by
image and relative to the same ground truth: ``d_i = s(cur_i | gt_i) - s(best_i | gt_i)`` and
``p_i = compare(cur_i, best_i, gt_i)`` (probability that the current output is better). When the mean
``d`` is positive (equivalently the current outputs are better on average), ``net_g_best`` (and its EMA)
is saved and the current outputs become the reference for the next validations. The best checkpoint's
outputs are kept in memory (CPU); after a resume they are recomputed from ``models/net_g_best.pth``
(``params_ema`` when the model validates with EMA) during the first validation. The iteration is kept in
the training state (``iqa_best``, with ``mode: relational``). TensorBoard gets the scores, ``p_better``
and the per-axis maps of the first validation image as colour images (``select/relational/maps/<axis>``).
"""
import copy
from os import path as osp

import torch
from basicsr.utils import get_root_logger


class RelationalSelectionMixin:
    """Methods used by ``IQASRModel``; state lives in ``_rel_*`` attributes."""

    def _relational_selection(self, select_by=None):
        """True when val.select_by names a metric block of type 'relational' (training runs only)."""
        val = self.opt.get('val') or {}
        select_by = select_by or val.get('select_by')
        block = (val.get('metrics') or {}).get(select_by) if select_by else None
        return bool(block) and block.get('type') == 'relational' and bool(self.opt.get('is_train'))

    def _relational_collect(self, img_name, out_t, gt_t):
        """Called per validation image: keep the output (and recompute the best one after a resume)."""
        if not self._relational_selection():
            return
        if gt_t is None:
            raise ValueError('val.select_by relational needs a ground truth (dataroot_gt)')
        if not hasattr(self, '_rel_current') or self._rel_current is None:
            self._rel_current = {}
        self._rel_current[img_name] = (out_t.detach().float().cpu(), gt_t.detach().float().cpu())
        best = getattr(self, 'best_select', None)
        if getattr(self, '_rel_best_outputs', None) is None and best and best.get('mode') == 'relational':
            net = self._rel_best_net()
            if net is not None:
                with torch.no_grad():
                    out = net(self.lq).clamp(0, 1)
                self._rel_recomputed = getattr(self, '_rel_recomputed', None) or {}
                self._rel_recomputed[img_name] = out.float().cpu()

    def _rel_best_net(self):
        """A copy of the validating network loaded from net_g_best.pth (None when the file is missing)."""
        if getattr(self, '_rel_best_model', None) is not None:
            return self._rel_best_model
        path = osp.join(self.opt['path']['models'], 'net_g_best.pth')
        if not osp.isfile(path):
            get_root_logger().warning(f'Relational selection: {path} not found; the next validation becomes the best')
            return None
        use_ema = hasattr(self, 'net_g_ema')
        src = self.net_g_ema if use_ema else self.get_bare_model(self.net_g)
        net = copy.deepcopy(src).eval()
        self.load_network(net, path, strict=True, param_key='params_ema' if use_ema else 'params')
        self._rel_best_model = net
        return net

    def _rel_log_maps(self, scorer, tb_logger, current_iter):
        from iqa_plugin.distortions import AXES
        from iqa_plugin.relational_vis import map_to_rgb

        name = next(iter(self._rel_current))
        out, gt = self._rel_current[name]
        with torch.no_grad():
            maps = scorer.maps(out.to(self.device), gt.to(self.device))[0].float().cpu().numpy()
        for k, axis in enumerate(AXES):
            img = torch.from_numpy(map_to_rgb(maps[k])).permute(2, 0, 1)
            tb_logger.add_image(f'select/relational/maps/{axis}', img, current_iter)

    def _select_relational(self, dataset_name, current_iter, tb_logger, select_by, opt_):
        """Compare the current outputs with the best checkpoint's; save net_g_best when better on average."""
        logger = get_root_logger()
        scorer = self._tensor_metric(select_by, opt_)
        current = getattr(self, '_rel_current', None) or {}
        self._rel_current = current
        if not current:
            return
        best_outputs = getattr(self, '_rel_best_outputs', None)
        best = self.best_select
        if best_outputs is None and getattr(self, '_rel_recomputed', None):
            best_outputs = self._rel_recomputed
            logger.info(f"Resumed relational selection: recomputed the outputs of net_g_best (iter {best['iter']}) "
                        f'for {len(best_outputs)} validation images')
        self._rel_recomputed = None
        diffs, probs, scores = [], [], []
        with torch.no_grad():
            for name, (out, gt) in current.items():
                out_d, gt_d = out.to(self.device), gt.to(self.device)
                scores.append(float(scorer(out_d, gt_d)['relational'].mean()))
                if best_outputs is not None and name in best_outputs:
                    b = best_outputs[name].to(self.device)
                    diffs.append(scores[-1] - float(scorer(b, gt_d)['relational'].mean()))
                    probs.append(float(scorer.compare(out_d, b, gt_d).mean()))
        score = sum(scores) / len(scores)
        if diffs:
            mean_diff, p_better = sum(diffs) / len(diffs), sum(probs) / len(probs)
            improved = mean_diff > 0
            logger.info(f"Relational selection @ iter {current_iter}: s(current) {score:.4f}, "
                        f"s(current) - s(best @ iter {best['iter'] if best else '-'}) {mean_diff:+.5f}, "
                        f"P(current better) {p_better:.3f} over {len(diffs)} images -> "
                        f"{'new best' if improved else 'keep best'}")
        else:
            mean_diff, p_better, improved = float('nan'), float('nan'), True
        if improved:
            self.best_select = {'iter': int(current_iter), 'val': score, 'metric': select_by, 'dataset': dataset_name,
                                'mode': 'relational', 'p_better': p_better}
            self.save_best_network()
            best_outputs = {name: out for name, (out, _) in current.items()}
            self._rel_best_model = None  # net_g_best.pth changed
            logger.info(f'New best relational on {dataset_name}: {score:.4f} @ iter {current_iter}; saved net_g_best')
        self._rel_best_outputs = best_outputs
        if tb_logger:
            tb_logger.add_scalar('select/relational/score', score, current_iter)
            tb_logger.add_scalar('select/relational/best_iter', self.best_select['iter'], current_iter)
            if diffs:
                tb_logger.add_scalar('select/relational/p_better', p_better, current_iter)
                tb_logger.add_scalar('select/relational/score_diff', mean_diff, current_iter)
            self._rel_log_maps(scorer, tb_logger, current_iter)
        self._rel_current = None
