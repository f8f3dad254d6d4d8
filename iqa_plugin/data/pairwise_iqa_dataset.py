"""Pairwise (2AFC) IQA records for training and validating A-FINE: ``type: PairwiseIQADataset``.

A record is a reference and two test images with a preference label::

    label = P(img1 is better than img2)  in [0, 1]: 1 = img1 better, 0 = img2 better, 0.5 = tie

as in DiffIQA / SRIQA-Bench. Optional ``label_1ref`` / ``label_2ref`` give P(img1 better than the
reference) and P(img2 better than the reference) (DiffIQA's test-vs-reference labels, used in
A-FINE's stage 1).

Meta file (``meta_file``), paths relative to ``dataroot`` (absolute paths are kept):

* CSV/TSV with a header naming the columns ``ref``, ``img1``, ``img2``, ``label`` and optionally
  ``label_1ref``, ``label_2ref`` (aliases: ``reference``; ``a``/``dist_a``; ``b``/``dist_b``;
  ``gt_score``/``gt_score_12``; ``gt_score_1ref``; ``gt_score_2ref``);
* CSV without a header in the A-FINE/DiffIQA triplet order ``img1,img2,ref,label[,label_1ref,label_2ref]``;
* JSON: a list of objects with the same keys (or ``{"records": [...]}``).

Options: ``dataroot`` (folder), ``meta_file``, ``phase`` ('train' enables augmentation and random
crops), ``gt_size`` (crop the three images at the same place to gt_size x gt_size; random in
training, centred otherwise), ``use_hflip``, ``use_rot``. The three images of a record must have the
same size. Items: ``img1``, ``img2``, ``ref`` (3, H, W) RGB float in [0, 1], ``label``,
``label_1ref``, ``label_2ref`` (float tensors, NaN when absent) and the three paths.

Label-free records (no ``meta_file``, ``synthetic: {...}``): ``dataroot`` is a folder (or list of
folders) of clean images; each item crops one (``gt_size``) and draws two ranked versions of it from
the distortion engine (``DistortionEngine.make_tiers``: the same chain of operations at a lower and a
higher severity), in random order; label = 1 when img1 is the milder one. ``label_1ref`` and
``label_2ref`` are 0 (a distorted version is worse than its clean reference). Options of
``synthetic``: ``max_ops`` (2), ``seed`` (0; validation items are fixed per index, training items are
drawn afresh from Python's ``random``), ``types`` (the engine's default list).
"""
import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import torch
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from iqa_plugin.labels.distortions import DistortionEngine, image_to_tensor, tensor_to_image
from iqa_plugin.utils.image import list_images, read_image

_ALIASES = {
    'ref': ('ref', 'reference', 'ref_path'),
    'img1': ('img1', 'a', 'dist_a', 'img1_path', 'test1'),
    'img2': ('img2', 'b', 'dist_b', 'img2_path', 'test2'),
    'label': ('label', 'gt_score', 'gt_score_12', 'pref', 'preference'),
    'label_1ref': ('label_1ref', 'gt_score_1ref'),
    'label_2ref': ('label_2ref', 'gt_score_2ref'),
}
_HEADERLESS_ORDER = ('img1', 'img2', 'ref', 'label', 'label_1ref', 'label_2ref')


def _canonical(key):
    k = str(key).strip().lower()
    for name, aliases in _ALIASES.items():
        if k in aliases:
            return name
    return None


def _parse_label(value, where):
    if value is None or (isinstance(value, str) and value.strip() == ''):
        return float('nan')
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f'{where}: label {value!r} is not a number') from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f'{where}: label {v} is outside [0, 1] (1 = first image better, 0.5 = tie)')
    return v


