"""Evaluate offline no-reference scorers on held-out photos (issue 12): one Markdown table per scorer set.

    OMP_NUM_THREADS=2 .venv/bin/python docs/scripts/eval_nr_offline.py \\
        [--niqe-fitted FILE]     # full: Set14 + Kodak24 + McMaster18, about 15 min on 2 busy cores
    ... --quick                # 6 Set14 photos, about 3 min

Held-out photos: ``nr-lite`` 0.1.0 and the fitted NIQE were trained/fitted on CBSD68 + CSun_Hays80
(see ``iqa_plugin/weights/manifest.json`` and docs/nriqa.md), so the default evaluation set is
../shared/data/val/Set14/HR + ../shared/data/train/Kodak24 + ../shared/data/train/McMaster18, each
centre-cropped to ``--size`` (192) px. Reported per scorer (all through ``iqa_plugin.nriqa.score_candidates``,
higher = better, so lower-better metrics are negated):

* ``srcc`` / ``srcc_group``: SRCC against the pseudo-MOS ensemble (``iqa_plugin.pseudomos``) over all
  graded engine distortions (``PseudoMOSDataset``, tiers, 2 chains x 4 severities, seed 7), pooled and
  mean within group (one reference per group);
* ``pair <type>``: fraction of photos whose clean crop scores above its distorted version, for x4 bicubic
  down-up, JPEG q10, Gaussian noise sigma 15/255, Gaussian blur sigma 2, and every engine operation at
  level 3 (severity 0.6; ``engine min`` is the worst engine operation, ``engine mean`` their mean);
* ``degenerate``: black, white, flat grey, flat colour, uniform noise, heavy blur (sigma 8) and a
  3-level posterisation of the first photo, each compared with the lowest-scoring clean photo
  (``below`` = scored below every clean photo).

Scorers: ``nr-lite`` (the shipped weights; ``--nr-lite-candidate`` adds retrained files), ``niqe-fitted``
(the packaged fit, or ``--niqe-fitted``), two baselines (Laplacian variance and RMS contrast of the luma,
higher = better) and every pyiqa NR model of the scoring table whose weights are on this machine (listed
as skipped otherwise). The last line is JSON.
"""
import argparse
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import iqa_plugin  # noqa: F401  (registries)
from iqa_plugin import distortions as D
from iqa_plugin.nriqa import NR_METRICS, NRScorer, score_candidates
from iqa_plugin.scoring import available_offline, get_cached_metric
from iqa_plugin.utils.ranking import correlation_report

HELD_OUT = ['../shared/data/val/Set14/HR', '../shared/data/train/Kodak24', '../shared/data/train/McMaster18']
FIXED = ('bicubic_x4', 'jpeg_q10', 'noise_s15', 'blur_s2')
DEGENERATE = ('black', 'white', 'grey', 'flat_colour', 'pure_noise', 'blur_s8', 'posterised')


# ----------------------------------------------------------------------------------------- data
def load_crops(roots, size, limit=None):
    """Centre crops (N, 3, size, size) in [0, 1] of every image in ``roots`` (smaller images skipped)."""
    from PIL import Image

    exts = {'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff'}
    paths = sorted(p for r in roots for p in Path(r).iterdir() if p.suffix.lower() in exts)
    crops = []
    for p in paths[:limit] if limit else paths:
        a = np.asarray(Image.open(p).convert('RGB'), dtype=np.float32) / 255.0
        h, w = a.shape[:2]
        if min(h, w) < size:
            continue
        t, l = (h - size) // 2, (w - size) // 2
        crops.append(a[t:t + size, l:l + size])
    return np.stack(crops)


def _gauss_blur(a, sigma):
    from scipy.ndimage import gaussian_filter
    return np.clip(gaussian_filter(a, sigma=(sigma, sigma, 0), mode='reflect'), 0, 1).astype(np.float32)


