"""Command line of the distortion engine: ``python -m iqa_plugin.labels.distortions [--size 256] [--n 100] [--table]``.

Prints the images/s of every operation and of ``DistortionEngine.sample`` on one core, or with
``--table`` the markdown table of each operation's parameters and PSNR per level (docs/distortions.md).
"""
import math

import cv2
import numpy as np

from iqa_plugin.labels.distortions.engine import LEVELS, DistortionEngine, OpCall, apply
from iqa_plugin.labels.distortions.ops import OPS


def smooth_test_image(size, seed=0):
    """A deterministic natural-looking test image: skimage's astronaut resized, or smooth noise."""
    try:
        from skimage import data as skdata

        img = skdata.astronaut().astype(np.float32) / 255.0
        return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    except (ImportError, OSError):  # pragma: no cover - skimage or its data missing
        rng = np.random.default_rng(seed)
        small = rng.random((size // 8, size // 8, 3), dtype=np.float32)
        return np.clip(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC), 0, 1)


def level_table(img):
    """Markdown table: each operation's axes, parameters at levels 1..5 and PSNR to ``img`` at levels 1, 3, 5."""
    eng = DistortionEngine()
    rows = ['| op | axes (weight) | ' + ' | '.join(f'level {i + 1} (s={s:g})' for i, s in enumerate(LEVELS))
            + ' | PSNR dB, levels 1 / 3 / 5 |', '|---' * (len(LEVELS) + 3) + '|']
    for name, spec in OPS.items():
        cells, psnrs = [], []
        for s in LEVELS:
            dist, _, info = eng.render(img, [OpCall(name, s, 0)])
            params = info['ops'][0].get('params', {})
            cells.append(', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
                                   for k, v in params.items() if k != 'angle'))
            psnrs.append(10 * math.log10(1.0 / max(float(((dist - img) ** 2).mean()), 1e-12)))
        axes = ', '.join(f'{a} {w:+g}' for a, w in spec.axes.items())
        rows.append(f'| `{name}` | {axes} | ' + ' | '.join(cells)
                    + f' | {psnrs[0]:.1f} / {psnrs[2]:.1f} / {psnrs[4]:.1f} |')
    return '\n'.join(rows)


def main(argv=None):
    """Print images/s of every operation and of ``sample``; returns {label: (cpu_rate, wall_rate)}.

    The CPU-time rate (``time.process_time``, one cv2/BLAS thread) is the per-core figure; the wall-clock
    rate is also printed and equals it on an idle machine.
    """
    import argparse
    import json
    import time

    p = argparse.ArgumentParser(prog='python -m iqa_plugin.labels.distortions',
                                description='measure distortion-engine throughput on one core')
    p.add_argument('--size', type=int, default=256)
    p.add_argument('--n', type=int, default=100, help='images per measurement')
    p.add_argument('--threads', type=int, default=1, help='cv2 threads (1 = per core)')
    p.add_argument('--table', action='store_true',
                   help='print the markdown table of parameters and PSNR per level instead of timing')
    args = p.parse_args(argv)
    cv2.setNumThreads(args.threads)
    img = smooth_test_image(args.size)
    if args.table:
        print(level_table(img))
        return {}
    results = {}

    def timed(label, fn, n, per_call=1):
        fn(0)  # warm-up (kernel caches, codec init)
        c, w = time.process_time(), time.perf_counter()
        for i in range(n):
            fn(i)
        cpu, wall = time.process_time() - c, time.perf_counter() - w
        results[label] = (n * per_call / max(cpu, 1e-9), n * per_call / wall)
        print(f'{label:40s} {results[label][0]:8.1f} images/s per core (CPU time), {results[label][1]:8.1f} wall')

    for name in OPS:
        rng = np.random.default_rng(0)
        n = max(5, args.n // 10) if name == 'jpeg2000' else args.n
        timed(name, lambda i, name=name, rng=rng: apply(img, name, LEVELS[i % 5], rng=rng), n)
    for label, eng in (('sample (max_ops=3, spatial_prob=0.5)', DistortionEngine(seed=0)),
                       ('sample (max_ops=1, spatial_prob=0)', DistortionEngine(max_ops=1, spatial_prob=0, seed=0))):
        timed(label, lambda i, eng=eng: eng.sample(img), args.n)
    eng = DistortionEngine(seed=0)
    timed('make_tiers (8 tiers), per image', lambda i: eng.make_tiers(img, 8), max(1, args.n // 8), per_call=8)
    print(json.dumps({'size': args.size, 'threads': args.threads,
                      'images_per_s_per_core': {k: round(v[0], 1) for k, v in results.items()},
                      'images_per_s_wall': {k: round(v[1], 1) for k, v in results.items()}}))
    return results
