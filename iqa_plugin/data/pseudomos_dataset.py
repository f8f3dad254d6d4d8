"""Groups of distorted patches with pseudo-MOS labels and signed distortion maps, from any image folder.

Registered in BasicSR's ``DATASET_REGISTRY`` as ``PseudoMOSDataset``. Two sources:

* on the fly (``dataroot``): each item crops a patch from an image, distorts it ``group_size``
  times with ``iqa_plugin.labels.distortions.DistortionEngine`` and (optionally) scores the group with the
  ``iqa_plugin.labels.pseudomos_ensemble.PseudoMOS`` ensemble. Item ``i`` is a pure function of (``seed``, ``i``), so
  results do not depend on worker count or order.
* a cache file (``cache_file``) written by ``python -m iqa_plugin.labels.pseudomos build`` with the same
  options: the same items, read back instead of recomputed (the ensemble is the slow part).

Images and patches are 8-bit valued (``round(255 x) / 255``), so cached and fresh items are identical.
"""
import numpy as np
import torch
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from iqa_plugin.labels.distortions import AXES, DistortionEngine
from iqa_plugin.labels.pseudomos_cache import load_cache
from iqa_plugin.labels.pseudomos_ensemble import MEMBERS, NORMALIZATIONS, PseudoMOS, normalize_scores, resolve_members
from iqa_plugin.utils.image import image_paths, quantise8, read_image


