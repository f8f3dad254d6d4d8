"""``iqa-plugin score``: score images with a metric of the table ``iqa_plugin.scoring.METRICS``.

    iqa-plugin score --metric NAME [--ref PATH] --dist PATH [--weights PATH] [--json]
    iqa-plugin score --metric relational --ref R --dist D [--save-maps DIR] [--json]
    iqa-plugin score --metric relational --ref R --compare A B [--json]

``--dist`` and ``--ref`` are image files or folders matched by file name. Each line gives one image's
outputs, the last their means and the direction. ``--help`` lists every metric with its kind,
direction and whether its weights are on this machine now, without importing torch (well under a second):
the pyiqa and diffusers metrics, whose check imports pyiqa (seconds), show ``?`` there; ``--list`` prints the
same table with every metric checked.

Relational extras: ``--save-maps DIR`` writes, per distorted image, ``<stem>_<axis>.png`` (one
blue-white-red map per distortion axis, sign = direction, scale +-1) and ``<stem>_maps.png`` (all axes
side by side, in the order of ``distortions.AXES``), and prints each image's dominant distortion types.
``--compare A B`` prints which of A and B is better relative to R, with P(A better) and the score gap.
"""
import json
import re
from pathlib import Path

from iqa_plugin.cli.common import UsageError, check_device, file_pairs

NAME = 'score'
HELP = 'score images with a metric (--help lists the metrics)'


# ---------------------------------------------------------------------------------------- help
def _offline_note(name):
    from iqa_plugin import scoring

    ok, reason = scoring.available_offline(name)
    if ok:
        return 'yes'
    m = re.search(r'\(([^()\s]+)\) not available', reason) or re.search(r'not found: (\S+)$', reason)
    if m:
        return f'no: needs {Path(m.group(1)).name}'
    m = re.search(r'snapshot (\S+)', reason)
    return f'no: needs the snapshot {m.group(1)}' if m else 'no'


def checked_without_torch(name):
    """Whether metric ``name``'s weights can be looked for without importing torch or pyiqa: files of the
    weights manager only (``iqa_plugin.weights``); pyiqa's file names come from its arch modules, and a
    metric with a resolver (LGDM: diffusers) imports its library."""
    from iqa_plugin import scoring

    return (not scoring.get_spec(name).resolver
            and all(kind in ('entry', 'path') for kind, _ in scoring.weight_requirements(name)))


def metric_listing(check_all=False):
    """The metric table for ``score --help`` (``check_all``: ``score --list``): name, FR/NR, direction, offline
    now, description. Without ``check_all`` the rows that would import torch or pyiqa show '?' (``--help`` stays
    torch-free and fast)."""
    from iqa_plugin import scoring

    rows = [(n, kind.upper(), f'{better} is better',
             _offline_note(n) if check_all or checked_without_torch(n) else '? (--list)', desc)
            for n, kind, better, desc in scoring.table_rows()]
    head = ('name', 'kind', 'direction', 'offline now', 'description')
    w = [max(len(r[i]) for r in [head] + rows) for i in range(4)]
    lines = ['metrics (FR: needs --ref; NR: no reference; offline now: its weights are on this machine,',
             'else they are downloaded on first use, see iqa-plugin weights list; --weights PATH gives a file):']
    if not check_all:
        lines.append("'? (--list)': not checked here (that imports pyiqa: seconds); iqa-plugin score --list checks "
                     'every metric')
    for r in [head] + rows:
        lines.append('  ' + '  '.join(r[i].ljust(w[i]) for i in range(4)) + '  ' + r[4])
    return '\n'.join(lines)


def add_parser(sub):
    import argparse

    p = sub.add_parser(NAME, help=HELP, description='Score images (files, or folders matched by file name) '
                       'with a metric. Relational extras: --save-maps DIR writes colour distortion maps per '
                       'type; --compare A B tells which of two images is closer to --ref.',
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog_fn=metric_listing)
    p.add_argument('--metric', help='metric name (listed below; required unless --list)')
    p.add_argument('--ref', help='reference image or folder (full-reference metrics)')
    p.add_argument('--dist', help='distorted image or folder (matched to --ref by file name)')
    p.add_argument('--weights', metavar='PATH', help='explicit weights file of the metric')
    p.add_argument('--clip-weights', metavar='PATH', help='explicit CLIP ViT-B/32 file (A-FINE)')
    p.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    p.add_argument('--json', action='store_true', help='one JSON object per line')
    p.add_argument('--save-maps', metavar='DIR', help='relational: write per-type colour distortion maps (PNG)')
    p.add_argument('--compare', nargs=2, metavar=('A', 'B'), help='relational: which of A and B is better vs --ref')
    p.add_argument('--list', action='store_true',
                   help="print the metric table with every metric's weights checked (imports pyiqa: seconds)")
    return p


