"""``val.axis_report``: at each validation, what changed in the outputs relative to a reference checkpoint, axis by
axis (the relational maps of ``iqa_plugin.scoring.axes``, as ``iqa-plugin diff`` reports them).

    val:
      axis_report: {against: previous}   # or best: the checkpoint val.select_by saved as net_g_best
      # max_memory_mb: 256               # reference outputs beyond this go to files (experiments/<name>/axis_report)

Each validation image's output (clamped to [0, 1], stored as 16-bit) is compared with the reference checkpoint's
output for the same image: ``P(current, reference)`` per axis, spatially averaged, then averaged over the images;
an axis counts as changed above its noise floor (``scoring.axes.FLOOR``). The log gets one sentence per validation
set ("iter 1000 is sharper (sharpness +0.12) than iter 500 (previous); other axes unchanged"), TensorBoard the
scalars ``axes/<axis>`` (``axes/<dataset>/<axis>`` for a second validation set) and one figure ``axes/report`` (the
per-axis bars over the first image's maps of the axes that moved).

The reference: ``previous``, the outputs of the last validation; ``best``, those of the validation that
``val.select_by`` last named best (``SelectionMixin``; the pre-flight requires ``select_by``). The current outputs
become the reference after the report when ``against: previous``, or when the selection has just saved a new best.
Outputs are kept in memory up to ``max_memory_mb`` (default 256), the rest as ``.npy`` files under
``<experiments_root>/axis_report/<dataset>/``. The first validation (also the first after a resume: the reference
is not part of the training state) only records the reference.

Only rank 0 reports (BasicSR validates on rank 0 only); the relational network is the one cached by
``scoring.get_cached_metric('relational', device)``, run in float32 outside autocast.
"""
import os
import shutil
from os import path as osp

import numpy as np
import torch

AGAINST = ('previous', 'best')
KEYS = ('against', 'max_memory_mb')
DEFAULT_MAX_MEMORY_MB = 256
_Q = 65535.0  # outputs are stored as uint16: both sides of a comparison are quantised alike, so unchanged = 0


def check_options(val):
    """The normalised ``val.axis_report`` block of the ``val`` options (None when absent or false).

    ``true`` means ``{against: previous}``. Raises ValueError (one line) for an unknown key, an unknown ``against``,
    ``against: best`` without ``val.select_by`` or a negative ``max_memory_mb``.
    """
    block = (val or {}).get('axis_report')
    if block is None or block is False:
        return None
    if block is True:
        block = {}
    if not isinstance(block, dict):
        raise ValueError(f'val.axis_report must be a mapping such as {{against: previous}} or true, got {block!r}')
    extra = sorted(set(block) - set(KEYS))
    if extra:
        raise ValueError(f"unknown key{'s' if len(extra) > 1 else ''} {', '.join(repr(k) for k in extra)} in "
                         f"val.axis_report; allowed: {', '.join(KEYS)}")
    against = block.get('against', 'previous')
    if against not in AGAINST:
        raise ValueError(f"val.axis_report.against must be one of {', '.join(AGAINST)}, got {against!r}")
    if against == 'best' and not val.get('select_by'):
        raise ValueError('val.axis_report against: best needs val.select_by (the selection names the best checkpoint)')
    mb = block.get('max_memory_mb', DEFAULT_MAX_MEMORY_MB)
    if isinstance(mb, bool) or not isinstance(mb, (int, float)) or mb < 0:
        raise ValueError(f'val.axis_report.max_memory_mb must be a number >= 0, got {mb!r}')
    return {'against': against, 'max_memory_mb': float(mb)}


def quantise(x):
    """(1, C, H, W) / (C, H, W) tensor in [0, 1] -> (C, H, W) uint16 array."""
    x = x.detach().float().cpu()
    x = x[0] if x.ndim == 4 else x
    return np.round(x.clamp(0, 1).numpy() * _Q).astype(np.uint16)


def dequantise(q):
    return torch.from_numpy(q.astype(np.float32) / _Q)[None]


