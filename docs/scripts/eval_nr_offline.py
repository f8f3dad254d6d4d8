"""Evaluate offline no-reference scorers on held-out photos (docs/nriqa.md): one Markdown table per scorer set.

    OMP_NUM_THREADS=2 .venv/bin/python docs/scripts/eval_nr_offline.py \\
        [--niqe-fitted FILE] [--nr-lite-candidate FILE ...] [--old-nr-lite FILE | none]
                               # full: Set14 + Kodak24 + McMaster18, 5 min 44 s with --threads 1 (docs/nriqa.md)
    ... --quick                # 6 Set14 photos, about 40 s

Held-out photos: ``nr-lite`` 0.1.0 and the fitted NIQE were trained/fitted on CBSD68 + CSun_Hays80
(see ``iqa_plugin/weights/files/manifest.json`` and docs/nriqa.md), so the default evaluation set is
../shared/data/val/Set14/HR + ../shared/data/train/Kodak24 + ../shared/data/train/McMaster18, each
centre-cropped to ``--size`` (192) px. Reported per scorer (all through ``iqa_plugin.scoring.scorer.score_candidates``,
higher = better, so lower-better metrics are negated):

* ``srcc`` / ``srcc_group``: SRCC against the pseudo-MOS ensemble (``iqa_plugin.labels.pseudomos``) over all
  graded engine distortions (``PseudoMOSDataset``, tiers, 2 chains x 4 severities, seed 7), pooled and
  mean within group (one reference per group);
* ``pair <type>``: fraction of photos whose clean crop scores above its distorted version, for x4 bicubic
  down-up, JPEG q10, Gaussian noise sigma 15/255, Gaussian blur sigma 2, and every engine operation at
  level 3 (severity 0.6; ``engine min`` is the worst engine operation, ``engine mean`` their mean);
* ``degenerate``: black, white, flat grey, flat colour, uniform noise, heavy blur (sigma 8) and a
  3-level posterisation of the first photo, each compared with the lowest-scoring clean photo
  (``below`` = scored below every clean photo);
* ``pick pos>neg`` / ``pick argmax pos``: "pick the positive" on multi-GT sets written by
  ``iqa_plugin.apps.multigt_make`` (``make-multigt``; ``--multigt-sets`` 3 sets, seeds ``--seed`` + 0, 1, 2,
  4 candidates per photo as in HGGT) from the same centre crops, labels read with
  ``iqa_plugin.data.multigt_layout`` (HGGT majority vote of the three simulated annotators). In
  make-multigt a Positive is a mild enhancement of the photo (edge-preserving detail boost, CLAHE local
  contrast, light unsharp or contrast increase) and a Negative a visible degradation (strong
  over-sharpening or ringing, noise, blur, saturation/desaturation or a colour cast), each annotator
  reporting a neighbouring class with probability 0.2. ``pick pos>neg`` is the fraction of (Positive,
  Negative) candidate pairs within a group where the Positive scores strictly higher (goal >= 0.8;
  ``pick pairs / groups`` gives the counts), ``pick argmax pos`` the fraction of groups (among those with
  both a Positive and a Negative) whose best-scored candidate (the original excluded) is a Positive.

Scorers: ``nr-lite`` (the shipped weights; ``--nr-lite-candidate`` adds retrained files, one column each;
``--old-nr-lite`` the 0.1.0 weights as the column ``nr-lite 0.1.0``, by default
experiments/nr_lite_0.1.0.pth when it exists, extracted with
``git show bbb220c:iqa_plugin/weights/files/nr_lite.pth > experiments/nr_lite_0.1.0.pth``), ``niqe-fitted``
(the packaged fit, or ``--niqe-fitted``), two baselines (Laplacian variance and RMS contrast of the luma,
higher = better) and every pyiqa NR model of the scoring table whose weights are on this machine (listed
as skipped otherwise). The last line is JSON.
"""
import argparse
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import iqa_plugin  # noqa: F401  (registries)
from iqa_plugin.labels import distortions as D
from iqa_plugin.scoring.pyiqa_adapter import NR_METRICS
from iqa_plugin.scoring.scorer import NRScorer, score_candidates
from iqa_plugin.scoring import available_offline, get_cached_metric
from iqa_plugin.utils.ranking import correlation_report

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OLD_NR_LITE = REPO / 'experiments' / 'nr_lite_0.1.0.pth'
OLD_NR_LITE = 'nr-lite 0.1.0'
HELD_OUT = ['../shared/data/val/Set14/HR', '../shared/data/train/Kodak24', '../shared/data/train/McMaster18']
FIXED = ('bicubic_x4', 'jpeg_q10', 'noise_s15', 'blur_s2')
DEGENERATE = ('black', 'white', 'grey', 'flat_colour', 'pure_noise', 'blur_s8', 'posterised')