# ---------------------------------------------------------------------------------------- messages
def command_line_message(msg):
    """A library message rewritten for the command line: the Python API's keywords become options.

    ``weights_path=`` -> ``--weights``, ``clip_weights_path=`` -> ``--clip-weights``, "give the file's
    path explicitly" -> the option to give it with, and hints about ``pretrained=False`` (random weights,
    a Python API option the command has not) are dropped.
    """
    option = '--clip-weights' if re.search(r"'clip-vit-b-32'|clip_weights", msg) else '--weights'
    msg = re.sub(r';[^;]*pretrained=False[^;]*', '', msg)
    msg = re.sub(r'\bclip_weights_path\s*=\s*', '--clip-weights ', msg)
    msg = re.sub(r'\bweights_path\s*=\s*', '--weights ', msg)
    msg = msg.replace("give the file's path explicitly", f'give its path with {option} PATH')
    return msg


def _create(name, device, kwargs):
    """``scoring.create_metric`` with weight errors in command-line words."""
    from iqa_plugin import scoring
    from iqa_plugin.weights import WeightsError

    try:
        return scoring.create_metric(name, device=device, **kwargs)
    except (WeightsError, FileNotFoundError) as e:
        raise type(e)(command_line_message(' '.join(str(e).split()))) from e


def _device(name):
    import torch

    return name or ('cuda' if torch.cuda.is_available() else 'cpu')


def _check_same_size(name, ref, dist, what='ref'):
    if ref.shape != dist.shape:
        raise ValueError(f'size mismatch for {name}: {what} {tuple(ref.shape[-2:])} vs dist {tuple(dist.shape[-2:])}')


# ---------------------------------------------------------------------------------------- score
def main(args):
    if args.list:
        print(metric_listing(check_all=True))
        return 0
    if not args.metric:
        raise UsageError('score needs --metric NAME (iqa-plugin score --help lists them)')
    check_device(args.device)
    if args.save_maps or args.compare:
        if args.metric != 'relational':
            raise UsageError('--save-maps and --compare are options of --metric relational')
        return relational(args)
    if not args.dist:
        raise UsageError('score needs --dist')
    return score(args)


def score(args):
    import torch

    from iqa_plugin import scoring
    from iqa_plugin.utils.image import read_image

    spec = scoring.get_spec(args.metric)
    if spec.kind == 'fr' and not args.ref:
        raise UsageError(f'metric {args.metric} is full-reference: give --ref')
    device = _device(args.device)
    kwargs = {}
    if args.weights:
        kwargs['weights_path'] = args.weights
    if args.clip_weights:
        kwargs['clip_weights_path'] = args.clip_weights
    pairs = file_pairs(args.ref if spec.kind == 'fr' else None, args.dist)  # check files before building
    images = [(name, read_image(r) if r is not None else None, read_image(d)) for name, r, d in pairs]
    metric = _create(args.metric, device, kwargs)
    totals = {}
    for name, ref, dist in images:
        if ref is not None:
            _check_same_size(name, ref, dist)
        dist = dist.to(device)
        ref = ref.to(device) if ref is not None else None
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
        print(f'mean over {len(pairs)}\t' + '\t'.join(f'{k}={v:.6f}' for k, v in means.items())
              + f'\t({spec.better} is better)')
    return 0


# ---------------------------------------------------------------------------------------- relational
def _describe(dominant):
    if not dominant:
        return 'none (below 0.02)'
    return ', '.join(f"{axis} {'+' if mean >= 0 else '-'}{mag:.3f}" for axis, mean, mag in dominant)


def _write_rgb(path, rgb):
    from iqa_plugin.utils.image import write_image

    try:
        write_image(path, rgb)
    except OSError as e:
        raise UsageError(str(e)) from None


