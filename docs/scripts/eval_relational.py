"""Evaluate the relational IQA networks on held-out images (numbers of docs/relational.md).

    OMP_NUM_THREADS=1 python docs/scripts/eval_relational.py [--weights PATH | --random-init] [--images N] [--figure PATH]

Held out: ../shared/data/train/CSun_Hays80 and ../shared/data/val/Set14/HR (training uses CBSD68 only).
Measures (printed, last line one JSON object):

1. per-axis map quality of P(dist, ref) against the engine's maps on random chains (``pairs``):
   Pearson r over all pixels, and sign/support IoU: pixels where |map| > 0.05 with the same sign in
   prediction and truth, over the union of both supports (axes with no true support are skipped);
   also r of the relational pair prediction P(d0, d1) against m0 - m1 (all axes pooled);
2. ordinal accuracy: Kendall tau of s(tier | ref) within 5 severity tiers of one chain (mixed types);
3. agreement: Spearman rank correlation of s(dist | ref) with MILO (official weights; -quality_score)
   and with the pseudo-MOS ensemble (nlpd, gmsd, fsim; -pmos), within groups of 6 random chains per
   reference (mean over groups) and, for MILO, over the whole pool; the plain MAE between dist and ref
   is given as a baseline under the same measure.
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
from iqa_plugin.archs.relational_arch import build_relational_scorer  # noqa: E402
from iqa_plugin.data.relational_dataset import RelationalTripletDataset  # noqa: E402
from iqa_plugin.labels.distortions import AXES  # noqa: E402
from iqa_plugin.utils.ranking import kendall_tau  # noqa: E402

SHARED = REPO.parent / 'shared'
HELD_OUT = [SHARED / 'data' / 'train' / 'CSun_Hays80', SHARED / 'data' / 'val' / 'Set14' / 'HR']


def spearman(x, y):
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(x), np.asarray(y)).correlation)


def pearson(x, y):
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    x, y = x - x.mean(), y - y.mean()
    d = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / d) if d > 0 else float('nan')


def dataset(mode, n, patch, seed, **kw):
    return RelationalTripletDataset({'dataroot': [str(p) for p in HELD_OUT], 'mode': mode, 'patch_size': patch,
                                     'length': n, 'seed': seed, 'use_flip': False, **kw})


@torch.no_grad()
def eval_maps(scorer, n, patch):
    ds = dataset('pairs', n, patch, seed=1001)
    preds, trues, pair_p, pair_t = [], [], [], []
    for i in range(len(ds)):
        it = ds[i]
        ref = it['ref'][None].expand(2, -1, -1, -1)
        preds.append(scorer.maps(it['dist'], ref).numpy())
        trues.append(it['maps'].numpy())
        pair_p.append(scorer.maps(it['dist'][:1], it['dist'][1:]).numpy())
        pair_t.append((it['maps'][:1] - it['maps'][1:]).numpy())
    pred, true = np.concatenate(preds), np.concatenate(trues)  # (N, K, H, W)
    per_axis = {}
    for k, axis in enumerate(AXES):
        p, t = pred[:, k], true[:, k]
        sup_t, sup_p = np.abs(t) > 0.05, np.abs(p) > 0.05
        union = (sup_t | sup_p).sum()
        inter = (sup_t & sup_p & (np.sign(p) == np.sign(t))).sum()
        per_axis[axis] = {'r': pearson(p, t), 'iou': float(inter / union) if sup_t.any() and union else float('nan'),
                          'true_support': float(sup_t.mean())}
    return per_axis, pearson(np.concatenate(pair_p), np.concatenate(pair_t)), float(np.abs(pred - true).mean())


@torch.no_grad()
def eval_tiers(scorer, n, patch):
    ds = dataset('tiers', n, patch, seed=2002, n_tiers=5)
    taus = []
    for i in range(len(ds)):
        it = ds[i]
        s = scorer(it['dist'], it['ref'][None].expand(5, -1, -1, -1))['relational']
        taus.append(float(kendall_tau(s[None], -it['tier'][None].float())))
    taus = np.array(taus)
    return float(taus.mean()), float((taus > 0).mean()), float(((taus + 1) / 2).mean())


@torch.no_grad()
def eval_agreement(scorer, n, patch, group=6, with_pmos=True):
    from iqa_plugin.scoring import create_metric

    milo = create_metric('milo', device='cpu', weights_path=str(SHARED / 'weights' / 'milo' / 'MILO.pth'))
    ens = None
    if with_pmos:
        from iqa_plugin.labels.pseudomos import PseudoMOS

        ens = PseudoMOS(device='cpu', batch_size=group)
    ds = dataset('pairs', n, patch, seed=3003)
    rel_all, milo_all, mae_all = [], [], []
    g_milo, g_pmos, g_mae_milo, g_mae_pmos = [], [], [], []
    for i in range(len(ds)):
        rng = np.random.default_rng([3003, i])
        ref_np = ds[i]['ref'].permute(1, 2, 0).numpy()
        dists = [ds.engine.sample(ref_np, rng=rng)[0] for _ in range(group)]
        dist = torch.from_numpy(np.round(np.stack(dists) * 255).astype(np.float32).transpose(0, 3, 1, 2) / 255)
        ref = ds[i]['ref'][None].expand(group, -1, -1, -1)
        rel = scorer(dist, ref)['relational'].numpy()
        q = -milo(dist, ref)['quality_score'].numpy()  # higher = better
        mae = -(dist - ref).abs().mean(dim=(1, 2, 3)).numpy()
        rel_all.extend(rel)
        milo_all.extend(q)
        mae_all.extend(mae)
        g_milo.append(spearman(rel, q))
        g_mae_milo.append(spearman(mae, q))
        if ens is not None:
            pm = -ens(dist, ref)[0].numpy()
            g_pmos.append(spearman(rel, pm))
            g_mae_pmos.append(spearman(mae, pm))
    out = {'srcc_milo_pool': spearman(rel_all, milo_all), 'srcc_milo_group': float(np.nanmean(g_milo)),
           'mae_srcc_milo_pool': spearman(mae_all, milo_all), 'mae_srcc_milo_group': float(np.nanmean(g_mae_milo))}
    if ens is not None:
        out['srcc_pmos_group'] = float(np.nanmean(g_pmos))
        out['mae_srcc_pmos_group'] = float(np.nanmean(g_mae_pmos))
    return out


@torch.no_grad()
def make_figure(scorer, path, patch=128):
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from iqa_plugin.labels.distortions import DistortionEngine
    from iqa_plugin.scoring.relational_vis import maps_to_rgb

    ref_np = dataset('pairs', 1, patch, seed=7)[0]['ref'].permute(1, 2, 0).numpy()
    eng = DistortionEngine(seed=0)
    plan = eng.sample_plan(np.random.default_rng(11), n_ops=2)
    dist_np, true, info = eng.render(ref_np, plan)
    dist_np = np.round(dist_np * 255) / 255
    ref = torch.from_numpy(ref_np.transpose(2, 0, 1))[None]
    dist = torch.from_numpy(dist_np.transpose(2, 0, 1).astype(np.float32))[None]
    s = float(scorer(dist, ref)['relational'][0])
    pred = scorer.last_maps[0].numpy()
    k = len(AXES)
    fig, ax = plt.subplots(2, k + 2, figsize=(1.25 * (k + 2), 3.3))
    for row in ax:
        for a in row:
            a.axis('off')
    ax[0, 0].imshow(ref_np)
    ax[0, 0].set_title('reference', fontsize=7)
    ax[0, 1].imshow(dist_np)
    ops = ', '.join(f"{o['op']} {o['severity']:.2f}{' (masked)' if o['spatial'] else ''}" for o in info['ops'])
    ax[0, 1].set_title('distorted', fontsize=7)
    for i, axis in enumerate(AXES):
        ax[0, i + 2].imshow(maps_to_rgb(true)[i])
        ax[0, i + 2].set_title(f'{axis}\n(engine)', fontsize=7)
        ax[1, i + 2].imshow(maps_to_rgb(pred)[i])
        ax[1, i + 2].set_title('predicted', fontsize=7)
    fig.suptitle(f'Relational maps P(dist, ref) (top: engine truth, bottom: predicted; blue = less, red = more, '
                 f'scale +-1)\n{ops}; s(dist | ref) = {s:.4f}', fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return ops, s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--weights', help='relational weights file (default: the packaged relational.pth)')
    p.add_argument('--images', type=int, default=40, help='items per measurement')
    p.add_argument('--patch', type=int, default=96)
    p.add_argument('--random-init', action='store_true',
                   help='control: an untrained network (seed 0) instead of trained weights')
    p.add_argument('--no-pmos', action='store_true', help='skip the pseudo-MOS ensemble (slow part)')
    p.add_argument('--figure', help='also write the example figure here (e.g. docs/img/relational_example.png)')
    args = p.parse_args(argv)
    for d in HELD_OUT:
        if not d.is_dir():
            sys.exit(f'held-out folder not found: {d}')
    torch.manual_seed(0)
    if args.random_init:
        from iqa_plugin.archs.relational_arch import RelationalIQANet, RelationalScorer

        scorer = RelationalScorer(RelationalIQANet())
    else:
        scorer = build_relational_scorer('cpu', weights_path=args.weights)
    t0 = time.time()
    per_axis, pair_r, map_mae = eval_maps(scorer, args.images, args.patch)
    print(f'map quality on {2 * args.images} held-out distorted patches ({args.patch} px), P(dist, ref) vs engine maps:')
    print(f'  mean |error| {map_mae:.4f}; relational pairs P(d0, d1) vs m0 - m1: r = {pair_r:.3f}')
    for axis, v in per_axis.items():
        print(f"  {axis:13s} r = {v['r']:.3f}  sign/support IoU = {v['iou']:.3f}  (true support {v['true_support']:.3f})")
    tau, frac_pos, pair_acc = eval_tiers(scorer, args.images, args.patch)
    print(f'ordinal: Kendall tau over 5 tiers = {tau:.3f} (mean of {args.images}); pairwise order accuracy '
          f'{pair_acc:.3f}; tau > 0 in {frac_pos:.3f} of the sets')
    agree = eval_agreement(scorer, args.images, args.patch, with_pmos=not args.no_pmos)
    print('agreement (Spearman, higher = better for every score):')
    for k, v in agree.items():
        print(f'  {k:22s} {v:.3f}')
    result = {'images': args.images, 'patch': args.patch, 'map_mae': map_mae, 'pair_r': pair_r,
              'per_axis': per_axis, 'kendall_tau': tau, 'pair_order_acc': pair_acc, **agree}
    if args.figure:
        ops, s = make_figure(scorer, args.figure)
        print(f'figure: {args.figure} ({ops}; s = {s:.4f})')
    print(f'time {time.time() - t0:.0f} s')
    print(json.dumps(result))
    return result


if __name__ == '__main__':
    main()