# ----------------------------------------------------------------------------------------- data
def load_crops(roots, size, limit=None, with_names=False):
    """Centre crops (N, 3, size, size) in [0, 1] of every image in ``roots`` (smaller images skipped).

    ``limit`` takes the first N files (sorted over all roots); ``with_names``: also return their stems."""
    from PIL import Image

    exts = {'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff'}
    paths = sorted(p for r in roots for p in Path(r).iterdir() if p.suffix.lower() in exts)
    crops, names = [], []
    for p in paths[:limit] if limit else paths:
        a = np.asarray(Image.open(p).convert('RGB'), dtype=np.float32) / 255.0
        h, w = a.shape[:2]
        if min(h, w) < size:
            continue
        t, l = (h - size) // 2, (w - size) // 2
        crops.append(a[t:t + size, l:l + size])
        names.append(p.stem)
    if not crops:
        raise ValueError(f'no image of at least {size} px in {", ".join(map(str, roots))}')
    return (np.stack(crops), names) if with_names else np.stack(crops)


def _gauss_blur(a, sigma):
    from scipy.ndimage import gaussian_filter
    return np.clip(gaussian_filter(a, sigma=(sigma, sigma, 0), mode='reflect'), 0, 1).astype(np.float32)


def fixed_distortion(a, kind, rng):
    """(H, W, 3) float32 in [0, 1] -> one of FIXED."""
    from PIL import Image

    if kind == 'bicubic_x4':
        im = Image.fromarray((a * 255).round().astype(np.uint8))
        w, h = im.size
        small = im.resize((w // 4, h // 4), Image.BICUBIC)
        return np.asarray(small.resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0
    if kind == 'jpeg_q10':
        buf = io.BytesIO()
        Image.fromarray((a * 255).round().astype(np.uint8)).save(buf, format='JPEG', quality=10)
        return np.asarray(Image.open(buf).convert('RGB'), dtype=np.float32) / 255.0
    if kind == 'noise_s15':
        return np.clip(a + rng.normal(0, 15 / 255, a.shape), 0, 1).astype(np.float32)
    if kind == 'blur_s2':
        return _gauss_blur(a, 2.0)
    raise ValueError(kind)


def degenerate_images(photo, rng):
    """{name: (H, W, 3) float32} made from the shape (and, for blur/posterise, content) of ``photo``."""
    shape = photo.shape
    return {'black': np.zeros(shape, np.float32), 'white': np.ones(shape, np.float32),
            'grey': np.full(shape, 0.5, np.float32),
            'flat_colour': np.broadcast_to(np.array([0.8, 0.3, 0.2], np.float32), shape).copy(),
            'pure_noise': rng.random(shape, dtype=np.float32),
            'blur_s8': _gauss_blur(photo, 8.0),
            'posterised': (np.round(photo * 2) / 2).astype(np.float32)}


def pmos_groups(roots, size, limit, seed):
    from iqa_plugin.data.pseudomos_dataset import PseudoMOSDataset

    opt = {'name': 'eval_nr', 'phase': 'val', 'dataroot': roots, 'patch_size': size, 'group_size': 8,
           'mode': 'tiers', 'chains': 2, 'return_maps': False, 'seed': seed}
    ds = PseudoMOSDataset(opt)
    n = min(len(ds.paths), limit) if limit else len(ds.paths)
    ds._length = n
    return [ds[i] for i in range(n)]


def multigt_set(clean, seed, candidates=4, sets=1, disagree=0.2):
    """Multi-GT groups made by ``make-multigt`` from the crops ``clean`` (N, H, W, 3) in [0, 1].

    The crops are written as 8-bit PNGs to a temporary folder (exact: they come from 8-bit files), the
    generator writes ``sets`` HGGT-layout sets from them (seeds ``seed``, ``seed + 1``, ...; ``size=None``:
    the crops as they are; independent candidates and votes per set) and each set is read back with the
    layout helpers. Returns ``(images, labels)``: images (sets * N, 1 + candidates, 3, H, W) float32 in
    [0, 1] (index 0 the original), labels (sets * N, 1 + candidates) int64 (``LABEL_ORIGINAL`` then the
    majority-vote ``LABEL_POSITIVE`` / ``LABEL_SIMILAR`` / ``LABEL_NEGATIVE``).
    """
    import tempfile

    from PIL import Image

    from iqa_plugin.data import multigt_layout as L
    from iqa_plugin.apps.multigt_make import load_hr, make_multigt

    images, labels = [], []
    with tempfile.TemporaryDirectory(prefix='eval_nr_multigt_') as tmp:
        src, out = Path(tmp) / 'src', Path(tmp) / 'set'
        src.mkdir()
        for i, a in enumerate(clean):
            Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)).save(src / f'{i:04d}.png')
        for k in range(sets):
            make_multigt(src, out, set_name=f'eval{k}', seed=seed + k, size=None, candidates=candidates,
                         disagree=disagree)
            scan = L.scan_hggt(*L.resolve_hggt_dirs(out, f'eval{k}'))
            if scan.skipped:
                raise RuntimeError('make-multigt set unreadable: ' + scan.skipped[0].line())
            images += [np.stack([load_hr(p) for p in g.paths]) for g in scan.groups]
            labels += [g.labels for g in scan.groups]
    return torch.from_numpy(np.stack(images)).permute(0, 1, 4, 2, 3).contiguous(), np.array(labels, dtype=np.int64)


def pick_positive(scores, labels):
    """"Pick the positive" statistics of one scorer on multi-GT groups.

    Args:
        scores: (G, N) quality, higher = better (``score_candidates``).
        labels: (G, N) multi-GT labels (``multigt_layout``: -1 Negative, 0 Similar, 1 Positive,
            2 the original, which takes part in neither statistic).
    Returns:
        dict ``'pos>neg'``: fraction of (Positive, Negative) pairs of the same group where the Positive
        scores strictly higher (ties count as wrong), ``'pairs'``: their number; ``'argmax pos'``: fraction
        of the groups holding both a Positive and a Negative whose highest-scored candidate (first on ties,
        the original excluded) is a Positive, ``'groups'``: their number. Fractions are None without pairs.
    """
    from iqa_plugin.data.multigt_layout import LABEL_NEGATIVE, LABEL_ORIGINAL, LABEL_POSITIVE

    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f'scores and labels must both be (G, N), got {scores.shape} and {labels.shape}')
    wins = pairs = hits = groups = 0
    for s, lab in zip(scores, labels):
        pos, neg = s[lab == LABEL_POSITIVE], s[lab == LABEL_NEGATIVE]
        if len(pos) == 0 or len(neg) == 0:
            continue
        wins += int((pos[:, None] > neg[None, :]).sum())
        pairs += len(pos) * len(neg)
        cand = np.flatnonzero(lab != LABEL_ORIGINAL)
        hits += int(lab[cand[np.argmax(s[cand])]] == LABEL_POSITIVE)
        groups += 1
    return {'pos>neg': wins / pairs if pairs else None, 'pairs': pairs,
            'argmax pos': hits / groups if groups else None, 'groups': groups}