def save_maps(maps, out_dir, stem):
    """Write the per-axis colour maps of (K, H, W) ``maps`` (values in [-1, 1]); returns the written paths."""
    from iqa_plugin.labels.distortions import AXES
    from iqa_plugin.scoring.relational_vis import maps_grid, maps_to_rgb

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for axis, tile in zip(AXES, maps_to_rgb(maps)):
        p = out_dir / f'{stem}_{axis}.png'
        _write_rgb(p, tile)
        paths.append(p)
    p = out_dir / f'{stem}_maps.png'
    _write_rgb(p, maps_grid(maps))
    paths.append(p)
    return paths


def relational(args):
    """``score --metric relational`` with ``--save-maps`` and/or ``--compare``; returns the exit code."""
    if not args.ref:
        raise UsageError('metric relational is full-reference: give --ref')
    kwargs = {'weights_path': args.weights} if args.weights else {}
    if args.compare:
        return _compare(args, kwargs)
    if not args.dist:
        raise UsageError('give --dist (with --save-maps) or --compare A B')
    return _save_maps(args, kwargs)


def _compare(args, kwargs):
    import torch

    from iqa_plugin.scoring.relational_vis import dominant_axes
    from iqa_plugin.utils.image import read_image

    a_path, b_path = (Path(p) for p in args.compare)
    ref_path = Path(args.ref)
    if ref_path.is_dir():
        raise UsageError(f'--compare needs --ref to be one image file, got a folder: {ref_path}')
    a, b, ref = read_image(a_path), read_image(b_path), read_image(ref_path)
    for path, x in ((a_path, a), (b_path, b)):
        if x.shape != ref.shape:
            raise ValueError(f'size mismatch: {path} {tuple(x.shape[-2:])} vs ref {tuple(ref.shape[-2:])}')
    device = _device(args.device)
    scorer = _create('relational', device, kwargs)
    a, b, ref = a.to(device), b.to(device), ref.to(device)
    with torch.no_grad():
        sa = float(scorer(a, ref)['relational'][0])
        dom_a = dominant_axes(scorer.last_maps[0].cpu().numpy())
        sb = float(scorer(b, ref)['relational'][0])
        dom_b = dominant_axes(scorer.last_maps[0].cpu().numpy())
        p = float(scorer.compare(a, b, ref)[0])
    better, worse = (a_path, b_path) if sa >= sb else (b_path, a_path)
    if args.json:
        print(json.dumps({'metric': 'relational', 'a': str(a_path), 'b': str(b_path), 'ref': str(ref_path),
                          'score_a': sa, 'score_b': sb, 'p_a_better': p, 'better': str(better),
                          'difference': abs(sa - sb),
                          'dominant_a': [list(d) for d in dom_a], 'dominant_b': [list(d) for d in dom_b]}))
    else:
        print(f'A {a_path.name}\trelational={sa:.6f}\tdominant: {_describe(dom_a)}')
        print(f'B {b_path.name}\trelational={sb:.6f}\tdominant: {_describe(dom_b)}')
        tie = ' (tie)' if sa == sb else ''
        print(f'{better.name} is better than {worse.name}{tie}: score difference {abs(sa - sb):.6f}, '
              f'P(A better) = {p:.3f}')
    return 0


def _save_maps(args, kwargs):
    import torch

    from iqa_plugin.scoring.relational_vis import dominant_axes
    from iqa_plugin.utils.image import read_image

    pairs = file_pairs(args.ref, args.dist)
    images = [(name, read_image(r), read_image(d)) for name, r, d in pairs]
    for name, ref, dist in images:
        _check_same_size(name, ref, dist)
    device = _device(args.device)
    scorer = _create('relational', device, kwargs)
    for name, ref, dist in images:
        with torch.no_grad():
            out = scorer(dist.to(device), ref.to(device))
        maps = scorer.last_maps[0].float().cpu().numpy()
        dom = dominant_axes(maps)
        written = save_maps(maps, args.save_maps, Path(name).stem) if args.save_maps else []
        s = float(out['relational'][0])
        if args.json:
            print(json.dumps({'metric': 'relational', 'file': name, 'relational': s,
                              'magnitude': float(out['magnitude'][0]), 'dominant': [list(d) for d in dom],
                              'maps': [str(p) for p in written]}), flush=True)
        else:
            extra = f'\tmaps: {written[-1]}' if written else ''
            print(f'{name}\trelational={s:.6f}\tdominant: {_describe(dom)}{extra}', flush=True)
    return 0
