"""Evaluate the label-free metrics on held-out images (not used for training).

    /work/venv/bin/python docs/scripts/eval_label_free.py \\
        --dataroot ../shared/data/val/Set5/HR ../shared/data/val/Set14/HR --patch-size 96 --groups-per-image 1

Groups of distorted versions are made with the distortion engine exactly as ``PseudoMOSDataset``
does (tiers mode, 2 chains of 4 severities) with a seed different from training, scored by the
pseudo-MOS ensemble, by the shipped ``milo-pseudomos`` and ``nr-lite`` and by the official MILO
(``milo``, skipped when its weights are not available offline). Reported (higher = better agreement):

* ``srcc`` / ``plcc``: over all distorted pairs (the pseudo-MOS is normalised within each group, so
  cross-content comparisons are only meaningful for the within-group figures);
* ``srcc_group``: mean within-group SRCC (content held fixed);
* ``srcc_tier``: mean within-group SRCC with the engine's severity tier (both chains of a group
  together, so different operations at the same tier count as ties);
* ``srcc_chain``: mean within-chain SRCC with the tier (same operations, increasing severity: a
  label that does not depend on the pseudo-MOS ensemble).

The last line is a JSON object with every figure.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import iqa_plugin  # noqa: F401  (registries)
from iqa_plugin.utils.ranking import correlation_report, plcc, srcc
from iqa_plugin.scoring import create_metric


def _groups(args):
    from iqa_plugin.data.pseudomos_dataset import PseudoMOSDataset

    opt = {'name': 'eval', 'phase': 'val', 'dataroot': args.dataroot, 'patch_size': args.patch_size,
           'group_size': 8, 'mode': 'tiers', 'chains': 2, 'return_maps': False, 'seed': args.seed}
    if args.cache:
        opt = {'name': 'eval', 'phase': 'val', 'cache_file': args.cache}
    ds = PseudoMOSDataset(opt)
    n = len(ds.paths) * args.groups_per_image if not args.cache else len(ds)
    ds._length = n if not args.cache else ds._length
    return [ds[i] for i in range(n)]


def _chain_tier_srcc(bad, tier, chain):
    rows = []
    for b, t, c in zip(bad, tier, chain):
        for k in np.unique(c):
            sel = c == k
            if sel.sum() > 1:
                rows.append(srcc(b[sel], t[sel]))
    return float(np.nanmean(rows))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--dataroot', nargs='+', default=['../shared/data/val/Set5/HR', '../shared/data/val/Set14/HR'])
    p.add_argument('--cache', default=None, help='a pseudo-MOS cache file instead of --dataroot')
    p.add_argument('--patch-size', type=int, default=96)
    p.add_argument('--groups-per-image', type=int, default=1)
    p.add_argument('--seed', type=int, default=7)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--milo-weights', default='../shared/weights/milo/MILO.pth',
                   help='official MILO.pth (else the weights manager looks for it; skipped when absent)')
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    items = _groups(args)
    print(f'{len(items)} groups of 8 (patch {args.patch_size}) with pseudo-MOS in {time.perf_counter() - t0:.1f} s')
    pmos = np.stack([it['pmos'].numpy() for it in items])
    tier = np.stack([it['tier'].numpy() for it in items])
    chain = np.stack([it['chain'].numpy() for it in items])

    scores = {}
    for name in ('milo-pseudomos', 'milo', 'nr-lite'):
        try:
            kw = {'weights_path': args.milo_weights} if name == 'milo' and Path(args.milo_weights).is_file() else {}
            scorer = create_metric(name, **kw)
        except Exception as e:  # official weights absent offline: report and go on
            print(f'{name}: skipped ({e.__class__.__name__}: {str(e).splitlines()[0]})')
            continue
        rows = []
        with torch.no_grad():
            for it in items:
                d = it['dist']
                if scorer.kind == 'fr':
                    rows.append(scorer(d, it['ref'].unsqueeze(0).expand_as(d))['quality_score'].numpy())
                else:
                    rows.append(-next(iter(scorer(d).values())).numpy())  # badness: higher = worse
        scores[name] = np.stack(rows)

    res = {'groups': len(items), 'patch_size': args.patch_size, 'dataroot': args.dataroot if not args.cache else args.cache}
    for name, bad in scores.items():
        rep = correlation_report(bad, pmos, tier)
        rep['srcc_chain'] = _chain_tier_srcc(bad, tier, chain)
        res[f'{name}_vs_pmos'] = {k: round(v, 4) for k, v in rep.items()}
        print(f'{name:15s} vs pseudo-MOS: ' + ', '.join(f'{k} {v:.4f}' for k, v in rep.items()))
    res['pmos_vs_tier'] = {'srcc_tier': round(correlation_report(pmos, pmos, tier)['srcc_tier'], 4),
                           'srcc_chain': round(_chain_tier_srcc(pmos, tier, chain), 4)}
    print(f'pseudo-MOS itself vs severity tier: {res["pmos_vs_tier"]}')
    if 'milo' in scores and 'milo-pseudomos' in scores:
        a, b = scores['milo-pseudomos'], scores['milo']
        rep = {'srcc': srcc(a, b), 'plcc': plcc(a, b),
               'srcc_group': float(np.nanmean([srcc(x, y) for x, y in zip(a, b)]))}
        res['milo-pseudomos_vs_milo'] = {k: round(v, 4) for k, v in rep.items()}
        print('milo-pseudomos vs official milo: ' + ', '.join(f'{k} {v:.4f}' for k, v in rep.items()))
    print(json.dumps(res))
    return res


if __name__ == '__main__':
    main()
