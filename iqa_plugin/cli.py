"""The ``iqa-plugin`` command.

    iqa-plugin train -opt YAML [--launcher none|pytorch|slurm] [--auto_resume] [--debug]
    iqa-plugin score --metric NAME [--ref PATH] --dist PATH [--weights PATH] [--json]
    iqa-plugin score --metric relational --ref R (--dist D [--save-maps DIR] | --compare A B)
    iqa-plugin weights list|fetch NAME|verify
    iqa-plugin bench NAME [ARGS...]
    iqa-plugin demo [--arch swinir|rrdb] [--iters N] [--out DIR]

Errors in the input (unknown name, missing file, bad option file, size mismatch) print one line
``iqa-plugin: error: ...`` and exit with status 2; set ``IQA_PLUGIN_TRACEBACK=1`` for the traceback.
"""
import argparse
import json
import os
import sys
from pathlib import Path


class UsageError(ValueError):
    pass


# ---------------------------------------------------------------------------------------- score
def _pairs(ref, dist):
    """(name, ref_path or None, dist_path) for a file pair or two folders matched by file name."""
    from iqa_plugin.utils.image import list_images

    dist = Path(dist)
    if not dist.exists():
        raise FileNotFoundError(f'not found: {dist}')
    if dist.is_dir():
        dist_files = list_images(dist)
        if not dist_files:
            raise UsageError(f'no images in folder {dist}')
        if ref is None:
            return [(p.name, None, p) for p in dist_files]
        ref = Path(ref)
        if not ref.is_dir():
            raise UsageError(f'--dist is a folder, so --ref must be one too: {ref}')
        ref_by_name = {p.name: p for p in list_images(ref)}
        ref_by_stem = {p.stem: p for p in ref_by_name.values()}
        pairs = []
        for p in dist_files:
            r = ref_by_name.get(p.name) or ref_by_stem.get(p.stem)
            if r is None:
                raise UsageError(f'no reference for {p.name} in {ref}')
            pairs.append((p.name, r, p))
        return pairs
    if ref is not None and Path(ref).is_dir():
        raise UsageError(f'--dist is a file, so --ref must be a file too: {ref}')
    return [(dist.name, Path(ref) if ref else None, dist)]


def cmd_score(args):
    import torch

    from iqa_plugin import scoring
    from iqa_plugin.utils.image import read_image

    spec = scoring.get_spec(args.metric)
    if spec.kind == 'fr' and not args.ref:
        raise UsageError(f'metric {args.metric} is full-reference: give --ref')
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    kwargs = {}
    if args.weights:
        kwargs['weights_path'] = args.weights
    if args.clip_weights:
        kwargs['clip_weights_path'] = args.clip_weights
    pairs = _pairs(args.ref if spec.kind == 'fr' else None, args.dist)  # check files before building
    images = [(name, read_image(r) if r is not None else None, read_image(d)) for name, r, d in pairs]
    metric = scoring.create_metric(args.metric, device=device, **kwargs)
    totals = {}
    for name, ref, dist in images:
        dist = dist.to(device)
        ref = ref.to(device) if ref is not None else None
        if ref is not None and ref.shape != dist.shape:
            raise ValueError(f'size mismatch for {name}: ref {tuple(ref.shape[-2:])} vs dist {tuple(dist.shape[-2:])}')
        with torch.no_grad():
            out = metric(dist, ref)
        values = {k: float(v.reshape(-1)[0]) for k, v in out.items()}
        for k, v in values.items():
            totals[k] = totals.get(k, 0.0) + v
        if args.json:
            print(json.dumps({'metric': args.metric, 'file': name, **values}), flush=True)
        else:
            print(f'{name}\t' + '\t'.join(f'{k}={v:.6f}' for k, v in values.items()), flush=True)
    means = {k: v / len(pairs) for k, v in totals.items()}
    if args.json:
        print(json.dumps({'metric': args.metric, 'mean': means, 'count': len(pairs),
                          'lower_better': spec.lower_better}))
    else:
        direction = 'lower is better' if spec.lower_better else 'higher is better'
        print(f'mean over {len(pairs)}\t' + '\t'.join(f'{k}={v:.6f}' for k, v in means.items()) + f'\t({direction})')
    return 0


# ---------------------------------------------------------------------------------------- weights
def cmd_weights(args):
    from iqa_plugin import weights

    if args.action == 'list':
        for name in sorted(weights.WEIGHTS):
            entry, path, state = weights.status(name)
            where = str(path) if path else '-'
            kind = 'packaged' if entry.packaged else 'download'
            print(f'{name:16s} {entry.filename:22s} {state:14s} {kind:9s} {where}\n'
                  f'{"":16s} licence: {entry.license}; source: {entry.url or entry.source}')
        return 0
    if args.action == 'fetch':
        if not args.name:
            raise UsageError('weights fetch needs a NAME (see iqa-plugin weights list)')
        path = weights.resolve(args.name)
        print(f'{args.name}: {path}')
        return 0
    if args.action == 'verify':
        bad = 0
        for name in sorted(weights.WEIGHTS):
            entry, path, state = weights.status(name)
            if path is None:
                print(f'{name:16s} missing')
                continue
            print(f'{name:16s} {state:14s} {path}')
            bad += state != 'ok'
        return 1 if bad else 0
    raise UsageError(f'unknown weights action {args.action}')