def fixed_distortion(a, kind, rng):
    """(H, W, 3) float32 in [0, 1] -> one of FIXED."""
    from PIL import Image

    if kind == 'bicubic_x4':
        im = Image.fromarray((a * 255).round().astype(np.uint8))
        w, h = im.size
        small = im.resize((w // 4, h // 4), Image.BICUBIC)
        return np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0
    if kind == 'jpeg_q10':
        buf = io.BytesIO()
        Image.fromarray((a * 255).round().astype(np.uint8)).save(buf, format='JPEG', quality=10)
        return np.asarray(Image.open(buf).convert('RGB'), dtype=np.float32) / 255.0
    if kind == 'noise_s15':
        return np.clip(a + rng.normal(0, 15 / 255, a.shape), 0, 1).astype(np.float32)
    if kind == 'blur_s2':
        return _gauss_blur(a, 2.0)
    raise ValueError(kind)


def degenerate_images(photo, rng):
    """{name: (H, W, 3) float32} made from the shape (and, for blur/posterise, content) of ``photo``."""
    shape = photo.shape
    return {'black': np.zeros(shape, np.float32), 'white': np.ones(shape, np.float32),
            'grey': np.full(shape, 0.5, np.float32),
            'flat_colour': np.broadcast_to(np.array([0.8, 0.3, 0.2], np.float32), shape).copy(),
            'pure_noise': rng.random(shape, dtype=np.float32),
            'blur_s8': _gauss_blur(photo, 8.0),
            'posterised': (np.round(photo * 2) / 2).astype(np.float32)}


def pmos_groups(roots, size, limit, seed):
    from iqa_plugin.data.pseudomos_dataset import PseudoMOSDataset

    opt = {'name': 'eval_nr', 'phase': 'val', 'dataroot': roots, 'patch_size': size, 'group_size': 8,
           'mode': 'tiers', 'chains': 2, 'return_maps': False, 'seed': seed}
    ds = PseudoMOSDataset(opt)
    n = min(len(ds.paths), limit) if limit else len(ds.paths)
    ds._length = n
    return [ds[i] for i in range(n)]


# --------------------------------------------------------------------------------------- scorers
class _Baseline(nn.Module):
    """Plain statistics of the BT.601 luma: ``'laplacian_var'`` or ``'rms_contrast'``; (B, 3, H, W) -> (B,)."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.register_buffer('lap', torch.tensor([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]]).view(1, 1, 3, 3))

    def forward(self, x):
        y = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        if self.kind == 'laplacian_var':
            return nn.functional.conv2d(y, self.lap).flatten(1).var(1)
        return y.flatten(1).std(1)


def build_scorers(niqe_fitted, nr_lite_candidates=(), pyiqa_models=True):
    scorers, skipped = {}, {}
    try:
        scorers['nr-lite'] = get_cached_metric('nr-lite')
    except Exception as e:
        skipped['nr-lite'] = str(e).splitlines()[0]
    for path in nr_lite_candidates:  # retrained checkpoints (nr_lite_<iter>.pth) next to the shipped one
        scorers[f'nr-lite {Path(path).stem}'] = get_cached_metric('nr-lite', weights_path=path)
    try:  # an explicit fitted file, else the packaged entry of the scoring table
        kw = {'weights_path': niqe_fitted} if niqe_fitted else {}
        scorers['niqe-fitted'] = get_cached_metric('niqe-fitted', **kw)
    except Exception as e:
        skipped['niqe-fitted'] = str(e).splitlines()[0]
    for kind in ('laplacian_var', 'rms_contrast'):
        scorers[kind] = NRScorer(kind, _Baseline(kind), lower_better=False, score_range=(0.0, 1.0), min_size=3)
    for name in NR_METRICS:
        if not pyiqa_models:
            break
        ok, why = available_offline(name)
        if ok:
            scorers[name] = get_cached_metric(name)
        else:
            skipped[name] = 'weights not on this machine' if 'weights' in why else why[:120]
    return scorers, skipped


def quality(scorer, imgs, chunk=8):
    """(N, H, W, 3) or (N, 3, H, W) array/tensor -> (N,) numpy quality, higher = better."""
    x = torch.as_tensor(np.ascontiguousarray(imgs))
    if x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    return score_candidates(scorer, x.unsqueeze(0).float(), chunk_size=chunk)[0].double().numpy()


# ------------------------------------------------------------------------------------------- main
def evaluate(scorer, clean, dists, degen, groups):
    q_clean = quality(scorer, clean)
    res = {}
    if groups:
        bad = np.stack([-quality(scorer, g['dist']) for g in groups])
        pmos = np.stack([g['pmos'].numpy() for g in groups])
        rep = correlation_report(bad, pmos)
        res['srcc'], res['srcc_group'] = rep['srcc'], rep['srcc_group']
    for kind, imgs in dists.items():
        res[f'pair {kind}'] = float(np.mean(quality(scorer, imgs) < q_clean))
    eng = [v for k, v in res.items() if k.startswith('pair ') and k[5:] not in FIXED]
    if eng:
        res['engine min'], res['engine mean'] = float(min(eng)), float(np.mean(eng))
    q_deg = quality(scorer, np.stack(list(degen.values())))
    res['clean min'] = float(q_clean.min())
    res['degenerate'] = {k: float(v) for k, v in zip(degen, q_deg)}
    res['degenerate below'] = int(sum(v < q_clean.min() for v in q_deg))
    return res


def markdown(results, degen_names):
    names = list(results)
    cols = ['srcc', 'srcc_group'] + [f'pair {k}' for k in FIXED] + ['engine min', 'engine mean', 'degenerate below']
    lines = ['| metric | ' + ' | '.join(names) + ' |', '| --- |' + ' --- |' * len(names)]
    for c in cols:
        cells = []
        for n in names:
            v = results[n].get(c)
            cells.append('-' if v is None else (f'{v}/{len(degen_names)}' if c == 'degenerate below' else f'{v:.3f}'))
        lines.append(f'| {c} | ' + ' | '.join(cells) + ' |')
    lines.append('| lowest clean photo (raw quality, higher = better) | '
                 + ' | '.join(f"{results[n]['clean min']:.4g}" for n in names) + ' |')
    for d in degen_names:
        lines.append(f'| {d} | ' + ' | '.join(
            f"{results[n]['degenerate'][d]:.4g}" + ('' if results[n]['degenerate'][d] < results[n]['clean min']
                                                     else ' **above**') for n in names) + ' |')
    eng_ops = sorted({c[5:] for n in names for c in results[n] if c.startswith('pair ') and c[5:] not in FIXED})
    if eng_ops:
        lines += ['', '| engine op (level 3) | ' + ' | '.join(names) + ' |', '| --- |' + ' --- |' * len(names)]
        for op in eng_ops:
            lines.append(f'| {op} | ' + ' | '.join(f"{results[n].get('pair ' + op, float('nan')):.2f}"
                                                   for n in names) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--dataroot', nargs='+', default=HELD_OUT, help='held-out photos (never trained on)')
    p.add_argument('--size', type=int, default=192, help='centre-crop side (NIQE needs >= 96)')
    p.add_argument('--limit', type=int, default=None, help='use only the first N photos')
    p.add_argument('--quick', action='store_true', help='6 Set14 photos, 6 pseudo-MOS groups (a few minutes)')
    p.add_argument('--niqe-fitted', default=None,
                   help='fitted NIQE file (python -m iqa_plugin.archs.niqe_fitted_arch fit); default: the packaged one')
    p.add_argument('--nr-lite-candidate', nargs='*', default=(), help='retrained nr-lite files to compare')
    p.add_argument('--no-pmos', action='store_true', help='skip the pseudo-MOS SRCC (the slowest part)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--seed', type=int, default=7)
    args = p.parse_args(argv)
    warnings.filterwarnings('ignore')
    torch.set_num_threads(args.threads)
    if args.quick:
        args.dataroot, args.limit = ['../shared/data/val/Set14/HR'], args.limit or 6
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    clean = load_crops(args.dataroot, args.size, args.limit)
    dists = {k: np.stack([fixed_distortion(a, k, rng) for a in clean]) for k in FIXED}
    for op in D.OPS:
        dists[op] = np.stack([D.apply(a, op, D.severity_of_level(3), rng=args.seed + i)[0]
                              for i, a in enumerate(clean)])
    degen = degenerate_images(clean[0], rng)
    groups = [] if args.no_pmos else pmos_groups(args.dataroot, args.size, args.limit, args.seed)
    print(f'{len(clean)} photos of {args.size} px, {len(dists)} distortion types, {len(groups)} pseudo-MOS groups '
          f'of 8 ({time.perf_counter() - t0:.0f} s)', file=sys.stderr)
    scorers, skipped = build_scorers(args.niqe_fitted, args.nr_lite_candidate)
    results = {}
    for name, sc in scorers.items():
        t = time.perf_counter()
        results[name] = evaluate(sc, clean, dists, degen, groups)
        print(f'{name}: {time.perf_counter() - t:.0f} s', file=sys.stderr)
    print(markdown(results, DEGENERATE))
    if skipped:
        print('\nSkipped: ' + '; '.join(f'{k} ({v})' for k, v in skipped.items()))
    print(json.dumps({'photos': len(clean), 'size': args.size, 'dataroot': args.dataroot, 'groups': len(groups),
                      'results': results, 'skipped': skipped}))
    return results


if __name__ == '__main__':
    main()
