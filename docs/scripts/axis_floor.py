"""Noise floor of the axis diff (``iqa_plugin.scoring.axes.FLOOR``): what P(B, A) gives when nothing changed.

    OMP_NUM_THREADS=1 python docs/scripts/axis_floor.py [--side 128] [--weights PATH] [--nets DEMO_OPT NET]

Images: scikit-image's bundled photos (they ship with its wheel; no download), every ``--side`` px crop on a
non-overlapping grid whose texture energy (``iqa_plugin.apps.demo.texture_energy``) is at least 1e-4 (a flat crop
is no photo; +-1 grey level on a flat white field reads as a strong change). Null changes, B relative to A:

* ``identical``: B = A (the network gives exactly 0 by construction; checked);
* ``shift x`` / ``shift y``: B is the crop one pixel to the right / down in the photo (the content moved by
  one pixel, nothing else);
* ``+-1 level``: B = A plus uniform integer noise in {-1, 0, 1} grey levels (seeded; invisible);
* ``8-bit rounding``: A a float image (the photo blurred with sigma 0.5, not rounded), B = A rounded to
  8 bits (what saving an output as PNG does).

Per axis and null change: the 95th percentile and the maximum of the per-image |mean of the map| (and the
signed mean over images). The floor of an axis is the largest 95th percentile over the null changes, rounded
up to 0.005. The relational score's floor is the same for |s(B | ref) - s(A | ref)| with ref = the crop, A = the
crop blurred (sigma 1) as a float image and B = A rounded to 8 bits, or A rounded plus +-1 level of noise (a
shift would move B against the reference: a real change).

``--nets OPT NET``: also run one SR network twice on the option file's validation set, with torch seeds 0
and 1 (a deterministic network in eval mode must give identical outputs, hence exactly 0).

Prints a Markdown table; the last line is one JSON object.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import iqa_plugin  # noqa: E402,F401
from iqa_plugin.scoring.axes import image_maps, relational_score, relational_scorer  # noqa: E402
from iqa_plugin.labels.distortions import AXES  # noqa: E402

PHOTOS = ('astronaut', 'brick', 'camera', 'chelsea', 'coffee', 'coins', 'grass', 'gravel', 'hubble_deep_field',
          'immunohistochemistry', 'moon', 'page', 'retina', 'rocket', 'text', 'horse', 'motorcycle')
MIN_TEXTURE = 1e-4
FLOOR_NULLS = ('shift x', 'shift y', '+-1 level', '8-bit rounding')


def load_photo(name):
    import skimage.data

    img = skimage.data.stereo_motorcycle()[0] if name == 'motorcycle' else getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float64) / img.max(), 0, 1) * 255).round().astype(np.uint8)
    return img


def crops(side):
    """[(name, photo, top, left)] of the textured ``side`` px crops (one pixel kept free right and below)."""
    from iqa_plugin.apps.demo import texture_energy

    out = []
    for name in PHOTOS:
        img = load_photo(name)
        h, w = img.shape[:2]
        for y in range(0, h - side, side):
            for x in range(0, w - side, side):
                if texture_energy(img[y:y + side, x:x + side]) >= MIN_TEXTURE:
                    out.append((f'{name}_{y}_{x}', img, y, x))
    return out


def t(img):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img, np.float32).transpose(2, 0, 1)))[None]


def nulls(img, y, x, side, rng):
    """{null change: (A, B)} as float32 HWC arrays in [0, 1]."""
    import cv2

    a8 = img[y:y + side, x:x + side]
    a = a8.astype(np.float32) / 255
    noisy = np.clip(a8.astype(np.int16) + rng.integers(-1, 2, a8.shape), 0, 255).astype(np.float32) / 255
    soft = cv2.GaussianBlur(a, (0, 0), 0.5)
    return {'identical': (a, a.copy()),
            'shift x': (a, img[y:y + side, x + 1:x + 1 + side].astype(np.float32) / 255),
            'shift y': (a, img[y + 1:y + 1 + side, x:x + side].astype(np.float32) / 255),
            '+-1 level': (a, noisy),
            '8-bit rounding': (soft, np.round(soft * 255) / 255)}


def score_nulls(img, y, x, side, rng):
    """(ref, A, [B for the score floor]) as float32 HWC arrays."""
    import cv2

    ref = img[y:y + side, x:x + side].astype(np.float32) / 255
    a = cv2.GaussianBlur(ref, (0, 0), 1.0)
    a8 = np.round(a * 255)
    noisy = np.clip(a8 + rng.integers(-1, 2, a8.shape), 0, 255) / 255
    return ref, a, [(a8 / 255).astype(np.float32), noisy.astype(np.float32)]


def ceil_to(v, step=0.005):
    return math.ceil(v / step - 1e-9) * step


@torch.no_grad()
def seed_runs(opt_path, net_path, scorer):
    """Max |P| between two runs (torch seeds 0 and 1) of one SR network on the option file's validation set."""
    from iqa_plugin.cli.diff import load_net, val_pairs

    pairs, _ = val_pairs(opt_path, None)
    net, _ = load_net(net_path, opt_path)
    worst = 0.0
    for name, lq, gt in pairs:
        outs = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            outs.append(net(lq).clamp(0, 1))
        worst = max(worst, float(image_maps(scorer, outs[0], outs[1]).abs().max()))
    return worst, len(pairs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--side', type=int, default=128)
    p.add_argument('--weights', help='relational weights file (default: the packaged relational.pth)')
    p.add_argument('--nets', nargs=2, metavar=('OPT', 'NET'), help='also: one SR network run with seeds 0 and 1')
    args = p.parse_args(argv)
    t0 = time.time()
    scorer = relational_scorer('cpu', args.weights)
    rng = np.random.default_rng(0)
    items = crops(args.side)
    per = {}  # null -> (N, K) per-image means
    identical_max = 0.0
    score_diffs = []
    for _, img, y, x in items:
        for null, (a, b) in nulls(img, y, x, args.side, rng).items():
            maps = image_maps(scorer, t(a), t(b))
            if null == 'identical':
                identical_max = max(identical_max, float(maps.abs().max()))
                continue
            per.setdefault(null, []).append(maps.mean(dim=(1, 2)).double().numpy())
        ref, a, bs = score_nulls(img, y, x, args.side, rng)
        sa = relational_score(scorer, t(a), t(ref))
        score_diffs += [abs(relational_score(scorer, t(b), t(ref)) - sa) for b in bs]
    photos = sorted({n.rsplit('_', 2)[0] for n, *_ in items})
    print(f'{len(items)} crops of {args.side} px from {len(photos)} scikit-image photos; identical images: max |P| = '
          f'{identical_max:g}')
    print()
    print('| null change (B vs A): 95th pct / max of the per-image abs. mean, (signed mean) | ' + ' | '.join(AXES) + ' |')
    print('|---|' + '---|' * len(AXES))
    p95, signed = {}, {}
    for null, rows in per.items():
        m = np.stack(rows)
        p95[null] = np.percentile(np.abs(m), 95, axis=0)
        signed[null] = m.mean(axis=0)
        print(f'| {null} | ' + ' | '.join(f'{q:.3f} / {mx:.3f} ({s:+.3f})' for q, mx, s in
                                          zip(p95[null], np.abs(m).max(axis=0), signed[null])) + ' |')
    floor = {a: ceil_to(max(float(p95[n][k]) for n in FLOOR_NULLS)) for k, a in enumerate(AXES)}
    print('| **floor** (largest 95th pct, rounded up) | ' + ' | '.join(f'**{floor[a]:.3f}**' for a in AXES) + ' |')
    score_floor = ceil_to(float(np.percentile(score_diffs, 95)))
    print(f'\nrelational score |s(B|ref) - s(A|ref)| under 8-bit rounding / +-1 level: 95th pct '
          f'{np.percentile(score_diffs, 95):.4f}, max {max(score_diffs):.4f} -> score floor {score_floor:.3f}')
    out = {'crops': len(items), 'side': args.side, 'photos': photos, 'identical_max_abs': identical_max,
           'p95': {n: {a: float(v) for a, v in zip(AXES, q)} for n, q in p95.items()},
           'signed_mean': {n: {a: float(v) for a, v in zip(AXES, q)} for n, q in signed.items()},
           'floor': floor, 'score_floor': score_floor}
    if args.nets:
        worst, n = seed_runs(*args.nets, scorer)
        print(f'one SR network, torch seeds 0 and 1, {n} validation images: max |P| = {worst:g}')
        out['seed_runs_max_abs'] = worst
    out['seconds'] = round(time.time() - t0, 1)
    print(f'({out["seconds"]} s)')
    print(json.dumps(out))


if __name__ == '__main__':
    main()
