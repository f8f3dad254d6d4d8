"""``MultiGTDataset``: SR training on images with several ground truths (HGGT-style multi-GT sets).

Every item is one group: the original, its enhanced candidates and their labels (the multi-GT
contract, docs/multigt.md), with ONE crop and ONE flip/rotation shared by all candidates and the LQ.
Layouts, labels and bad-input handling: ``iqa_plugin.data.multigt_layout``.

Options (``datasets.<phase>``)::

    type: MultiGTDataset
    layout: hggt                 # or generic
    dataroot: DIR                # hggt: holds images/ and labels/ (with set: NAME, or the only set)
    set: 0-20193
    # dataroot_gt: DIR           # hggt: the folder with original/, 01/, ... ; generic: the same
    # dataroot_labels: DIR       # hggt: the folder with A/, B/, C/
    # original_folder: original  # generic: the originals' folder; candidate_folders: [..] (default: the others)
    # labels_csv: FILE           # generic: rows name,candidate,label (optional; unlabelled = Similar)
    lq_mode: bicubic             # bicubic | realesrgan | disk (default: disk when dataroot_lq is set)
    # dataroot_lq: DIR           # disk: <name>.<ext> per group, (H/scale, W/scale)
    scale: 4
    gt_size: 256                 # train: crop side (GT pixels)
    use_hflip: true
    use_rot: true
    require_positive: false      # true: drop groups without a Positive candidate (upos, smp)
    check_sizes: true            # compare image headers at start-up (skips mismatched groups)

``lq_mode: realesrgan`` (training only) follows BasicSR 1.4.2's ``RealESRGANDataset``: the GT is
augmented, then padded/cropped to ``crop_pad_size`` (default 400, not ``gt_size``: the model crops after
degrading), no 'lq' is returned, and the item carries 'kernel1', 'kernel2', 'sinc_kernel' drawn by
that dataset's own code (``RealESRGANKernels``) from the usual kernel options (``blur_kernel_size``,
``kernel_list``, ``kernel_prob``, ``blur_sigma``, ``betag_range``, ``betap_range``, ``sinc_prob``, the
same with suffix 2, ``final_sinc_prob``), so ``RealESRGANModel.feed_data`` degrades the original.

Item (train; val: whole images, cropped to a multiple of ``scale``, no augmentation)::

    'lq'            (3, h, w) float32 RGB [0, 1]       (absent with realesrgan)
    'gt'            (3, H, W) the original (index 0)
    'gt_candidates' (N, 3, H, W)                       index 0 = original, then the sorted candidate folders
    'gt_labels'     (N,) int64                         LABEL_* constants, index 0 = LABEL_ORIGINAL
    'gt_names'      list of N str                      e.g. ['original', '01', '02', '03', '04']
    'gt_paths'      list of N str
    'gt_path', 'lq_path' (the original's path when the LQ is made on the fly), 'group'
"""
import os
import random

import cv2
import numpy as np
import torch
from basicsr.data.realesrgan_dataset import RealESRGANDataset
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import get_root_logger, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from iqa_plugin.data import multigt_layout as L
from iqa_plugin.data.bicubic_sr_dataset import bicubic_lq
from iqa_plugin.utils.image import read_image

LQ_MODES = ('disk', 'bicubic', 'realesrgan')
REALESRGAN_KEYS = ('blur_kernel_size', 'kernel_list', 'kernel_prob', 'blur_sigma', 'betag_range', 'betap_range',
                   'sinc_prob', 'blur_kernel_size2', 'kernel_list2', 'kernel_prob2', 'blur_sigma2', 'betag_range2',
                   'betap_range2', 'sinc_prob2', 'final_sinc_prob')


class _ConstantClient:
    """A BasicSR file client that always returns the same encoded image."""

    def __init__(self, data_bytes):
        self.data_bytes = data_bytes

    def get(self, filepath, client_key='default'):
        return self.data_bytes


class RealESRGANKernels:
    """Real-ESRGAN's three degradation kernels, drawn by BasicSR 1.4.2's ``RealESRGANDataset.__getitem__``.

    The dataset is composed, not copied: it is built on an empty file list (``meta_info`` = os.devnull)
    and reads a constant 400x400 image through a constant file client, so its kernel code runs as is
    (and draws from ``random`` / ``np.random`` exactly as it does). ``sample()`` -> dict of float32
    tensors 'kernel1' (21, 21), 'kernel2' (21, 21), 'sinc_kernel' (21, 21).
    """

    SIDE = 400  # RealESRGANDataset's crop_pad_size: the constant image is neither padded nor cropped

    def __init__(self, opt):
        missing = [k for k in REALESRGAN_KEYS if k not in opt]
        if missing:
            raise ValueError(f"MultiGTDataset: lq_mode realesrgan needs the kernel options {', '.join(missing)} "
                             "(as in BasicSR's RealESRGANDataset)")
        kopt = {k: opt[k] for k in REALESRGAN_KEYS}
        kopt.update(io_backend={'type': 'disk'}, dataroot_gt='', meta_info=os.devnull, use_hflip=False,
                    use_rot=False)
        self.dataset = RealESRGANDataset(kopt)
        _, png = cv2.imencode('.png', np.zeros((self.SIDE, self.SIDE, 3), np.uint8))
        self.dataset.file_client = _ConstantClient(png.tobytes())
        self.dataset.paths = ['<constant>']

    def sample(self):
        d = self.dataset[0]
        return {k: d[k] for k in ('kernel1', 'kernel2', 'sinc_kernel')}