# --------------------------------------------------------------------------------------- scorers
class _Baseline(nn.Module):
    """Plain statistics of the BT.601 luma: ``'laplacian_var'`` or ``'rms_contrast'``; (B, 3, H, W) -> (B,)."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.register_buffer('lap', torch.tensor([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]]).view(1, 1, 3, 3))

    def forward(self, x):
        y = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        if self.kind == 'laplacian_var':
            return nn.functional.conv2d(y, self.lap).flatten(1).var(1)
        return y.flatten(1).std(1)


def build_scorers(niqe_fitted, nr_lite_candidates=(), pyiqa_models=True, old_nr_lite=None):
    """({column: scorer}, {column: why skipped}); ``old_nr_lite``: the 0.1.0 file (None or 'none': no column)."""
    scorers, skipped = {}, {}
    try:
        scorers['nr-lite'] = get_cached_metric('nr-lite')
    except Exception as e:
        skipped['nr-lite'] = str(e).splitlines()[0]
    if old_nr_lite and str(old_nr_lite).lower() != 'none':
        if Path(old_nr_lite).is_file():
            scorers[OLD_NR_LITE] = get_cached_metric('nr-lite', weights_path=str(old_nr_lite))
        else:
            skipped[OLD_NR_LITE] = (f'{old_nr_lite} not found; extract it with git show '
                                    f'bbb220c:iqa_plugin/weights/files/nr_lite.pth > {old_nr_lite}')
    for path in nr_lite_candidates:  # retrained checkpoints (nr_lite_<iter>.pth) next to the shipped one
        scorers[f'nr-lite {Path(path).stem}'] = get_cached_metric('nr-lite', weights_path=path)
    try:  # an explicit fitted file, else the packaged entry of the scoring table
        kw = {'weights_path': niqe_fitted} if niqe_fitted else {}
        scorers['niqe-fitted'] = get_cached_metric('niqe-fitted', **kw)
    except Exception as e:
        skipped['niqe-fitted'] = str(e).splitlines()[0]
    for kind in ('laplacian_var', 'rms_contrast'):
        scorers[kind] = NRScorer(kind, _Baseline(kind), lower_better=False, score_range=(0.0, 1.0), min_size=3)
    for name in NR_METRICS:
        if not pyiqa_models:
            break
        ok, why = available_offline(name)
        if ok:
            scorers[name] = get_cached_metric(name)
        else:
            skipped[name] = 'weights not on this machine' if 'weights' in why else why[:120]
    return scorers, skipped


def quality(scorer, imgs, chunk=8):
    """(N, H, W, 3) or (N, 3, H, W) array/tensor -> (N,) numpy quality, higher = better."""
    x = torch.as_tensor(np.ascontiguousarray(imgs))
    if x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    return score_candidates(scorer, x.unsqueeze(0).float(), chunk_size=chunk)[0].double().numpy()


# ------------------------------------------------------------------------------------------- main
def evaluate(scorer, clean, dists, degen, groups, multigt=None):
    """The rows of one scorer's column; ``multigt``: ``(images, labels)`` of ``multigt_set`` or None."""
    q_clean = quality(scorer, clean)
    res = {}
    if multigt is not None:
        pick = pick_positive(score_candidates(scorer, multigt[0], chunk_size=8).double().numpy(), multigt[1])
        res.update({f'pick {k}': v for k, v in pick.items()})
    if groups:
        bad = np.stack([-quality(scorer, g['dist']) for g in groups])
        pmos = np.stack([g['pmos'].numpy() for g in groups])
        rep = correlation_report(bad, pmos)
        res['srcc'], res['srcc_group'] = rep['srcc'], rep['srcc_group']
    for kind, imgs in dists.items():
        res[f'pair {kind}'] = float(np.mean(quality(scorer, imgs) < q_clean))
    eng = [v for k, v in res.items() if k.startswith('pair ') and k[5:] not in FIXED]
    if eng:
        res['engine min'], res['engine mean'] = float(min(eng)), float(np.mean(eng))
    q_deg = quality(scorer, np.stack(list(degen.values())))
    res['clean min'] = float(q_clean.min())
    res['degenerate'] = {k: float(v) for k, v in zip(degen, q_deg)}
    res['degenerate below'] = int(sum(v < q_clean.min() for v in q_deg))
    return res