def _record(raw, where):
    rec = {}
    for key, value in raw.items():
        name = _canonical(key)
        if name is not None:
            rec[name] = value
    missing = [k for k in ('ref', 'img1', 'img2', 'label') if k not in rec or rec[k] in (None, '')]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)} (need ref, img1, img2, label)")
    out = {k: str(rec[k]).strip() for k in ('ref', 'img1', 'img2')}
    out['label'] = _parse_label(rec['label'], where)
    if math.isnan(out['label']):
        raise ValueError(f'{where}: empty label')
    for k in ('label_1ref', 'label_2ref'):
        out[k] = _parse_label(rec.get(k), where)
    return out


def read_pairwise_meta(meta_file):
    """Records (dicts with ref, img1, img2, label, label_1ref, label_2ref) from a CSV/TSV/JSON meta file."""
    meta_file = Path(meta_file)
    if not meta_file.is_file():
        raise FileNotFoundError(f'pairwise meta file not found: {meta_file}')
    if meta_file.suffix.lower() == '.json':
        with open(meta_file, encoding='utf-8') as f:
            try:
                items = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f'{meta_file}: invalid JSON ({e})') from None
        if isinstance(items, dict):
            items = items.get('records')
        if not isinstance(items, list):
            raise ValueError(f'{meta_file}: expected a JSON list of records (or {{"records": [...]}})')
        records = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ValueError(f'{meta_file}: record {i} is not an object')
            records.append(_record(item, f'{meta_file} record {i}'))
    else:
        text = meta_file.read_text(encoding='utf-8')
        delimiter = '\t' if meta_file.suffix.lower() == '.tsv' or ('\t' in text and ',' not in text) else ','
        rows = [r for r in csv.reader(text.splitlines(), delimiter=delimiter) if r and any(c.strip() for c in r)]
        if not rows:
            raise ValueError(f'{meta_file}: no records')
        header = [_canonical(c) for c in rows[0]]
        if {'ref', 'img1', 'img2', 'label'} <= set(header):
            records = [_record(dict(zip(rows[0], r)), f'{meta_file} line {i + 2}') for i, r in enumerate(rows[1:])]
        else:
            records = []
            for i, r in enumerate(rows):
                if len(r) < 4:
                    raise ValueError(f'{meta_file} line {i + 1}: expected img1,img2,ref,label[,label_1ref,label_2ref] '
                                     f'or a header row, got {len(r)} column(s)')
                records.append(_record(dict(zip(_HEADERLESS_ORDER, r)), f'{meta_file} line {i + 1}'))
    if not records:
        raise ValueError(f'{meta_file}: no records')
    return records


def _crop_box(h, w, size, rand):
    if rand:
        return random.randint(0, h - size), random.randint(0, w - size)
    return (h - size) // 2, (w - size) // 2