def _read_rgb(path):
    """(H, W, 3) float32 RGB in [0, 1] (the project's reader: grey/alpha/16-bit handled)."""
    return np.ascontiguousarray(read_image(path)[0].permute(1, 2, 0).numpy())


@DATASET_REGISTRY.register()
class MultiGTDataset(data.Dataset):
    """Groups of ground truths with one shared crop/flip/rotation; see the module docstring."""

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.train = opt.get('phase') == 'train'
        self.scale = int(opt.get('scale', 4))
        self.lq_mode = opt.get('lq_mode', 'disk' if opt.get('dataroot_lq') else 'bicubic')
        if self.lq_mode not in LQ_MODES:
            raise ValueError(f"MultiGTDataset: unknown lq_mode '{self.lq_mode}'; known: {', '.join(LQ_MODES)}")
        if self.lq_mode == 'disk' and not opt.get('dataroot_lq'):
            raise ValueError('MultiGTDataset: lq_mode disk needs dataroot_lq')
        if self.lq_mode == 'realesrgan' and not self.train:
            raise ValueError('MultiGTDataset: lq_mode realesrgan degrades in the model during training; '
                             'the val phase needs dataroot_lq (lq_mode disk) or lq_mode bicubic')
        if self.train:
            self.gt_size = int(opt['gt_size'])
            if self.gt_size % self.scale:
                raise ValueError(f'MultiGTDataset: gt_size {self.gt_size} is not a multiple of scale {self.scale}')
        self.crop_pad_size = int(opt.get('crop_pad_size', RealESRGANKernels.SIDE))
        self.kernels = RealESRGANKernels(opt) if self.lq_mode == 'realesrgan' else None

        scan, source = self._scan(opt)
        self.candidate_names = scan.candidate_names
        groups = scan.groups
        skipped = list(scan.skipped)
        if self.train and self.lq_mode != 'realesrgan':  # realesrgan pads small images, as BasicSR does
            groups = self._drop_small(groups, skipped)
        self.lq_paths = {}
        if self.lq_mode == 'disk':
            groups = self._attach_lq(groups, skipped)
        n_before = len(groups)
        if opt.get('require_positive', False):
            groups = [g for g in groups if L.LABEL_POSITIVE in g.labels]
        self.dropped_no_positive = n_before - len(groups)
        self.groups = groups
        self.skipped = skipped

        logger = get_root_logger()
        for s in skipped:
            logger.warning(f'MultiGTDataset: {s.line()}')
        counts = {}
        for s in skipped:
            counts[s.reason] = counts.get(s.reason, 0) + 1
        self.skip_counts = counts
        detail = ', '.join(f'{L.SKIP_REASONS[r]}: {c}' for r, c in counts.items())
        msg = (f'MultiGTDataset [{opt.get("name", "")}]: {len(groups)} groups of {len(self.candidate_names)} GTs '
               f'({", ".join(self.candidate_names)}) from {source}; lq_mode {self.lq_mode}; '
               f'skipped {len(skipped)}' + (f' ({detail})' if detail else ''))
        if opt.get('require_positive', False):
            msg += f'; dropped {self.dropped_no_positive} without a Positive (require_positive)'
        logger.info(msg)
        if not groups:
            raise ValueError(f'MultiGTDataset: no usable group in {source} (skipped {len(skipped)}'
                             f'{", " + detail if detail else ""}; dropped {self.dropped_no_positive} '
                             'without a Positive)')

    # ------------------------------------------------------------------------------ start-up
    def _scan(self, opt):
        layout = opt.get('layout', 'hggt')
        check_sizes = bool(opt.get('check_sizes', True))
        if layout == 'hggt':
            images, labels = L.resolve_hggt_dirs(opt.get('dataroot'), opt.get('set'), opt.get('dataroot_gt'),
                                                 opt.get('dataroot_labels'))
            return L.scan_hggt(images, labels, check_sizes), str(images)
        if layout == 'generic':
            if not opt.get('dataroot_gt'):
                raise ValueError('MultiGTDataset (generic): set dataroot_gt (one folder per candidate)')
            return L.scan_generic(opt['dataroot_gt'], opt.get('original_folder', L.ORIGINAL),
                                  opt.get('candidate_folders'), opt.get('labels_csv'),
                                  check_sizes), str(opt['dataroot_gt'])
        raise ValueError(f"MultiGTDataset: unknown layout '{layout}'; known: hggt, generic")

    def _drop_small(self, groups, skipped):
        kept = []
        for g in groups:
            if g.size is not None and min(g.size) < self.gt_size:
                skipped.append(L.Skip(g.name, 'too_small', str(g.paths[0]),
                                      f'{g.size[0]}x{g.size[1]} is smaller than gt_size {self.gt_size}'))
            else:
                kept.append(g)
        return kept

    def _attach_lq(self, groups, skipped):
        lq_dir = self.opt['dataroot_lq']
        if not os.path.isdir(lq_dir):
            raise FileNotFoundError(f'MultiGTDataset: dataroot_lq not found: {lq_dir}')
        kept = []
        for g in groups:
            p = L.find_lq(lq_dir, g.name)
            try:
                if p is None:
                    raise L.BadGroup('missing_lq', os.path.join(lq_dir, f'{g.name}.png'), 'missing LQ file')
                if g.size is not None:
                    h, w = L.image_size(p)
                    if (h * self.scale, w * self.scale) != tuple(g.size):
                        raise L.BadGroup('size_mismatch', p, f'LQ {h}x{w} is not the GT {g.size[0]}x{g.size[1]} '
                                                             f'divided by scale {self.scale}')
            except L.BadGroup as e:
                skipped.append(L.Skip(g.name, e.reason, e.path, e.message))
                continue
            self.lq_paths[g.name] = p
            kept.append(g)
        return kept

    # ------------------------------------------------------------------------------ items
    def __len__(self):
        return len(self.groups)

    def _crop_pad(self, imgs):
        """RealESRGANDataset's pad (reflect-101) / random crop to crop_pad_size, one window for all."""
        size = self.crop_pad_size
        h, w = imgs[0].shape[:2]
        if h < size or w < size:
            imgs = [cv2.copyMakeBorder(x, 0, max(0, size - h), 0, max(0, size - w), cv2.BORDER_REFLECT_101)
                    for x in imgs]
        h, w = imgs[0].shape[:2]
        if h > size or w > size:
            top, left = random.randint(0, h - size), random.randint(0, w - size)
            imgs = [np.ascontiguousarray(x[top:top + size, left:left + size]) for x in imgs]
        return imgs

    def _random_crop(self, imgs, path):
        """One random gt_size window for every image of the list."""
        h, w = imgs[0].shape[:2]
        size = self.gt_size
        if min(h, w) < size:
            raise ValueError(f'MultiGTDataset: {path} is {h}x{w}, smaller than gt_size {size}')
        top, left = random.randint(0, h - size), random.randint(0, w - size)
        return [np.ascontiguousarray(x[top:top + size, left:left + size]) for x in imgs]

    def __getitem__(self, index):
        g = self.groups[index]
        gts = [_read_rgb(p) for p in g.paths]
        shapes = {x.shape for x in gts}
        if len(shapes) > 1:  # check_sizes: false, or files changed after start-up
            raise ValueError(f"MultiGTDataset: candidates of group '{g.name}' differ in size: "
                             f"{sorted(s[:2] for s in shapes)}")
        s = self.scale
        lq = None
        lq_path = str(g.paths[0])
        if self.lq_mode == 'disk':
            lq_path = str(self.lq_paths[g.name])
            lq = _read_rgb(lq_path)
            if self.train:
                gts, lq = paired_random_crop(gts, lq, self.gt_size, s, lq_path)
                gts = [np.ascontiguousarray(x) for x in (gts if isinstance(gts, list) else [gts])]
                lq = np.ascontiguousarray(lq)
                *gts, lq = augment(gts + [lq], self.opt.get('use_hflip', True), self.opt.get('use_rot', True))
            else:
                gts = [x[:lq.shape[0] * s, :lq.shape[1] * s] for x in gts]
        elif self.lq_mode == 'bicubic':
            if self.train:
                gts = augment(self._random_crop(gts, g.paths[0]), self.opt.get('use_hflip', True), self.opt.get('use_rot', True))
            else:
                h, w = gts[0].shape[:2]
                gts = [x[:h - h % s, :w - w % s] for x in gts]
            gts = [np.ascontiguousarray(x) for x in gts]
            lq = bicubic_lq(gts[0], s)
        else:  # realesrgan: augment first, then crop/pad, as RealESRGANDataset does
            gts = augment(gts, self.opt.get('use_hflip', True), self.opt.get('use_rot', True))
            gts = self._crop_pad(gts if isinstance(gts, list) else [gts])
        if not isinstance(gts, list):
            gts = [gts]
        cands = torch.stack(img2tensor([np.ascontiguousarray(x) for x in gts], bgr2rgb=False, float32=True))
        item = {
            'gt': cands[0].clone(),
            'gt_candidates': cands,
            'gt_labels': torch.tensor(g.labels, dtype=torch.int64),
            'gt_names': list(self.candidate_names),
            'gt_paths': [str(p) for p in g.paths],
            'gt_path': str(g.paths[0]),
            'lq_path': lq_path,
            'group': g.name,
        }
        if lq is not None:
            item['lq'] = img2tensor(np.ascontiguousarray(lq), bgr2rgb=False, float32=True)
        if self.kernels is not None:
            item.update(self.kernels.sample())
        return item

