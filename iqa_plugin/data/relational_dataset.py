"""Self-supervised triplets and ranked tiers for relational IQA, from any folder(s) of images.

Registered in BasicSR's ``DATASET_REGISTRY`` as ``RelationalTripletDataset``. Every distortion comes
from the project's one engine (``iqa_plugin.labels.distortions.DistortionEngine``); item ``i`` is a pure
function of (``seed``, ``i``), so results do not depend on worker count or order.

Modes (``mode`` option):

* ``'pairs'`` (stage 1, map regression): a reference patch and two independent random chains
  ``dist[0]``, ``dist[1]`` with their signed maps (the relational targets are ``maps[0]`` for
  P(dist0, ref), ``maps[1]`` for P(dist1, ref) and ``maps[0] - maps[1]`` for P(dist0, dist1));
* ``'tiers'`` (stage 2, ranking): ``n_tiers`` versions of the same content made by one chain of
  mixed operations at strictly increasing severity (``DistortionEngine.make_tiers``);
  ``tier[t] = t``, 0 = mildest (best);
* ``'sets'`` (stage 2 with a teacher, cross-type ranking): ``n_tiers`` versions of the same content
  made by independent random chains (different types and severities), ``tier = -1``: their order is
  not known from construction, ``RelationalModel`` takes it from a teacher (``train.teacher``).
"""
import cv2
import numpy as np
import torch
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from iqa_plugin.labels.distortions import AXES, DistortionEngine
from iqa_plugin.utils.image import image_paths, quantise8, read_image

MODES = ('pairs', 'tiers', 'sets')


@DATASET_REGISTRY.register()
class RelationalTripletDataset(data.Dataset):
    """(reference, distorted, maps) triplets or ranked tiers for the relational networks.

    Options (``opt``, BasicSR's dataset block):
        dataroot (str | list[str]): folder(s) of reference images, any content.
        mode (str): 'pairs' (default), 'tiers' or 'sets'.
        patch_size (int): P >= 16, default 64 (smaller images are upscaled to fit).
        n_tiers (int): images per item in 'tiers' and 'sets' modes, default 5.
        length (int): items per epoch, default 32 x number of images.
        seed (int): default 0.
        use_flip (bool): random horizontal flip of the crop, default True.
        engine (dict): ``DistortionEngine`` keyword arguments (types, max_ops, spatial_prob,
            severity_range, order); default ``{severity_range: [0.05, 1.0]}``.

    Items (dict): 'ref' (3, P, P) float32 RGB in [0, 1]; 'dist' (N, 3, P, P) with N = 2 ('pairs') or
    ``n_tiers``; 'maps' (N, K, P, P) float32 signed intensities on ``distortions.AXES``; 'tier' (N,) int64
    (-1 in 'pairs' mode); 'ref_path' (str); 'index' (int). Patches and distorted images are 8-bit valued.
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = dict(opt)
        if not self.opt.get('dataroot'):
            raise ValueError('RelationalTripletDataset needs dataroot (a folder or a list of folders of images)')
        self.paths = image_paths(self.opt['dataroot'])
        self.mode = self.opt.get('mode', 'pairs')
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        self.patch_size = int(self.opt.get('patch_size', 64))
        if self.patch_size < 16:
            raise ValueError(f'patch_size must be >= 16, got {self.patch_size}')
        self.n_tiers = int(self.opt.get('n_tiers', 5))
        if self.n_tiers < 2:
            raise ValueError(f'n_tiers must be >= 2, got {self.n_tiers}')
        self.seed = int(self.opt.get('seed', 0))
        self.use_flip = bool(self.opt.get('use_flip', True))
        engine_opt = {'severity_range': (0.05, 1.0), **dict(self.opt.get('engine') or {})}
        if 'severity_range' in engine_opt:
            engine_opt['severity_range'] = tuple(engine_opt['severity_range'])
        self.engine = DistortionEngine(**engine_opt)
        self._length = int(self.opt.get('length') or 32 * len(self.paths))
        self._images = {}
        self.axes = AXES

    def __len__(self):
        return self._length

    def _image(self, idx):
        img = self._images.get(idx)
        if img is None:
            img = read_image(self.paths[idx])[0].permute(1, 2, 0).numpy()
            self._images[idx] = img  # small folders: keep decoded images (per worker)
        return img

    def _crop(self, img, rng):
        p = self.patch_size
        h, w = img.shape[:2]
        if min(h, w) < p:
            s = p / min(h, w)
            img = cv2.resize(img, (max(p, round(w * s)), max(p, round(h * s))), interpolation=cv2.INTER_CUBIC)
            h, w = img.shape[:2]
        top, left = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        patch = img[top:top + p, left:left + p]
        if self.use_flip and rng.random() < 0.5:
            patch = patch[:, ::-1]
        return quantise8(np.ascontiguousarray(patch))

    def __getitem__(self, index):
        if not 0 <= index < self._length:
            raise IndexError(f'index {index} out of range for {self._length} items')
        rng = np.random.default_rng([self.seed, index])
        idx = int(rng.integers(len(self.paths)))
        ref = self._crop(self._image(idx), rng)
        if self.mode == 'pairs':
            results = [self.engine.sample(ref, rng=rng) for _ in range(2)]
            tier = torch.full((2,), -1, dtype=torch.long)
        elif self.mode == 'sets':
            results = [self.engine.sample(ref, rng=rng) for _ in range(self.n_tiers)]
            tier = torch.full((self.n_tiers,), -1, dtype=torch.long)
        else:
            results = self.engine.make_tiers(ref, self.n_tiers, rng=rng)
            tier = torch.arange(self.n_tiers)
        dist = np.stack([quantise8(d) for d, _, _ in results]).transpose(0, 3, 1, 2)
        maps = np.stack([m for _, m, _ in results])
        return {'ref': torch.from_numpy(np.ascontiguousarray(ref.transpose(2, 0, 1))),
                'dist': torch.from_numpy(np.ascontiguousarray(dist)), 'maps': torch.from_numpy(maps),
                'tier': tier, 'ref_path': str(self.paths[idx]), 'index': index}
