"""Gradient ascent on an offline NR scorer's score (docs/nriqa.md): does optimising it improve images or game it?

    OMP_NUM_THREADS=1 .venv/bin/python docs/scripts/attack_nr_offline.py \\
        [--metric nr-lite] [--weights FILE ...] [--steps 200] [--lr 1e-3] [--photos 3] [--save-dir DIR]
    # default (nr-lite, 3 photos, 200 steps): about 1 min per attacked scorer on one busy core

Each start image is optimised alone (a batch of independent images: the loss is the sum of the
per-image scores and Adam's update is per pixel): ``x <- clamp(x + Adam step on the score, 0, 1)``,
``--steps`` steps (200), Adam with ``--lr`` 1e-3 on the pixels (an SR-training step size;
``--lr`` changes it, the same for every attacked scorer so that their rows compare). Why this size:
Adam normalises each pixel's gradient, so every pixel moves by about ``lr`` per step whatever the
scorer's gradient scale: 1e-3 is a quarter of an 8-bit level per step, so 200 steps move a pixel by at
most about 0.2 (51 levels; measured on nr-lite: max 0.19, mean 0.01-0.06), enough for a scorer's blind
spots to show within the budget, small enough that the result stays comparable with its start (PSNR
column). It is a stand-in for how far an SR network's output can be pushed by an NR loss, not a
measurement of it.

Starts: (i) the clean held-out photo crop and (ii) its x4 bicubic down-up version (PIL, as in
eval_nr_offline.py), ``--photos`` (3) first Set14 HR images (``--dataroot``), ``--size`` (192) px centre
crops; nr-lite 0.1.0 and the fitted NIQE were not trained on Set14 (check a candidate's training set).

Reported at steps 0, 50, 100, 200 (``--report``), all against the CLEAN crop and never optimised:

* ``score``: the attacked scorer's raw score (nr-lite: higher = better);
* ``MILO q`` / ``MILO err``: MILO's ``quality_score`` / ``raw_error`` (0 = identical, lower = better) with
  the official weights (``--milo-weights``, default ../shared/weights/milo/MILO.pth; the scoring table's
  ``milo`` entry with that file), else the shipped ``milo-pseudomos`` (named in the output);
* ``p-MOS``: the pseudo-MOS ensemble's default members (``iqa_plugin.labels.pseudomos_ensemble.PseudoMOS``,
  ``normalize='none'``), oriented member scores averaged: an absolute value, 0 = identical, higher = worse
  (members and their raw values in the JSON);
* ``PSNR`` (dB, RGB, capped at 100 for identical images) and ``NIQE-fit``: the packaged ``niqe-fitted``
  raw score (lower = better).

A scorer that is hard to game raises its score while MILO/p-MOS stay near their start (clean) or improve
(bicubic); a gamed one raises its score while MILO error, p-MOS and NIQE-fit get worse. Output: one Markdown
table (means over the photos) and, last line, JSON with every per-photo value. ``--save-dir``: PNGs of
each start and its attacked result.
"""
import argparse
import json
import math
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import iqa_plugin  # noqa: E402,F401  (registries)
from eval_nr_offline import REPO, fixed_distortion, load_crops  # noqa: E402
from iqa_plugin.scoring import get_cached_metric, get_spec  # noqa: E402

DEFAULT_MILO = REPO.parent / 'shared' / 'weights' / 'milo' / 'MILO.pth'
DEFAULT_PHOTOS = REPO.parent / 'shared' / 'data' / 'val' / 'Set14' / 'HR'
STARTS = ('clean', 'bicubic_x4')
COLUMNS = (('score', 'score', '.4g'), ('milo_quality', 'MILO q', '.4g'), ('milo_error', 'MILO err', '.4g'),
           ('pmos', 'p-MOS', '.4f'), ('psnr', 'PSNR', '.2f'), ('niqe_fitted', 'NIQE-fit', '.2f'))


# ---------------------------------------------------------------------------------------- pieces
def build_attacked(metric, weights=()):
    """[(label, scorer)]: ``metric`` from the scoring table once per weights file (or its default).

    The metric must be a no-reference one that may be optimised (``MetricSpec.loss_capable``)."""
    spec = get_spec(metric)
    if spec.kind != 'nr':
        raise ValueError(f"--metric {metric}: a {spec.kind} metric; the attack needs a no-reference one")
    if not spec.loss_capable:
        raise ValueError(f'--metric {metric}: not differentiable / refused as a loss ({spec.loss})')
    if not weights:
        return [(metric, get_cached_metric(metric))]
    out = []
    for w in weights:
        if not Path(w).is_file():
            raise FileNotFoundError(f'--weights: file not found: {w}')
        out.append((f'{metric} {Path(w).stem}', get_cached_metric(metric, weights_path=str(w))))
    return out


def build_milo(path):
    """(label, scorer): the official MILO with ``path`` when it is a file, else the shipped milo-pseudomos."""
    if path and Path(path).is_file():
        return 'milo (official)', get_cached_metric('milo', weights_path=str(path))
    return 'milo-pseudomos (official weights not found)', get_cached_metric('milo-pseudomos')


def psnr(x, ref, cap=100.0):
    """(B,) PSNR in dB of x against ref, (B, 3, H, W) in [0, 1]; identical images give ``cap``."""
    mse = (x.double() - ref.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(10 ** (-cap / 10)))).float()


def attack(scorer, start, steps, lr, report, callback):
    """Adam ascent of ``scorer``'s quality from ``start`` (B, 3, H, W) in [0, 1], clamped after each step.

    ``callback(step, x)`` is called (without grad) at step 0 and at every step in ``report``; returns the
    final image. Lower-better scorers are descended (their score is what ``score_candidates`` negates)."""
    sign = 1.0 if getattr(scorer, 'lower_better', False) else -1.0
    x = start.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    callback(0, x.detach())
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = sign * scorer.score(x).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
        if step in report:
            callback(step, x.detach())
    return x.detach()