class OutputStore:
    """Arrays by validation index: in memory up to ``max_bytes``, the rest as ``<index>.npy`` in ``folder``."""

    def __init__(self, folder, max_bytes):
        self.folder = folder
        self.max_bytes = max_bytes
        self.memory, self.files, self.bytes = {}, {}, 0

    def put(self, index, array):
        if self.bytes + array.nbytes <= self.max_bytes:
            self.memory[index] = array
            self.bytes += array.nbytes
            return
        os.makedirs(self.folder, exist_ok=True)
        path = osp.join(self.folder, f'{index}.npy')
        tmp = f'{path}.tmp.npy'
        np.save(tmp, array)
        os.replace(tmp, path)
        self.files[index] = path

    def get(self, index):
        if index in self.memory:
            return self.memory[index]
        if index in self.files:
            return np.load(self.files[index])
        return None

    def __len__(self):
        return len(self.memory) + len(self.files)

    def on_disk(self):
        return len(self.files)

    def clear(self):
        self.memory, self.files, self.bytes = {}, {}, 0
        shutil.rmtree(self.folder, ignore_errors=True)


class _DatasetReport:
    """The reference and the current validation of one validation set."""

    def __init__(self, root, max_bytes):
        self.root = root
        self.max_bytes = max_bytes
        self.slot = 0
        self.reference = None  # OutputStore
        self.reference_iter = None
        self.current = None
        self.diff = None
        self.figure = None  # (ref, cur, maps) of the first compared image
        self.skipped = []

    def new_store(self):
        self.slot += 1
        store = OutputStore(osp.join(self.root, f'outputs_{self.slot}'), self.max_bytes)
        store.clear()
        return store


class AxisReport:
    """The ``val.axis_report`` of one training run (see the module docstring); built by ``AxisReportMixin``."""

    def __init__(self, options, root, device):
        self.against = options['against']
        self.max_bytes = int(options['max_memory_mb'] * 2 ** 20)
        self.root = root
        self.device = device
        self.sets = {}  # dataset name -> _DatasetReport
        self.first_set = None
        shutil.rmtree(root, ignore_errors=True)  # files of an earlier run of this experiment are never read

    def scorer(self):
        from iqa_plugin.scoring.axes import relational_scorer

        return relational_scorer(self.device)

    def begin(self, dataset):
        from iqa_plugin.scoring.axes import AxisDiff

        if dataset not in self.sets:
            self.sets[dataset] = _DatasetReport(osp.join(self.root, _safe(dataset)), self.max_bytes)
        self.first_set = self.first_set or dataset
        rep = self.sets[dataset]
        rep.current = rep.new_store()
        rep.diff, rep.figure, rep.skipped = AxisDiff(), None, []

    def image(self, dataset, index, output):
        """One validation output (1, 3, H, W) in [0, 1]: stored, and compared with the reference's when there is one."""
        from iqa_plugin.archs.relational_arch import MIN_SIZE
        from iqa_plugin.scoring.axes import image_maps

        rep = self.sets[dataset]
        q = quantise(output)
        rep.current.put(index, q)
        ref = rep.reference.get(index) if rep.reference is not None else None
        if ref is None:
            return
        if ref.shape != q.shape or min(q.shape[-2:]) < MIN_SIZE:
            rep.skipped.append(index)
            return
        cur, ref = dequantise(q), dequantise(ref)
        maps = image_maps(self.scorer(), ref, cur)  # the current output relative to the reference's
        rep.diff.add_maps(f'#{index}', maps)
        if rep.figure is None:
            rep.figure = (ref, cur, maps.cpu())

    def end(self, dataset, current_iter, tb_logger, promote):
        """After the validation loop: log the sentence, TensorBoard scalars and figure; ``promote``: the current
        outputs become the reference. Returns the summary (None when there was no reference yet)."""
        from basicsr.utils import get_root_logger

        from iqa_plugin.scoring.axes import bar_chart, diff_figure, sentence, stack

        logger = get_root_logger()
        rep = self.sets[dataset]
        summary = None
        if rep.reference is None:
            kept = (f'these {len(rep.current)} outputs are the reference of the next report' if promote else
                    'the outputs of the next best checkpoint will be')
            logger.info(f'Axis report {dataset} @ iter {current_iter}: no reference yet (against {self.against}); '
                        f'{kept}')
        elif not rep.diff.images:
            logger.warning(f'Axis report {dataset} @ iter {current_iter}: no output matched the reference\'s '
                           f'(sizes changed, or smaller than 16 px); nothing reported')
        else:
            summary = rep.diff.summary()
            now, then = f'iter {current_iter}', f'iter {rep.reference_iter} ({self.against})'
            text = sentence(summary, a=then, b=now)
            skipped = f'; {len(rep.skipped)} skipped (size)' if rep.skipped else ''
            logger.info(f'Axis report {dataset}: {text} [{summary["images"]} images{skipped}]')
            if tb_logger:
                from iqa_plugin.labels.distortions import AXES

                prefix = 'axes' if dataset == self.first_set else f'axes/{dataset}'
                for axis in AXES:
                    tb_logger.add_scalar(f'{prefix}/{axis}', summary['axes'][axis], current_iter)
                ref, cur, maps = rep.figure
                item = rep.diff.images[0]
                moved = [a for a, _ in rep.diff.moved(item)]
                note = '' if moved else ': no axis above its noise floor, the two largest shown'
                moved = moved or [AXES[k] for k in np.argsort(-np.abs(item.means))[:2]]
                fig = stack([bar_chart(summary, title=f'{dataset}: {now} relative to {then}, mean over '
                                                      f'{summary["images"]} images'),
                             diff_figure(ref, cur, maps, moved, title=f'first image ({item.name}){note}',
                                         labels=(then, now))])
                tb_logger.add_image(f'{prefix}/report', fig, current_iter, dataformats='HWC')
        if promote:
            if rep.reference is not None:
                rep.reference.clear()
            rep.reference, rep.reference_iter, rep.current = rep.current, current_iter, None
        else:
            rep.current.clear()
            rep.current = None
        rep.diff, rep.figure = None, None
        return summary


