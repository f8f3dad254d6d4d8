"""Pseudo-MOS: quality labels without human ratings, from an ensemble of full-reference metrics
(members, orientation, normalisation and the meaning of the values: ``iqa_plugin.labels.pseudomos_ensemble``).

Modules: ``pseudomos_ensemble`` (members, normalisation, ``PseudoMOS``), ``pseudomos_cache`` (cache
files), ``data.pseudomos_dataset`` (groups of distorted patches); this module re-exports the first two
and adds ``build_cache`` and the command line, which sit above the dataset.

Command line (``python -m iqa_plugin.labels.pseudomos``):
  ``build --dataroot DIR [DIR ...] --out FILE.pt --num G ...``  precompute a training cache;
  ``speed [--size 256] [--members ...]``                        time each member per pair.
"""
import argparse
import json
import sys
import time
import numpy as np
import torch

from iqa_plugin.data.pseudomos_dataset import PseudoMOSDataset
from iqa_plugin.labels.distortions import DistortionEngine, smooth_test_image
from iqa_plugin.labels.pseudomos_cache import CACHE_FORMAT, load_cache, save_cache, to_uint8
from iqa_plugin.labels.pseudomos_ensemble import (DEFAULT_MEMBERS, MEMBERS, NORMALIZATIONS, Member, PseudoMOS,
                                           available_members, combine, member_status, normalize_scores,
                                           resolve_members)

__all__ = ['CACHE_FORMAT', 'DEFAULT_MEMBERS', 'MEMBERS', 'NORMALIZATIONS', 'Member', 'PseudoMOS', 'available_members',
           'build_cache', 'combine', 'load_cache', 'main', 'member_status', 'normalize_scores', 'resolve_members',
           'save_cache']


