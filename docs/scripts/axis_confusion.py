"""What each axis of the diff detects and confuses, on held-out images (the figures of docs/guides/diff.md).

    OMP_NUM_THREADS=1 python docs/scripts/axis_confusion.py [--images 24] [--patch 96] [--severity 0.5]

Held out: ../shared/data/train/CSun_Hays80 and ../shared/data/val/Set14/HR (the relational network was trained on
CBSD68 only); patches drawn as in docs/scripts/eval_relational.py (``RelationalTripletDataset``, seeded).

1. One engine operation at a time (``distortions.apply``, whole image, severity ``--severity``) on ``--images``
   reference patches: the mean over patches of each axis's spatial mean of P(dist, ref) (what ``iqa-plugin diff``
   reports for B = dist, A = ref), and how often the largest axis is the operation's own axis with its sign and
   above the noise floor (``scoring.axes.FLOOR``): 'named'.
2. The engine's held-out random chains (``mode: pairs``, 1 to 3 mixed operations, masked or global, as in training):
   per axis, with t the spatial mean of the engine's map and p the predicted one, the detection rate (|p| above the
   floor with the sign of t, over chains with |t| >= 0.1), the false-alarm rate (|p| above the floor, over chains
   with t = 0 on that axis) and Pearson r of p with t; for P(dist, ref) and for the relational pair P(d0, d1)
   against m0 - m1.

Prints Markdown tables; the last line is one JSON object.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import iqa_plugin  # noqa: E402,F401
from iqa_plugin.scoring.axes import FLOOR, image_maps, relational_scorer  # noqa: E402
from iqa_plugin.data.relational_dataset import RelationalTripletDataset  # noqa: E402
from iqa_plugin.labels.distortions import AXES, OPS, apply  # noqa: E402

SHARED = REPO.parent / 'shared'
HELD_OUT = [SHARED / 'data' / 'train' / 'CSun_Hays80', SHARED / 'data' / 'val' / 'Set14' / 'HR']
SHORT = {'sharpness': 'sharp', 'noise': 'noise', 'brightness': 'bright', 'contrast': 'contr', 'saturation': 'satur',
         'compression': 'compr', 'quantisation': 'quant', 'resampling': 'resam'}


def dataset(n, patch, seed):
    return RelationalTripletDataset({'dataroot': [str(p) for p in HELD_OUT], 'mode': 'pairs', 'patch_size': patch,
                                     'length': n, 'seed': seed, 'use_flip': False})


def means(scorer, a, b):
    """(K,) spatial means of P(b, a) for (3, H, W) tensors."""
    return image_maps(scorer, a[None], b[None]).mean(dim=(1, 2)).double().numpy()


def primary(op):
    """(axis, sign) of the operation's largest engine weight."""
    axis, w = max(OPS[op].axes.items(), key=lambda kv: abs(kv[1]))
    return axis, np.sign(w)


def single_ops(scorer, refs, severity):
    rows = {}
    for op in OPS:
        axis, sign = primary(op)
        preds, named = [], 0
        for i, ref in enumerate(refs):
            img = ref.permute(1, 2, 0).numpy()
            dist, _ = apply(img, op, severity, rng=i)
            dist = torch.from_numpy(np.round(dist * 255).transpose(2, 0, 1) / 255).float()  # as saved (8 bits)
            m = means(scorer, ref, dist)
            preds.append(m)
            k = int(np.argmax(np.abs(m)))
            named += AXES[k] == axis and np.sign(m[k]) == sign and abs(m[k]) > FLOOR[axis]
        rows[op] = {'engine': {a: float(w * severity) for a, w in OPS[op].axes.items()},
                    'predicted': dict(zip(AXES, np.mean(preds, axis=0).tolist())), 'named': named / len(refs)}
    return rows


def pearson(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    x, y = x - x.mean(), y - y.mean()
    d = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / d) if d > 0 else float('nan')