class AxisReportMixin:
    """``val.axis_report`` in the IQA models (part of ``IQAModelMixin``, placed before ``SelectionMixin`` so that
    the report compares with the best outputs before the selection replaces them)."""

    def init_training_settings(self):
        super().init_training_settings()
        from basicsr.utils.dist_util import get_dist_info

        options = check_options(self.opt.get('val') or {})
        self.axis_report = None
        if options is not None and get_dist_info()[0] == 0:
            paths = self.opt.get('path') or {}
            root = paths.get('experiments_root') or osp.dirname(paths.get('models') or '.') or '.'
            self.axis_report = AxisReport(options, osp.join(root, 'axis_report'), self.device)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        report = getattr(self, 'axis_report', None)
        self._axis_dataset = dataloader.dataset.opt['name'] if report is not None else None
        if self._axis_dataset is not None:
            report.begin(self._axis_dataset)
        try:
            super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            self._axis_dataset = None

    def on_validation_image(self, index, visuals):
        super().on_validation_image(index, visuals)
        dataset = getattr(self, '_axis_dataset', None)
        if dataset is not None:
            self.axis_report.image(dataset, index, visuals['result'].clamp(0, 1))

    def after_validation(self, dataset_name, current_iter, tb_logger):
        super().after_validation(dataset_name, current_iter, tb_logger)  # the selection decides first
        if getattr(self, '_axis_dataset', None) != dataset_name:
            return
        report = self.axis_report
        if report.against == 'previous':
            promote = True
        else:
            state = getattr(getattr(self, 'selection', None), 'state', None) or {}
            promote = state.get('iter') == current_iter
        report.end(dataset_name, current_iter, tb_logger, promote)


def _safe(name):
    return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in str(name)) or 'val'