@DATASET_REGISTRY.register()
class PairwiseIQADataset(data.Dataset):
    """Reference + two test images + preference label (see the module docstring for the format)."""

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.train = opt.get('phase', 'train') == 'train'
        self.gt_size = opt.get('gt_size')
        self.use_hflip = bool(opt.get('use_hflip', False)) and self.train
        self.use_rot = bool(opt.get('use_rot', False)) and self.train
        self.synthetic = opt.get('synthetic')
        if opt.get('meta_file'):
            if self.synthetic:
                raise ValueError('PairwiseIQADataset: give either meta_file (labelled records) or synthetic, not both')
            self.root = Path(opt.get('dataroot') or Path(opt['meta_file']).parent)
            if not self.root.is_dir():
                raise FileNotFoundError(f'PairwiseIQADataset dataroot not found: {self.root}')
            self.records = read_pairwise_meta(opt['meta_file'])
        elif self.synthetic is not None:
            self._init_synthetic(opt)
        else:
            raise ValueError('PairwiseIQADataset needs meta_file (CSV/TSV/JSON of ref, img1, img2, label) '
                             'or synthetic: {} with a dataroot of clean images')

    def _init_synthetic(self, opt):
        cfg = dict(self.synthetic or {})
        unknown = set(cfg) - {'max_ops', 'seed', 'types'}
        if unknown:
            raise ValueError(f"PairwiseIQADataset synthetic: unknown key(s) {', '.join(sorted(unknown))}; "
                             'known: max_ops, seed, types')
        roots = opt.get('dataroot')
        if not roots:
            raise ValueError('PairwiseIQADataset synthetic needs dataroot (folder(s) of clean images)')
        roots = roots if isinstance(roots, (list, tuple)) else [roots]
        self.paths = [p for r in roots for p in list_images(r)]
        if not self.paths:
            raise ValueError(f"no images found in {', '.join(str(r) for r in roots)}")
        self.seed = int(cfg.get('seed', 0))
        self.engine = DistortionEngine(types=cfg.get('types'), max_ops=int(cfg.get('max_ops', 2)), seed=self.seed)
        self.records = None

    def __len__(self):
        return len(self.records) if self.records is not None else len(self.paths)

    def _synthetic_item(self, index):
        rng = np.random.default_rng(random.getrandbits(63) if self.train else self.seed * 1000003 + index)
        path = self.paths[index]
        ref = read_image(path)[0]
        h, w = ref.shape[1:]
        if self.gt_size:
            size = int(self.gt_size)
            if h < size or w < size:
                raise ValueError(f'{path.name} is {h}x{w}, smaller than gt_size {size}')
            top, left = ((int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))) if self.train
                         else ((h - size) // 2, (w - size) // 2))
            ref = ref[:, top:top + size, left:left + size]
        (mild, _, _), (strong, _, _) = self.engine.make_tiers(tensor_to_image(ref), 2, rng=rng)
        mild, strong = image_to_tensor(mild, like=ref), image_to_tensor(strong, like=ref)
        first_mild = bool(rng.integers(0, 2))
        img1, img2 = (mild, strong) if first_mild else (strong, mild)
        return [img1, img2, ref], (1.0 if first_mild else 0.0, 0.0, 0.0), [str(path)] * 3

    def _path(self, p):
        p = Path(p)
        return p if p.is_absolute() else self.root / p

    def __getitem__(self, index):
        if self.records is None:
            imgs, labels, paths = self._synthetic_item(index)
        else:
            imgs, labels, paths = self._labelled_item(index)
        if self.use_hflip and random.random() < 0.5:
            imgs = [t.flip(-1) for t in imgs]
        if self.use_rot:
            if random.random() < 0.5:
                imgs = [t.flip(-2) for t in imgs]
            if imgs[0].shape[-1] == imgs[0].shape[-2] and random.random() < 0.5:  # square only: keeps batch shapes
                imgs = [t.transpose(-2, -1) for t in imgs]
        img1, img2, ref = (t.contiguous() for t in imgs)
        label, label_1ref, label_2ref = (torch.tensor(v, dtype=torch.float32) for v in labels)
        return {'img1': img1, 'img2': img2, 'ref': ref, 'label': label, 'label_1ref': label_1ref,
                'label_2ref': label_2ref, 'img1_path': str(paths[0]), 'img2_path': str(paths[1]),
                'ref_path': str(paths[2])}

    def _labelled_item(self, index):
        rec = self.records[index]
        paths = [self._path(rec[k]) for k in ('img1', 'img2', 'ref')]
        imgs = [read_image(p)[0] for p in paths]
        shapes = {tuple(t.shape) for t in imgs}
        if len(shapes) != 1:
            raise ValueError('images of a pairwise record differ in size: '
                             + ', '.join(f'{p.name} {tuple(t.shape[1:])}' for p, t in zip(paths, imgs)))
        h, w = imgs[0].shape[1:]
        if self.gt_size:
            size = int(self.gt_size)
            if h < size or w < size:
                raise ValueError(f'{paths[2].name} is {h}x{w}, smaller than gt_size {size}')
            top, left = _crop_box(h, w, size, self.train)
            imgs = [t[:, top:top + size, left:left + size] for t in imgs]
        return imgs, (rec['label'], rec['label_1ref'], rec['label_2ref']), paths