def _slug(text):
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', text).strip('_')


def _save_png(path, img):
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(img.permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)).save(path)


def markdown(records, labels, milo_label):
    """One table: mean over photos per (scorer, start, step)."""
    head = ['attacked', 'start', 'step'] + [c[1] for c in COLUMNS]
    lines = [f'MILO: {milo_label}; p-MOS: raw ensemble mean (0 = identical, higher = worse); NIQE-fit: lower = better',
             '', '| ' + ' | '.join(head) + ' |', '|' + ' --- |' * len(head)]
    for label in labels:
        for start in STARTS:
            steps = sorted({r['step'] for r in records if r['scorer'] == label and r['start'] == start})
            for k in steps:
                rows = [r for r in records if r['scorer'] == label and r['start'] == start and r['step'] == k]
                cells = [format(float(np.mean([r[key] for r in rows])), fmt) for key, _, fmt in COLUMNS]
                lines.append(f'| {label} | {start} | {k} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--metric', default='nr-lite', help='a differentiable NR metric of the scoring table')
    p.add_argument('--weights', action='append', default=[],
                   help='explicit weights file of --metric (repeatable: one attacked scorer each)')
    p.add_argument('--dataroot', nargs='+', default=[str(DEFAULT_PHOTOS)], help='held-out photos')
    p.add_argument('--photos', type=int, default=3, help='first N photos of --dataroot')
    p.add_argument('--size', type=int, default=192, help='centre-crop side (NIQE-fit needs >= 96)')
    p.add_argument('--steps', type=int, default=200)
    p.add_argument('--lr', type=float, default=1e-3, help='Adam step on the pixels (about the per-step change)')
    p.add_argument('--report', default='0,50,100,200', help='steps to measure (those above --steps dropped; '
                                                           'the last step is always measured)')
    p.add_argument('--milo-weights', default=str(DEFAULT_MILO),
                   help='official MILO file (default: %(default)s); milo-pseudomos when missing')
    p.add_argument('--save-dir', default=None, help='write start and attacked PNGs here')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--seed', type=int, default=7)
    args = p.parse_args(argv)
    if args.steps < 0 or args.photos < 1 or not args.lr > 0:
        p.error('--steps must be >= 0, --photos >= 1 and --lr > 0')
    warnings.filterwarnings('ignore')
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    report = sorted({int(s) for s in args.report.split(',') if s.strip() and 0 < int(s) <= args.steps} | {args.steps})
    report = [k for k in report if k > 0]  # steps after 0, which is always measured
    rng = np.random.default_rng(args.seed)
    clean_np, names = load_crops(args.dataroot, args.size, args.photos, with_names=True)
    starts_np = {'clean': clean_np,
                 'bicubic_x4': np.stack([fixed_distortion(a, 'bicubic_x4', rng) for a in clean_np])}
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    clean = to_t(clean_np)
    start = torch.cat([to_t(starts_np[s]) for s in STARTS])  # (len(STARTS) * P, 3, H, W), starts outer
    ref = clean.repeat(len(STARTS), 1, 1, 1)
    tags = [(s, n) for s in STARTS for n in names]

    try:
        attacked = build_attacked(args.metric, args.weights)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e).splitlines()[0])
    milo_label, milo = build_milo(args.milo_weights)
    from iqa_plugin.labels.pseudomos_ensemble import PseudoMOS
    pmos = PseudoMOS(normalize='none')
    niqe = get_cached_metric('niqe-fitted')
    print(f'{len(names)} photos ({", ".join(names)}), {args.size} px; {milo_label}; p-MOS members '
          f'{", ".join(pmos.members)} ({time.perf_counter() - t0:.0f} s)', file=sys.stderr)

    records = []
    for label, scorer in attacked:
        t = time.perf_counter()

        def measure(step, x, label=label, scorer=scorer):
            with torch.no_grad():
                score = scorer.score(x)
                m = milo(x, ref)
                pm, raw = pmos(x, ref)
                nq = niqe.score(x)
                ps = psnr(x, ref)
            for i, (s, n) in enumerate(tags):
                records.append({'scorer': label, 'start': s, 'photo': n, 'step': step, 'score': float(score[i]),
                                'milo_quality': float(m['quality_score'][i]), 'milo_error': float(m['raw_error'][i]),
                                'pmos': float(pm[i]), 'pmos_members': [float(v) for v in raw[i]],
                                'psnr': float(ps[i]), 'niqe_fitted': float(nq[i])})

        final = attack(scorer, start, args.steps, args.lr, report, measure)
        if args.save_dir:
            for i, (s, n) in enumerate(tags):
                _save_png(Path(args.save_dir) / f'{_slug(n)}_{s}_start.png', start[i])
                _save_png(Path(args.save_dir) / f'{_slug(n)}_{s}_{_slug(label)}_step{args.steps}.png', final[i])
        print(f'{label}: {time.perf_counter() - t:.0f} s', file=sys.stderr)

    print(markdown(records, [a[0] for a in attacked], milo_label))
    bad = [r for r in records if not all(math.isfinite(r[k]) for k, _, _ in COLUMNS)]
    if bad:
        print(f'\nNon-finite values in {len(bad)} rows', file=sys.stderr)
    print(json.dumps({'metric': args.metric, 'weights': args.weights, 'steps': args.steps, 'lr': args.lr,
                      'optimizer': 'adam', 'report': [0] + report, 'photos': names, 'size': args.size,
                      'milo': milo_label, 'pmos_members': list(pmos.members), 'records': records}))
    return records


if __name__ == '__main__':
    main()
