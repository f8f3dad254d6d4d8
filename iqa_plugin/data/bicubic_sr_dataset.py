"""``BicubicSRDataset``: SR pairs made on the fly from HR images alone.

BasicSR's ``PairedImageDataset`` needs LR files next to the HR ones; most photo folders (and
../shared/data/train) only hold HR images. This dataset crops an HR patch (training) or takes the
whole image cropped to a multiple of ``scale`` (validation) and makes the LR input with MATLAB-style
bicubic downsampling (BasicSR's ``imresize``, the standard for bicubic SR benchmarks).

Options: ``dataroot_gt`` (a folder or a list of folders), ``scale``, ``phase``, and for training
``gt_size``, ``use_hflip``, ``use_rot``. Items: ``{'lq': (3,h,w), 'gt': (3,H,W), 'lq_path', 'gt_path'}``,
RGB float in [0, 1], the keys BasicSR's SR models read.
"""
import random

import numpy as np
from basicsr.data.transforms import augment
from basicsr.utils import img2tensor
from basicsr.utils.matlab_functions import imresize
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from iqa_plugin.utils.image import list_images, read_image


def bicubic_lq(gt, scale):
    """MATLAB-style bicubic downsampling by ``scale`` (BasicSR's ``imresize``), clipped to [0, 1].

    ``gt``: (H, W, C) float32 in [0, 1], H and W multiples of ``scale``; returns (H/scale, W/scale, C) float32."""
    return np.clip(imresize(gt, 1 / scale), 0, 1).astype(np.float32)


@DATASET_REGISTRY.register()
class BicubicSRDataset(data.Dataset):

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        roots = opt['dataroot_gt'] if isinstance(opt['dataroot_gt'], (list, tuple)) else [opt['dataroot_gt']]
        self.paths = [p for root in roots for p in list_images(root)]
        if not self.paths:
            raise ValueError(f"BicubicSRDataset: no images in {', '.join(map(str, roots))}")
        self.scale = int(opt['scale'])
        self.train = opt.get('phase') == 'train'
        if self.train:
            self.gt_size = int(opt['gt_size'])
            if self.gt_size % self.scale:
                raise ValueError(f'BicubicSRDataset: gt_size {self.gt_size} is not a multiple of scale {self.scale}')

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        gt = read_image(path)[0].permute(1, 2, 0).numpy()  # HWC RGB float32 [0, 1]
        s = self.scale
        if self.train:
            h, w = gt.shape[:2]
            if min(h, w) < self.gt_size:
                raise ValueError(f'BicubicSRDataset: {path} is {h}x{w}, smaller than gt_size {self.gt_size}')
            top, left = random.randint(0, h - self.gt_size), random.randint(0, w - self.gt_size)
            gt = np.ascontiguousarray(gt[top:top + self.gt_size, left:left + self.gt_size])
            gt = augment(gt, self.opt.get('use_hflip', True), self.opt.get('use_rot', True))
        else:
            h, w = gt.shape[:2]
            gt = gt[:h - h % s, :w - w % s]
        gt = np.ascontiguousarray(gt)
        lq = bicubic_lq(gt, s)
        gt_t, lq_t = img2tensor([gt, lq], bgr2rgb=False, float32=True)
        return {'lq': lq_t, 'gt': gt_t, 'lq_path': str(path), 'gt_path': str(path)}