def markdown(results, degen_names):
    names = list(results)
    cols = ['srcc', 'srcc_group'] + [f'pair {k}' for k in FIXED] + ['engine min', 'engine mean', 'degenerate below',
                                                                    'pick pos>neg', 'pick argmax pos']
    lines = ['| metric | ' + ' | '.join(names) + ' |', '| --- |' + ' --- |' * len(names)]
    for c in cols:
        cells = []
        for n in names:
            v = results[n].get(c)
            cells.append('-' if v is None else (f'{v}/{len(degen_names)}' if c == 'degenerate below' else f'{v:.3f}'))
        lines.append(f'| {c} | ' + ' | '.join(cells) + ' |')
    if any('pick pairs' in results[n] for n in names):
        lines.append('| pick pairs / groups | ' + ' | '.join(
            f"{results[n]['pick pairs']} / {results[n]['pick groups']}" if 'pick pairs' in results[n] else '-'
            for n in names) + ' |')
    lines.append('| lowest clean photo (raw quality, higher = better) | '
                 + ' | '.join(f"{results[n]['clean min']:.4g}" for n in names) + ' |')
    for d in degen_names:
        lines.append(f'| {d} | ' + ' | '.join(
            f"{results[n]['degenerate'][d]:.4g}" + ('' if results[n]['degenerate'][d] < results[n]['clean min']
                                                     else ' **above**') for n in names) + ' |')
    eng_ops = sorted({c[5:] for n in names for c in results[n] if c.startswith('pair ') and c[5:] not in FIXED})
    if eng_ops:
        lines += ['', '| engine op (level 3) | ' + ' | '.join(names) + ' |', '| --- |' + ' --- |' * len(names)]
        for op in eng_ops:
            lines.append(f'| {op} | ' + ' | '.join(f"{results[n].get('pair ' + op, float('nan')):.2f}"
                                                   for n in names) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--dataroot', nargs='+', default=HELD_OUT, help='held-out photos (never trained on)')
    p.add_argument('--size', type=int, default=192, help='centre-crop side (NIQE needs >= 96)')
    p.add_argument('--limit', type=int, default=None, help='use only the first N photos')
    p.add_argument('--quick', action='store_true', help='6 Set14 photos, 6 pseudo-MOS groups (a few minutes)')
    p.add_argument('--niqe-fitted', default=None,
                   help='fitted NIQE file (python -m iqa_plugin.archs.niqe_fitted_arch fit); default: the packaged one')
    p.add_argument('--nr-lite-candidate', nargs='*', default=(), help='retrained nr-lite files to compare')
    p.add_argument('--old-nr-lite', default=str(DEFAULT_OLD_NR_LITE),
                   help=f"nr-lite 0.1.0 weights as the column '{OLD_NR_LITE}' (default: %(default)s, skipped with a "
                        "note when missing; 'none': no column)")
    p.add_argument('--multigt-candidates', type=int, default=4,
                   help='candidates per photo in the make-multigt set of the pick-the-positive rows (HGGT: 4)')
    p.add_argument('--multigt-sets', type=int, default=3,
                   help='make-multigt sets (seeds --seed, --seed + 1, ...) of the pick-the-positive rows: more pairs')
    p.add_argument('--no-multigt', action='store_true', help='skip the pick-the-positive rows')
    p.add_argument('--no-pmos', action='store_true', help='skip the pseudo-MOS SRCC (the slowest part)')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--seed', type=int, default=7)
    args = p.parse_args(argv)
    warnings.filterwarnings('ignore')
    torch.set_num_threads(args.threads)
    if args.quick:
        args.dataroot, args.limit = ['../shared/data/val/Set14/HR'], args.limit or 6
    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    clean = load_crops(args.dataroot, args.size, args.limit)
    dists = {k: np.stack([fixed_distortion(a, k, rng) for a in clean]) for k in FIXED}
    for op in D.OPS:
        dists[op] = np.stack([D.apply(a, op, D.severity_of_level(3), rng=args.seed + i)[0]
                              for i, a in enumerate(clean)])
    degen = degenerate_images(clean[0], rng)
    groups = [] if args.no_pmos else pmos_groups(args.dataroot, args.size, args.limit, args.seed)
    multigt = None if args.no_multigt else multigt_set(clean, args.seed, args.multigt_candidates, args.multigt_sets)
    print(f'{len(clean)} photos of {args.size} px, {len(dists)} distortion types, {len(groups)} pseudo-MOS groups '
          f'of 8, {0 if multigt is None else len(multigt[1])} multi-GT groups ({time.perf_counter() - t0:.0f} s)',
          file=sys.stderr)
    scorers, skipped = build_scorers(args.niqe_fitted, args.nr_lite_candidate, old_nr_lite=args.old_nr_lite)
    results = {}
    for name, sc in scorers.items():
        t = time.perf_counter()
        results[name] = evaluate(sc, clean, dists, degen, groups, multigt)
        print(f'{name}: {time.perf_counter() - t:.0f} s', file=sys.stderr)
    print(markdown(results, DEGENERATE))
    if skipped:
        print('\nSkipped: ' + '; '.join(f'{k} ({v})' for k, v in skipped.items()))
    print(json.dumps({'photos': len(clean), 'size': args.size, 'dataroot': args.dataroot, 'groups': len(groups),
                      'multigt': None if multigt is None else {'seed': args.seed, 'sets': args.multigt_sets,
                                                               'candidates': args.multigt_candidates,
                                                               'groups': len(multigt[1])},
                      'results': results, 'skipped': skipped}))
    return results


if __name__ == '__main__':
    main()
