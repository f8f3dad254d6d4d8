"""Images with human opinion scores from a CSV (KonIQ-style ``image_name,MOS``), split deterministically.

Registered in BasicSR's ``DATASET_REGISTRY`` as ``MOSCSVDataset``: a user-provided MOS set for training
a metric's regressor (``LGDMRegressorModel``) with a held-out split for SRCC/PLCC.
"""
import csv
import random
from pathlib import Path

import torch
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from iqa_plugin.utils.image import read_image

SPLITS = ('all', 'train', 'val')


def read_mos_csv(path, image_col='image_name', score_col='MOS'):
    """[(image name, float score)] of a CSV with a header row; ValueError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'MOS CSV not found: {path}')
    with open(path, newline='', encoding='utf-8-sig') as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        for c in (image_col, score_col):
            if c not in cols:
                raise ValueError(f"{path}: no column '{c}' (columns: {', '.join(cols) or 'none'})")
        rows = []
        for line, r in enumerate(reader, start=2):
            try:
                rows.append((r[image_col].strip(), float(r[score_col])))
            except (TypeError, ValueError):
                raise ValueError(f"{path} line {line}: score {r.get(score_col)!r} is not a number") from None
    if not rows:
        raise ValueError(f'{path}: no rows')
    return rows


def split_rows(rows, split='all', val_ratio=0.2, seed=0):
    """The rows of ``split``: a seeded shuffle of the names, the last ``val_ratio`` of them held out."""
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    if split == 'all':
        return list(rows)
    if not 0.0 < float(val_ratio) < 1.0:
        raise ValueError(f'val_ratio must be in (0, 1), got {val_ratio}')
    order = sorted(range(len(rows)), key=lambda i: rows[i][0])  # independent of the CSV's row order
    random.Random(int(seed)).shuffle(order)
    n_val = max(1, int(round(len(rows) * float(val_ratio))))
    keep = order[len(order) - n_val:] if split == 'val' else order[:len(order) - n_val]
    return [rows[i] for i in sorted(keep)]


@DATASET_REGISTRY.register()
class MOSCSVDataset(data.Dataset):
    """Options (BasicSR's dataset block):
        csv (str): the CSV file; columns ``image_col`` (default 'image_name') and ``score_col`` (default 'MOS').
        dataroot (str): folder of the images (default: the CSV's folder).
        split (str): 'all', 'train' or 'val' (the held-out ``val_ratio`` of the names, seeded by ``split_seed``).
        crop_size (int | None): centre crop to crop_size x crop_size (so a batch stacks); images smaller
            than that are refused with their name. None keeps whole images (batch size 1, or equal sizes).
    Items: 'img' (3, H, W) float32 RGB in [0, 1], 'score' float32 (higher = better, the CSV's scale),
    'key' (str) the image name.
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = dict(opt)
        if not opt.get('csv'):
            raise ValueError('MOSCSVDataset: option csv (the CSV file) is required')
        csv_path = Path(opt['csv'])
        self.root = Path(opt.get('dataroot') or csv_path.parent)
        if not self.root.is_dir():
            raise FileNotFoundError(f'MOSCSVDataset: image folder not found: {self.root}')
        rows = read_mos_csv(csv_path, opt.get('image_col', 'image_name'), opt.get('score_col', 'MOS'))
        self.rows = split_rows(rows, opt.get('split', 'all'), opt.get('val_ratio', 0.2), opt.get('split_seed', 0))
        self.crop_size = opt.get('crop_size')
        missing = [n for n, _ in self.rows if not (self.root / n).is_file()]
        if missing:
            raise FileNotFoundError(f'MOSCSVDataset: {len(missing)} image(s) of {csv_path} not in {self.root} '
                                    f'(first: {missing[0]})')

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        name, score = self.rows[i]
        img = read_image(self.root / name)[0]
        if self.crop_size:
            c = int(self.crop_size)
            h, w = img.shape[-2:]
            if h < c or w < c:
                raise ValueError(f'MOSCSVDataset: {name} is {h}x{w}, smaller than crop_size {c}')
            top, left = (h - c) // 2, (w - c) // 2
            img = img[:, top:top + c, left:left + c]
        return {'img': img.contiguous(), 'score': torch.tensor(score, dtype=torch.float32), 'key': name}