# ---------------------------------------------------------------------------------------- bench
def cmd_bench(args, rest):
    import importlib

    from iqa_plugin.bench import BENCHES

    if args.name == 'list':
        print('\n'.join(sorted(BENCHES)))
        return 0
    if args.name not in BENCHES:
        raise UsageError(f"unknown bench '{args.name}'; known: {', '.join(sorted(BENCHES))}")
    module, func = BENCHES[args.name].split(':')
    result = getattr(importlib.import_module(module), func)(rest)
    print(json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------------------- main
def build_parser():
    parser = argparse.ArgumentParser(prog='iqa-plugin', description='IQA losses, validators and training for BasicSR')
    sub = parser.add_subparsers(dest='command', required=True)

    sub.add_parser('train', help='train with a BasicSR option file (arguments as basicsr/train.py)', add_help=False)

    p = sub.add_parser('score', help='score images with a metric')
    p.add_argument('--metric', required=True, help='metric name (see iqa_plugin.scoring.METRICS)')
    p.add_argument('--ref', help='reference image or folder (full-reference metrics)')
    p.add_argument('--dist', help='distorted image or folder (matched to --ref by file name)')
    p.add_argument('--weights', help='explicit weights file')
    p.add_argument('--clip-weights', help='explicit CLIP ViT-B/32 file (A-FINE)')
    p.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    p.add_argument('--json', action='store_true', help='one JSON object per line')
    p.add_argument('--save-maps', metavar='DIR', help='relational: write per-type colour distortion maps (PNG)')
    p.add_argument('--compare', nargs=2, metavar=('A', 'B'), help='relational: which of A and B is better vs --ref')

    p = sub.add_parser('weights', help='list, fetch or verify weight files')
    p.add_argument('action', choices=['list', 'fetch', 'verify'])
    p.add_argument('name', nargs='?')

    p = sub.add_parser('bench', help='performance harnesses (last line: one JSON object)', add_help=False)
    p.add_argument('name', help='bench name, or list')

    p = sub.add_parser('demo', help='train a small x4 SR model on bundled images')
    p.add_argument('--arch', choices=['swinir', 'rrdb'], default='swinir')
    p.add_argument('--iters', type=int, default=None, help='training iterations (default 600)')
    p.add_argument('--val-freq', type=int, default=None)
    p.add_argument('--out', default='iqa_plugin_demo', help='output folder (default ./iqa_plugin_demo)')
    p.add_argument('--device', choices=['auto', 'cpu'], default='auto')
    return parser


def dispatch(argv):
    parser = build_parser()
    if argv and argv[0] == 'train':
        if len(argv) == 1 or argv[1] in ('-h', '--help'):
            print(__doc__.strip().splitlines()[2])
            return 0
        from iqa_plugin.train import run
        run(argv[1:])
        return 0
    args, rest = parser.parse_known_args(argv)
    if args.command == 'bench':
        return cmd_bench(args, rest)
    if rest:
        parser.error(f'unrecognized arguments: {" ".join(rest)}')
    if args.command == 'score':
        if args.metric == 'relational' and (args.save_maps or args.compare):
            from iqa_plugin.relational_cli import cmd_relational
            return cmd_relational(args)
        if args.save_maps or args.compare:
            raise UsageError('--save-maps and --compare are options of --metric relational')
        if not args.dist:
            raise UsageError('score needs --dist')
        return cmd_score(args)
    if args.command == 'weights':
        return cmd_weights(args)
    if args.command == 'demo':
        from iqa_plugin.demo import run_demo
        run_demo(arch=args.arch, iters=args.iters, out=args.out, val_freq=args.val_freq, device=args.device)
        return 0
    parser.error(f'unknown command {args.command}')


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = dispatch(argv)
    except KeyboardInterrupt:
        print('iqa-plugin: interrupted', file=sys.stderr)
        code = 130
    except (ValueError, TypeError, FileNotFoundError, KeyError, RuntimeError, OSError, ImportError) as e:
        if os.environ.get('IQA_PLUGIN_TRACEBACK'):
            raise
        msg = ' '.join(str(e).split()) or e.__class__.__name__
        if isinstance(e, KeyError):
            msg = msg.strip('"\'')
        print(f'iqa-plugin: error: {msg}', file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == '__main__':
    main()