@DATASET_REGISTRY.register()
class PseudoMOSDataset(data.Dataset):
    """Reference patches with groups of distorted versions, pseudo-MOS and maps.

    Options (``opt`` dict, BasicSR's dataset block):
        dataroot (str | list[str]): folder(s) of reference images (any content); or
        cache_file (str): a file from ``python -m iqa_plugin.labels.pseudomos build`` (takes precedence).
        patch_size (int): P, default 128 (smaller images are upscaled to fit).
        group_size (int): N distorted versions per reference, default 8.
        mode (str): 'tiers' (``chains`` ranked chains of ``N / chains`` increasing severities, same
            operations within a chain) or 'random' (N independent ``engine.sample`` draws).
        chains (int): tiers mode only; must divide ``group_size``. Default 1.
        pmos (bool): score groups with the ensemble (on the fly only), default True.
        members (list[str] | str | None): ensemble members, default ``pseudomos.DEFAULT_MEMBERS``.
        normalize (str): 'zscore' or 'rank' within the group; with a cache also 'global'.
        return_maps (bool): add 'maps'; default True on the fly, and whether the cache stores maps.
        length (int): items per epoch on the fly, default 16 x number of images.
        seed (int): default 0.
        engine (dict): ``DistortionEngine`` keyword arguments (types, max_ops, spatial_prob,
            severity_range, order).
        device (str): where the ensemble runs, default 'cpu'.

    Items (dict):
        'ref' (3, P, P) float32 RGB in [0, 1]; 'dist' (N, 3, P, P); 'pmos' (N,) float32, higher = worse
        (absent when ``pmos`` is False); 'raw' (N, M) oriented member scores; 'tier' (N,) int64
        (0 = mildest; -1 in random mode); 'chain' (N,) int64 (-1 in random mode); 'maps' (N, K, P, P)
        float32 signed intensities on ``distortions.AXES`` (when returned); 'ref_path' (str); 'index'.
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = dict(opt)
        self.seed = int(opt.get('seed', 0))
        self.normalize = opt.get('normalize', 'zscore')
        self.cache_file = opt.get('cache_file')
        if self.cache_file:
            self._init_cache()
        else:
            self._init_fly()

    # -- cache ---------------------------------------------------------------------------------
    def _init_cache(self):
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got '{self.normalize}'")
        d = load_cache(self.cache_file)
        self._cache = d
        self.axes = tuple(d['axes'])
        self.ensemble_members = tuple(d['members'])
        self.paths = list(d.get('ref_paths', []))
        g, n = d['dist'].shape[:2]
        self.group_size = n
        self.patch_size = int(d['dist'].shape[-1])
        self.has_pmos = True
        has_maps = 'maps' in d
        self.return_maps = bool(self.opt.get('return_maps', has_maps))
        if self.return_maps and not has_maps:
            raise ValueError(f'return_maps is set but {self.cache_file} stores no maps (build it with --store-maps)')
        raw = d['raw'].reshape(g * n, -1)
        groups = torch.arange(g).repeat_interleave(n)
        self._pmos = normalize_scores(raw, groups, self.normalize).mean(1).reshape(g, n)
        self._length = g

    # -- on the fly ----------------------------------------------------------------------------
    def _init_fly(self):
        if 'dataroot' not in self.opt or self.opt['dataroot'] is None:
            raise ValueError('PseudoMOSDataset needs dataroot (image folder) or cache_file')
        if self.normalize not in ('zscore', 'rank'):
            raise ValueError(f"normalize on the fly must be 'zscore' or 'rank' (per group), got '{self.normalize}'")
        self.paths = image_paths(self.opt['dataroot'])
        self.axes = AXES
        self.patch_size = int(self.opt.get('patch_size', 128))
        self.group_size = int(self.opt.get('group_size', 8))
        self.mode = self.opt.get('mode', 'tiers')
        self.chains = int(self.opt.get('chains', 1))
        if self.mode not in ('tiers', 'random'):
            raise ValueError(f"mode must be 'tiers' or 'random', got '{self.mode}'")
        if self.patch_size < 16:
            raise ValueError(f'patch_size must be >= 16, got {self.patch_size}')
        if self.group_size < 1:
            raise ValueError(f'group_size must be >= 1, got {self.group_size}')
        if self.mode == 'tiers' and (self.chains < 1 or self.group_size % self.chains):
            raise ValueError(f'chains ({self.chains}) must divide group_size ({self.group_size})')
        self.engine = DistortionEngine(**dict(self.opt.get('engine') or {}))
        self.has_pmos = bool(self.opt.get('pmos', True))
        self.return_maps = bool(self.opt.get('return_maps', True))
        self._length = int(self.opt.get('length') or 16 * len(self.paths))
        self._ensemble = None
        if self.has_pmos:
            self.ensemble_members = resolve_members(self.opt.get('members'))
            need = max(MEMBERS[m].min_size for m in self.ensemble_members)
            if self.patch_size < need:
                raise ValueError(f'patch_size {self.patch_size} is below the {need} px that members '
                                 f'{", ".join(self.ensemble_members)} need')
        else:
            self.ensemble_members = ()

    def _ensemble_fn(self):
        # Built lazily, so each DataLoader worker builds its own copy and nothing heavy is pickled.
        if self._ensemble is None:
            self._ensemble = PseudoMOS(self.ensemble_members, normalize=self.normalize,
                                       device=self.opt.get('device', 'cpu'), batch_size=self.group_size)
        return self._ensemble

    def _crop(self, img, rng):
        import cv2

        p = self.patch_size
        h, w = img.shape[:2]
        if min(h, w) < p:
            s = p / min(h, w)
            img = cv2.resize(img, (max(p, round(w * s)), max(p, round(h * s))),
                             interpolation=cv2.INTER_CUBIC)
            h, w = img.shape[:2]
        top, left = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        return quantise8(img[top:top + p, left:left + p])

    def _fly_item(self, index):
        rng = np.random.default_rng([self.seed, index])
        path = self.paths[index % len(self.paths)]
        img = read_image(path)[0].permute(1, 2, 0).numpy()
        ref = self._crop(img, rng)
        n = self.group_size
        if self.mode == 'tiers':
            per = n // self.chains
            results = []
            for _ in range(self.chains):
                results.extend(self.engine.make_tiers(ref, per, rng=rng))
            tier = torch.arange(per).repeat(self.chains)
            chain = torch.arange(self.chains).repeat_interleave(per)
        else:
            results = [self.engine.sample(ref, rng=rng) for _ in range(n)]
            tier = torch.full((n,), -1, dtype=torch.long)
            chain = torch.full((n,), -1, dtype=torch.long)
        dist = torch.from_numpy(np.stack([quantise8(d) for d, _, _ in results]).transpose(0, 3, 1, 2).copy())
        ref_t = torch.from_numpy(np.ascontiguousarray(ref.transpose(2, 0, 1)))
        item = {'ref': ref_t, 'dist': dist, 'tier': tier, 'chain': chain, 'ref_path': str(path), 'index': index}
        if self.return_maps:
            item['maps'] = torch.from_numpy(np.stack([m for _, m, _ in results]))
        if self.has_pmos:
            pmos, raw = self._ensemble_fn()(dist, ref_t)
            item['pmos'], item['raw'] = pmos, raw
        return item

    def _cache_item(self, index):
        d = self._cache
        item = {'ref': d['ref'][index].float() / 255.0, 'dist': d['dist'][index].float() / 255.0,
                'pmos': self._pmos[index].clone(), 'raw': d['raw'][index].float(), 'tier': d['tier'][index].long(),
                'chain': d['chain'][index].long(), 'index': index,
                'ref_path': self.paths[index] if index < len(self.paths) else ''}
        if self.return_maps:
            item['maps'] = d['maps'][index].float()
        return item

    def __getitem__(self, index):
        if not 0 <= index < self._length:
            raise IndexError(f'index {index} out of range for {self._length} items')
        return self._cache_item(index) if self.cache_file else self._fly_item(index)

    def __len__(self):
        return self._length