def rates(p, t):
    """Per axis: detection, false alarm, r, and the counts behind them; p, t (N, K)."""
    out = {}
    for k, axis in enumerate(AXES):
        moved, still = np.abs(t[:, k]) >= 0.1, t[:, k] == 0
        hit = (np.abs(p[:, k]) > FLOOR[axis]) & (np.sign(p[:, k]) == np.sign(t[:, k]))
        out[axis] = {'detected': float(hit[moved].mean()) if moved.any() else float('nan'), 'n_moved': int(moved.sum()),
                     'false_alarm': float((np.abs(p[still, k]) > FLOOR[axis]).mean()) if still.any() else float('nan'),
                     'n_still': int(still.sum()), 'r': pearson(p[:, k], t[:, k])}
    return out


def chains(scorer, n, patch):
    ds = dataset(n, patch, seed=1001)
    p_ref, t_ref, p_pair, t_pair = [], [], [], []
    for i in range(len(ds)):
        it = ds[i]
        for j in range(2):
            p_ref.append(means(scorer, it['ref'], it['dist'][j]))
            t_ref.append(it['maps'][j].mean(dim=(1, 2)).double().numpy())
        p_pair.append(means(scorer, it['dist'][1], it['dist'][0]))  # P(d0, d1): d0 relative to d1
        t_pair.append((it['maps'][0] - it['maps'][1]).mean(dim=(1, 2)).double().numpy())
    return rates(np.stack(p_ref), np.stack(t_ref)), rates(np.stack(p_pair), np.stack(t_pair)), 2 * len(ds), len(ds)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--images', type=int, default=24)
    p.add_argument('--patch', type=int, default=96)
    p.add_argument('--severity', type=float, default=0.5)
    p.add_argument('--weights', help='relational weights file (default: the packaged relational.pth)')
    args = p.parse_args(argv)
    for d in HELD_OUT:
        if not d.is_dir():
            sys.exit(f'held-out folder not found: {d}')
    t0 = time.time()
    scorer = relational_scorer('cpu', args.weights)
    refs = [dataset(args.images, args.patch, seed=2024)[i]['ref'] for i in range(args.images)]
    ops = single_ops(scorer, refs, args.severity)
    print(f'1. one engine operation at severity {args.severity}, whole image, {args.images} held-out {args.patch} px '
          f'patches: mean of P(dist, ref) per axis; named = largest axis is the operation\'s, with its sign, above the '
          f'floor\n')
    print('| operation (engine axes) | ' + ' | '.join(SHORT[a] for a in AXES) + ' | named |')
    print('|---|' + '---|' * (len(AXES) + 1))
    for op, r in ops.items():
        eng = ', '.join(f'{SHORT[a]} {v:+.2f}' for a, v in r['engine'].items())
        cells = [f'**{r["predicted"][a]:+.2f}**' if a in r['engine'] else f'{r["predicted"][a]:+.2f}' for a in AXES]
        print(f'| {op} ({eng}) | ' + ' | '.join(cells) + f' | {r["named"]:.0%} |')
    ref_rates, pair_rates, n_ref, n_pair = chains(scorer, args.images * 2, args.patch)
    for title, rr, n in ((f'2a. P(dist, ref) on {n_ref} held-out chains', ref_rates, n_ref),
                         (f'2b. the relational pair P(d0, d1) vs m0 - m1 on {n_pair} pairs of chains', pair_rates,
                          n_pair)):
        print(f'\n{title}: detected (|t| >= 0.1) / false alarm (t = 0) / r\n')
        print('| axis | floor | detected | false alarm | r |')
        print('|---|---|---|---|---|')
        for axis, v in rr.items():
            print(f'| {axis} | {FLOOR[axis]:.3f} | {v["detected"]:.0%} of {v["n_moved"]} | {v["false_alarm"]:.0%} of '
                  f'{v["n_still"]} | {v["r"]:.2f} |')
    out = {'images': args.images, 'patch': args.patch, 'severity': args.severity, 'single_ops': ops,
           'chains': ref_rates, 'pairs': pair_rates, 'seconds': round(time.time() - t0, 1)}
    print(f'\n({out["seconds"]} s)')
    print(json.dumps(out))


if __name__ == '__main__':
    main()