# ----------------------------------------------------------------------------------------------
# Building a cache (the file layout is in pseudomos_cache)
# ----------------------------------------------------------------------------------------------
def build_cache(dataroot, out, num_groups, patch_size=128, group_size=8, mode='tiers', chains=1, members=None,
                store_maps=False, seed=0, engine=None, workers=0, log=print):
    """Generate ``num_groups`` groups with the distortion engine, score them and save a cache file.

    The groups are exactly the items ``PseudoMOSDataset`` would produce on the fly with the same
    options (same seed -> same file). Stored: 'ref' uint8 (G, 3, P, P), 'dist' uint8 (G, N, 3, P, P),
    'raw' float32 (G, N, M) oriented member scores, 'tier' and 'chain' int64 (G, N), optionally
    'maps' float16 (G, N, K, P, P), plus 'members', 'lower_better', 'axes', 'ref_paths' (G source
    image paths) and 'meta' (the build options).
    Normalisation is not stored: the dataset applies it when reading.

    Returns:
        Path of the written file.
    """
    if int(num_groups) < 1:
        raise ValueError(f'num_groups must be >= 1, got {num_groups}')
    opt = {'name': 'pseudomos_build', 'type': 'PseudoMOSDataset', 'phase': 'build', 'dataroot': dataroot,
           'length': int(num_groups), 'patch_size': int(patch_size), 'group_size': int(group_size), 'mode': mode,
           'chains': int(chains), 'members': list(resolve_members(members)), 'pmos': True, 'return_maps': store_maps,
           'seed': int(seed), 'engine': dict(engine or {})}
    ds = PseudoMOSDataset(opt)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=int(workers))
    keys = ['ref', 'dist', 'raw', 'tier', 'chain'] + (['maps'] if store_maps else [])
    acc = {k: [] for k in keys}
    ref_paths = []
    t0 = time.perf_counter()
    for i, item in enumerate(loader):
        acc['ref'].append(to_uint8(item['ref']))
        acc['dist'].append(to_uint8(item['dist']))
        acc['raw'].append(item['raw'].float())
        acc['tier'].append(item['tier'].long())
        acc['chain'].append(item['chain'].long())
        ref_paths.append(item['ref_path'])
        if store_maps:
            acc['maps'].append(item['maps'].half())
        if log and (i + 1) % max(1, len(ds) // 10) == 0:
            el = time.perf_counter() - t0
            log(f'[pseudomos] {i + 1}/{len(ds)} groups, {el:.1f} s, {(i + 1) * ds.group_size / el:.1f} pairs/s')
    data = {k: torch.stack(v) for k, v in acc.items()}
    data.update({
        'members': list(ds.ensemble_members),
        'lower_better': [MEMBERS[m].lower_better for m in ds.ensemble_members],
        'axes': list(ds.axes),
        'ref_paths': ref_paths,
        'meta': {k: v for k, v in opt.items() if k not in ('dataroot', 'engine', 'members')}
        | {'engine': json.dumps(opt['engine'], sort_keys=True),
           'dataroot': json.dumps(dataroot if isinstance(dataroot, (list, tuple)) else [dataroot])},
    })
    out = save_cache(data, out)
    if log:
        log(f'[pseudomos] wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MiB, {len(ds)} groups of {ds.group_size}, '
            f'members {",".join(ds.ensemble_members)}) in {time.perf_counter() - t0:.1f} s')
    return out


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _speed(args):
    torch.set_num_threads(args.threads)
    img = smooth_test_image(args.size)
    eng = DistortionEngine(seed=0)
    dist = torch.stack([torch.from_numpy(eng.sample(img)[0].transpose(2, 0, 1)) for _ in range(args.pairs)])
    ref = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    names = resolve_members(args.members) if args.members else available_members()
    res = {}
    for n in names:
        if args.size < MEMBERS[n].min_size:
            print(f'{n:8s} skipped: needs sides >= {MEMBERS[n].min_size}')
            continue
        ens = PseudoMOS([n], batch_size=args.pairs)
        ens.member_scores(dist[:1], ref)  # warm-up
        pairs = dist[:2] if n == 'mad' else dist
        c, w = time.process_time(), time.perf_counter()
        ens.member_scores(pairs, ref)
        res[n] = ((time.process_time() - c) / pairs.shape[0], (time.perf_counter() - w) / pairs.shape[0])
        print(f'{n:8s} {res[n][0] * 1000:9.1f} ms CPU time per {args.size}x{args.size} pair '
              f'({res[n][1] * 1000:.1f} ms wall; {pairs.shape[0]} pairs in a batch, {args.threads} thread(s))')
    print(json.dumps({'size': args.size, 'threads': args.threads,
                      'cpu_s_per_pair': {k: round(v[0], 4) for k, v in res.items()},
                      'wall_s_per_pair': {k: round(v[1], 4) for k, v in res.items()}}))
    return res


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m iqa_plugin.labels.pseudomos', description=__doc__.split('\n')[0])
    sub = p.add_subparsers(dest='cmd', required=True)
    b = sub.add_parser('build', help='precompute a pseudo-MOS training cache')
    b.add_argument('--dataroot', nargs='+', required=True, help='folder(s) of reference images')
    b.add_argument('--out', required=True, help='output .pt file')
    b.add_argument('--num', type=int, required=True, help='number of groups (reference patches)')
    b.add_argument('--patch-size', type=int, default=128)
    b.add_argument('--group-size', type=int, default=8, help='distorted versions per reference')
    b.add_argument('--mode', choices=('tiers', 'random'), default='tiers')
    b.add_argument('--chains', type=int, default=1, help='tiers mode: independent chains per group')
    b.add_argument('--members', default=None, help="comma-separated members, or 'auto' (default: "
                   + ','.join(DEFAULT_MEMBERS) + ')')
    b.add_argument('--store-maps', action='store_true', help='also store the (K, H, W) maps (float16; large)')
    b.add_argument('--seed', type=int, default=0)
    b.add_argument('--workers', type=int, default=0)
    b.add_argument('--max-ops', type=int, default=3)
    b.add_argument('--spatial-prob', type=float, default=0.5)
    b.add_argument('--threads', type=int, default=1, help='torch threads of the main process (parallelise with '
                   '--workers; several threads per process are slower on a busy CPU)')
    s = sub.add_parser('speed', help='time each ensemble member per image pair')
    s.add_argument('--size', type=int, default=256)
    s.add_argument('--pairs', type=int, default=8)
    s.add_argument('--threads', type=int, default=1, help='torch threads')
    s.add_argument('--members', default=None, help='comma-separated (default: all available)')
    args = p.parse_args(argv)
    if args.cmd == 'build':
        torch.set_num_threads(args.threads)
        path = build_cache(args.dataroot if len(args.dataroot) > 1 else args.dataroot[0], args.out, args.num,
                           patch_size=args.patch_size, group_size=args.group_size, mode=args.mode,
                           chains=args.chains, members=args.members, store_maps=args.store_maps, seed=args.seed,
                           engine={'max_ops': args.max_ops, 'spatial_prob': args.spatial_prob},
                           workers=args.workers)
        print(json.dumps({'out': str(path)}))
        return 0
    _speed(args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
