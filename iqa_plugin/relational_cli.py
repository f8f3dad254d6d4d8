"""``iqa-plugin score --metric relational`` extras (called by ``iqa_plugin.cli``):

    iqa-plugin score --metric relational --ref R --dist D [--save-maps DIR] [--json]
    iqa-plugin score --metric relational --ref R --compare A B [--json]

``--save-maps DIR`` writes, per distorted image, ``<stem>_<axis>.png`` (one blue-white-red map per
distortion axis, sign = direction, scale +-1) and ``<stem>_maps.png`` (all axes side by side, in the
order of ``distortions.AXES``). Each image's score and its dominant distortion types are printed.
``--compare A B`` prints which of A and B is better relative to R, with P(A better) and the score gap.
"""
import json
from pathlib import Path

import cv2
import numpy as np


def _describe(dominant):
    if not dominant:
        return 'none (below 0.02)'
    return ', '.join(f"{axis} {'+' if mean >= 0 else '-'}{mag:.3f}" for axis, mean, mag in dominant)


def _write_rgb(path, rgb):
    ok = cv2.imwrite(str(path), np.ascontiguousarray((np.clip(rgb, 0, 1)[:, :, ::-1] * 255 + 0.5).astype(np.uint8)))
    if not ok:
        raise OSError(f'cannot write {path}')


def save_maps(maps, out_dir, stem):
    """Write the per-axis colour maps of (K, H, W) ``maps``; returns the list of written paths."""
    from iqa_plugin.distortions import AXES
    from iqa_plugin.relational_vis import maps_grid, maps_to_rgb

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


def cmd_relational(args):
    """Handle ``score --metric relational`` with ``--save-maps`` and/or ``--compare``; returns the exit code."""
    import torch

    from iqa_plugin import scoring
    from iqa_plugin.cli import UsageError, _pairs
    from iqa_plugin.relational_vis import dominant_axes
    from iqa_plugin.utils.image import read_image

    if not args.ref:
        raise UsageError('metric relational is full-reference: give --ref')
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    kwargs = {'weights_path': args.weights} if args.weights else {}

    if args.compare:
        a_path, b_path = (Path(p) for p in args.compare)
        ref_path = Path(args.ref)
        if ref_path.is_dir():
            raise UsageError(f'--compare needs --ref to be one image file, got a folder: {ref_path}')
        a, b, ref = read_image(a_path), read_image(b_path), read_image(ref_path)
        for name, x in ((a_path, a), (b_path, b)):
            if x.shape != ref.shape:
                raise ValueError(f'size mismatch: {name} {tuple(x.shape[-2:])} vs ref {tuple(ref.shape[-2:])}')
        scorer = scoring.create_metric('relational', device=device, **kwargs)
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

    if not args.dist:
        raise UsageError('give --dist (with --save-maps) or --compare A B')
    pairs = _pairs(args.ref, args.dist)
    images = [(name, read_image(r), read_image(d)) for name, r, d in pairs]
    scorer = scoring.create_metric('relational', device=device, **kwargs)
    for name, ref, dist in images:
        if ref.shape != dist.shape:
            raise ValueError(f'size mismatch for {name}: ref {tuple(ref.shape[-2:])} vs dist {tuple(dist.shape[-2:])}')
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
