"""Evaluate folders of SR results against ground truths: per-image and per-method tables and plots.

Why one file over 450 lines: one protocol (HGGT's) from matching files to the tables and plots; the matching, GT
loading, scoring and report stages are each used only by it and by ``apps/repro.py`` through ``evaluate``.

``iqa-plugin evaluate`` (``iqa_plugin/cli/evaluate.py``) is a thin wrapper around ``evaluate``.

Matching: a result file ``<gtname>_<suffix>.<ext>`` (the suffix a method's tag, HGGT's convention) or
``<gtname>.<ext>`` belongs to the GT image ``<gtname>``; the longest GT name that fits wins. Files that match
no GT are warned about one by one and counted; a folder without images, or none that matches, is an error.

Ground truths (``load_gt_set``):

* a plain folder of images: single-GT, each result scored against its GT;
* an HGGT root (``images/`` and ``labels/``, one set or ``images/original`` directly), or an HGGT image set
  (``original/``, ``01/`` ...) with ``labels`` (the folder of the annotators ``A/ B/ C/``): HGGT's multi-GT
  protocol. Labels are the majority vote of ``iqa_plugin.data.multigt_layout``; every full-reference metric is
  computed against each *effective positive* GT (the candidates voted Positive; an image without one is
  scored against its original, as in ``calculate_multigt``), averaged per image, then over images.
  An image set without labels is single-GT against ``original/``.

Metrics (``METRIC_NAMES``): ``psnr`` / ``ssim`` are BasicSR's ``calculate_psnr`` / ``calculate_ssim`` on
uint8 RGB with ``crop_border`` 4 (HGGT's setting); every other name is a row of the scoring table
(``iqa_plugin.scoring``), built with ``get_cached_metric`` (``lpips``, LPIPS v0.1 AlexNet, and ``dists``, DISTS,
are rows too: pyiqa's networks with their published files, which are never downloaded here).
A metric whose weights are not on this machine is skipped, named in ``skipped`` with the reason, and its
cells read ``skipped`` (never a number). No-reference metrics also score the GTs themselves: the
``Gold Standard`` row (the effective positives, averaged per image as above).

Images are (1, 3, H, W) RGB float in [0, 1] (``iqa_plugin.utils.image.read_image``); the networks run on
``device`` (CUDA when present), no-reference ones on batches of equal-sized images.
"""
import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from iqa_plugin.scoring import METRICS

GOLD = 'Gold Standard'
CROP_BORDER = 4
BASICSR_FR = {'psnr': 'calculate_psnr', 'ssim': 'calculate_ssim'}
PYIQA_FR = tuple(n for n, s in METRICS.items() if s.kind == 'fr' and s.pyiqa and s.files)  # ('lpips', 'dists')
DEFAULT_METRICS = ('psnr', 'ssim', 'lpips', 'dists', 'milo', 'afine', 'relational', 'musiq', 'nima', 'qalign',
                   'topiq_nr', 'nr-lite')
SKIPPED = 'skipped'


class EvaluateError(ValueError):
    """Bad input to ``evaluate`` (the CLI reports it in one line)."""


class EvaluateWarning(UserWarning):
    """A problem ``evaluate`` works around: an unmatched result file, a skipped GT group."""


# ------------------------------------------------------------------------------------------ ground truths
@dataclass
class GTImage:
    """One evaluated image: ``refs`` the GT files scored against (the effective positives, or the one GT)."""
    name: str
    refs: list
    n_positive: int = 0


def load_gt_set(gt, labels=None):
    """(list of GTImage, protocol) for ``gt`` (see the module docstring); protocol 'multi-gt' or 'single-gt'."""
    from iqa_plugin.data import multigt_layout as layout
    from iqa_plugin.utils.image import list_images

    gt = Path(gt)
    if not gt.is_dir():
        raise EvaluateError(f'GT folder not found: {gt}')
    if (gt / 'images').is_dir():  # an HGGT root
        sets = [p.name for p in sorted((gt / 'images').iterdir()) if p.is_dir()]
        if not (gt / 'images' / layout.ORIGINAL).is_dir() and len(sets) > 1:  # in evaluate's own arguments
            hint = f' --labels {gt / "labels" / sets[0]}' if labels is None and (gt / 'labels').is_dir() else ''
            raise EvaluateError(f'{gt / "images"} holds {len(sets)} sets ({", ".join(sets)}); evaluate one at a '
                                f'time: give its folder as --gt, e.g. --gt {gt / "images" / sets[0]}{hint}')
        try:
            if labels is None and (gt / 'labels').is_dir():
                images_dir, labels_dir = layout.resolve_hggt_dirs(dataroot=gt)
            else:
                sets = [p for p in sorted((gt / 'images').iterdir()) if p.is_dir()]
                images_dir = gt / 'images' if (gt / 'images' / layout.ORIGINAL).is_dir() else \
                    (sets[0] if len(sets) == 1 else None)
                if images_dir is None:
                    raise ValueError(f'{gt / "images"} holds {len(sets)} sets; give one set folder as --gt')
                labels_dir = Path(labels) if labels is not None else None
        except (ValueError, FileNotFoundError) as e:
            raise EvaluateError(str(e)) from None
    elif (gt / layout.ORIGINAL).is_dir():  # one HGGT image set
        images_dir, labels_dir = gt, (Path(labels) if labels is not None else None)
    else:
        if labels is not None:
            raise EvaluateError(f'--labels needs HGGT\'s layout (original/, 01/, ... or images/ and labels/), '
                                f'but {gt} is a plain folder of images')
        files = list_images(gt)
        if not files:
            raise EvaluateError(f'no images in GT folder {gt}')
        return [GTImage(p.stem, [p]) for p in files], 'single-gt'
    if labels_dir is None:
        files = list_images(images_dir / layout.ORIGINAL)
        return [GTImage(p.stem, [p]) for p in files], 'single-gt'
    try:
        scan = layout.scan_hggt(images_dir, labels_dir)
    except (ValueError, FileNotFoundError) as e:
        raise EvaluateError(str(e)) from None
    for skip in scan.skipped:
        _warn(skip.line())
    out = []
    for g in scan.groups:
        pos = [p for p, lab in zip(g.paths, g.labels) if lab == layout.LABEL_POSITIVE]
        out.append(GTImage(g.name, pos or [g.paths[0]], len(pos)))
    if not out:
        raise EvaluateError(f'no usable group in {images_dir} with labels {labels_dir}')
    return out, 'multi-gt'


# ------------------------------------------------------------------------------------------ matching
def match_results(folder, gt_names):
    """({gt name: result file}, [(unmatched file, why)]) for the images in ``folder`` (see the module docstring)."""
    from iqa_plugin.utils.image import list_images

    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluateError(f'results folder not found: {folder}')
    files = list_images(folder)
    if not files:
        raise EvaluateError(f'no images in results folder {folder}')
    names = set(gt_names)
    matched, unmatched = {}, []
    for p in files:
        stem, name = p.stem, None
        if stem in names:
            name = stem
        else:
            parts = stem.split('_')
            for i in range(len(parts) - 1, 0, -1):  # longest GT name first
                if '_'.join(parts[:i]) in names:
                    name = '_'.join(parts[:i])
                    break
        if name is None:
            unmatched.append((p, 'no GT named like it (expected <gtname>.png or <gtname>_<suffix>.png)'))
        elif name in matched:  # a second file for one GT: the exact name wins, else the first in sorted order
            keep, drop = (p, matched[name]) if stem == name else (matched[name], p)
            matched[name] = keep
            unmatched.append((drop, f'another file ({keep.name}) is already the result for GT {name}'))
        else:
            matched[name] = p
    if not matched:
        raise EvaluateError(f'no file in results folder {folder} matches a GT name (<gtname>.png or '
                            f'<gtname>_<suffix>.png; e.g. {files[0].name} vs GT {sorted(names)[0]})')
    return matched, unmatched


def _warn(line):
    import warnings
    warnings.warn(line, EvaluateWarning, stacklevel=3)


# ------------------------------------------------------------------------------------------ metrics
@dataclass
class Metric:
    """A scorer: ``kind`` 'fr' or 'nr'; ``fn(dist, ref)`` -> (B,) values for (B, 3, H, W) inputs in [0, 1]."""
    name: str
    kind: str
    lower_better: bool
    fn: object = field(repr=False)


def _basicsr_fr(name):
    from basicsr.metrics import psnr_ssim
    from basicsr.utils import tensor2img

    func = getattr(psnr_ssim, BASICSR_FR[name])

    def fn(dist, ref):
        return [float(func(tensor2img([d.cpu()]), tensor2img([r.cpu()]), crop_border=CROP_BORDER,
                           test_y_channel=False)) for d, r in zip(dist, ref)]
    return fn


def _pyiqa_fr_files(name):
    """The ``WeightFile`` list of table row ``lpips`` / ``dists``: the calibration file and the torchvision backbone."""
    from iqa_plugin.scoring.pyiqa_adapter import metric_info

    return list(metric_info(name).files())


def pyiqa_fr_available(name):
    """(True, '') when the files of ``lpips`` / ``dists`` are on this machine, else (False, reason); no download."""
    from iqa_plugin import scoring

    return scoring.available_offline(name)


def _table(name, device):
    import torch

    from iqa_plugin.scoring import get_cached_metric

    module = get_cached_metric(name, device=device)
    key = module.output_names[0]

    def fn(dist, ref=None):
        with torch.inference_mode():
            out = module(dist) if ref is None else module(dist, ref)
        return out[key].reshape(-1).float().cpu().tolist()
    return fn


def build_metrics(names, device):
    """([Metric], {name: why skipped}) for ``names``; unknown names raise EvaluateError."""
    from iqa_plugin import scoring

    known = sorted(set(BASICSR_FR) | set(scoring.METRICS))
    metrics, skipped = [], {}
    for name in names:
        if name in BASICSR_FR:
            metrics.append(Metric(name, 'fr', False, _basicsr_fr(name)))
        elif name in scoring.METRICS:
            spec = scoring.get_spec(name)
            ok, why = scoring.available_offline(name)
            if ok:
                metrics.append(Metric(name, spec.kind, spec.lower_better, _table(name, device)))
            else:
                skipped[name] = why
        else:
            raise EvaluateError(f"unknown metric '{name}'; known: {', '.join(known)}")
    return metrics, skipped


# ------------------------------------------------------------------------------------------ scoring
def _read(path, device):
    from iqa_plugin.utils.image import read_image
    return read_image(path).to(device)


def _score_fr(metrics, sr, refs):
    """{metric: mean over the refs} for one result ``sr`` (1, 3, H, W) and its GTs ``refs`` (K, 3, H, W)."""
    dist = sr.expand(refs.shape[0], -1, -1, -1)
    return {m.name: _mean(m.fn(dist, refs)) for m in metrics if m.kind == 'fr'}


def _score_nr(metrics, images, batch_size):
    """{metric: [value per image]} for a list of (1, 3, H, W) tensors, batched by equal size."""
    import torch

    out = {m.name: [None] * len(images) for m in metrics if m.kind == 'nr'}
    if not out:
        return out
    by_shape = {}
    for i, x in enumerate(images):
        by_shape.setdefault(tuple(x.shape), []).append(i)
    for idx in by_shape.values():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            batch = torch.cat([images[i] for i in chunk])
            for m in metrics:
                if m.kind == 'nr':
                    for i, v in zip(chunk, m.fn(batch)):
                        out[m.name][i] = v
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def evaluate(results, gt, labels=None, metrics=DEFAULT_METRICS, out=None, device=None, batch_size=8,
             progress=True):
    """Score every results folder against the GTs; returns the result dict and writes tables/plots to ``out``.

    Returns a dict: ``protocol``, ``metrics`` (scored, in order), ``skipped`` {metric: reason},
    ``lower_better`` {metric: bool}, ``methods`` (per method: ``method``, ``folder``, ``images``,
    ``unmatched``, ``means`` {metric: float, NaN-free}), ``per_image`` (rows: ``method``, ``image``, ``file``,
    ``n_gt``, then one key per metric) and ``files`` (what was written).
    """
    import torch
    from tqdm import tqdm

    if not results:
        raise EvaluateError('give at least one results folder')
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    gts, protocol = load_gt_set(gt, labels)
    by_name = {g.name: g for g in gts}
    methods = _match_methods(results, by_name)
    scorers, skipped = build_metrics(_metric_names(metrics), device)
    has_nr = any(m.kind == 'nr' for m in scorers)
    total = sum(len(m['matched']) for m in methods) + (len({n for m in methods for n in m['matched']}) if has_nr else 0)
    bar = tqdm(total=total, desc='evaluate', unit='img', disable=not progress)
    rows = _score_methods(methods, by_name, scorers, device, batch_size, bar)
    gold = []
    if has_nr:  # the GTs themselves, per image the mean over its effective positives
        gold = _score_gold(methods, by_name, scorers, device, batch_size, bar)
        rows += gold
    bar.close()
    scored = [s.name for s in scorers]
    summary = _method_means(methods + ([{'method': GOLD, 'folder': str(gt), 'matched': {r['image']: 0 for r in gold},
                                         'unmatched': []}] if has_nr else []), rows, scored)
    result = {'protocol': protocol, 'crop_border': CROP_BORDER, 'metrics': scored, 'skipped': skipped,
              'lower_better': {s.name: s.lower_better for s in scorers},
              'kinds': {s.name: s.kind for s in scorers}, 'methods': summary, 'per_image': rows, 'files': []}
    if out is not None:
        result['files'] = write_tables(result, out) + write_plots(result, out)
    return result


def _match_methods(results, by_name):
    """One entry per results folder: its unique method name, folder, matched {GT name: path} and unmatched
    files (warned about)."""
    methods = []
    for folder in results:
        matched, unmatched = match_results(folder, by_name)
        for p, why in unmatched:
            _warn(f'{p}: {why}; skipped')
        if unmatched:
            _warn(f'{len(unmatched)} unmatched file(s) in {folder}')
        methods.append({'method': _unique(Path(folder).name, [m['method'] for m in methods]),
                        'folder': str(folder), 'matched': matched, 'unmatched': [str(p) for p, _ in unmatched]})
    return methods


def _metric_names(metrics):
    """The metric names of ``metrics`` (comma-separated text or a list); EvaluateError when none."""
    names = [m.strip() for m in (metrics.split(',') if isinstance(metrics, str) else metrics) if m.strip()]
    if not names:
        raise EvaluateError('no metric named (--metrics psnr,ssim,...)')
    return names


def _score_methods(methods, by_name, scorers, device, batch_size, bar):
    """Per-image rows of every method: FR metrics against the image's GTs, NR metrics in batches."""
    import torch

    rows = []
    for m in methods:
        images, method_rows = [], []
        for name in sorted(m['matched']):
            g, path = by_name[name], m['matched'][name]
            sr = _read(path, device)
            refs = torch.cat([_read(p, device) for p in g.refs])
            if sr.shape[-2:] != refs.shape[-2:]:
                raise EvaluateError(f'{path} is {sr.shape[-1]}x{sr.shape[-2]} but its GT {g.refs[0]} is '
                                    f'{refs.shape[-1]}x{refs.shape[-2]}')
            row = {'method': m['method'], 'image': name, 'file': str(path), 'n_gt': len(g.refs)}
            row.update(_score_fr(scorers, sr, refs))
            method_rows.append(row)
            images.append(sr)
            bar.update(1)
        for k, vals in _score_nr(scorers, images, batch_size).items():
            for row, v in zip(method_rows, vals):
                row[k] = v
        rows += method_rows
    return rows


def _score_gold(methods, by_name, scorers, device, batch_size, bar):
    """Rows of the GTs themselves (NR metrics): per image the mean over its effective positives."""
    gold = []
    for name in sorted({n for m in methods for n in m['matched']}):
        refs = [_read(p, device) for p in by_name[name].refs]
        vals = _score_nr(scorers, refs, batch_size)
        gold.append({'method': GOLD, 'image': name, 'file': ';'.join(map(str, by_name[name].refs)),
                     'n_gt': len(refs), **{s.name: None for s in scorers if s.kind == 'fr'},
                     **{k: _mean(v) for k, v in vals.items()}})
        bar.update(1)
    return gold


def _method_means(methods, rows, scored):
    """Per method (the GT rows included when ``methods`` lists them): images, unmatched files, metric means."""
    summary = []
    for m in methods:
        mine = [r for r in rows if r['method'] == m['method']]
        summary.append({'method': m['method'], 'folder': m['folder'], 'images': len(mine),
                        'unmatched': len(m['unmatched']),
                        'means': {k: _mean([r.get(k) for r in mine]) for k in scored}})
    return summary


def _unique(name, taken):
    base, k = name, 2
    while name in taken:
        name, k = f'{base}_{k}', k + 1
    return name


# ------------------------------------------------------------------------------------------ tables
def _cell(value, metric, skipped):
    if metric in skipped:
        return SKIPPED
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '—'  # not applicable (full-reference metric on the Gold Standard row)
    return f'{value:.4f}' if value == 0 or abs(value) >= 0.01 else f'{value:.3e}'


def _columns(result):
    return result['metrics'] + list(result['skipped'])


def _arrow(result, k):
    if k in result['skipped']:
        return k
    return f"{k} {'↓' if result['lower_better'][k] else '↑'}"


def _markdown(result, table_rows, keys, title):
    cols = _columns(result)
    lines = [f'# {title}', '', f"Protocol: {result['protocol']} (full-reference metrics against every effective-"
             f"positive GT, averaged per image, then over images; PSNR/SSIM on RGB, crop_border "
             f"{result['crop_border']})" if result['protocol'] == 'multi-gt' else
             f"Protocol: {result['protocol']} (PSNR/SSIM on RGB, crop_border {result['crop_border']})", '',
             '| ' + ' | '.join(keys + [_arrow(result, k) for k in cols]) + ' |',
             '|' + ' --- |' * (len(keys) + len(cols))]
    for r, values in table_rows:
        lines.append('| ' + ' | '.join([str(r[k]) for k in keys] +
                                       [_cell(values.get(c), c, result['skipped']) for c in cols]) + ' |')
    if result['skipped']:
        lines += ['', 'Skipped metrics (weights not on this machine; no value is reported for them):', '']
        lines += [f'- {k}: {why}' for k, why in result['skipped'].items()]
    return '\n'.join(lines) + '\n'


def write_tables(result, out):
    """per_method.{md,csv,json} and per_image.{md,csv,json} under ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cols = _columns(result)
    written = []
    for kind, keys, table_rows in (
            ('per_method', ['method', 'images', 'unmatched'], [(m, m['means']) for m in result['methods']]),
            ('per_image', ['method', 'image', 'n_gt'], [(r, r) for r in result['per_image']])):
        md = out / f'{kind}.md'
        md.write_text(_markdown(result, table_rows, keys, kind.replace('_', ' ')), encoding='utf-8')
        with open(out / f'{kind}.csv', 'w', newline='', encoding='utf-8') as f:
            w = csv.writer(f)
            w.writerow(keys + cols)
            for r, values in table_rows:
                w.writerow([r[k] for k in keys] + [
                    SKIPPED if c in result['skipped'] else ('' if values.get(c) is None else repr(values[c]))
                    for c in cols])
        written += [md, out / f'{kind}.csv']
    js = out / 'results.json'
    js.write_text(json.dumps({k: v for k, v in result.items() if k != 'files'}, indent=1), encoding='utf-8')
    return [str(p) for p in written + [js]]


# ------------------------------------------------------------------------------------------ plots
def write_plots(result, out):
    """``bar_<metric>.png`` per scored metric (a bar per method) and ``scatter_<nr>_vs_psnr.png`` per NR metric
    when PSNR was scored (a point per method): matplotlib if installed, else PIL. Returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    written = []
    for k in result['metrics']:
        pts = [(m['method'], m['means'][k]) for m in result['methods'] if m['means'].get(k) is not None]
        if not pts:
            continue
        path = out / f"bar_{k.replace('/', '_')}.png"
        (_bar_mpl if plt else _bar_pil)(plt, pts, _arrow(result, k), path)
        written.append(path)
    if 'psnr' in result['metrics']:
        for k in result['metrics']:
            if result['kinds'][k] != 'nr':
                continue
            pts = [(m['method'], m['means']['psnr'], m['means'][k]) for m in result['methods']
                   if m['means'].get('psnr') is not None and m['means'].get(k) is not None]
            if pts:
                path = out / f"scatter_{k.replace('/', '_')}_vs_psnr.png"
                (_scatter_mpl if plt else _scatter_pil)(plt, pts, 'PSNR (dB) ↑', _arrow(result, k), path)
                written.append(path)
    return [str(p) for p in written]


def _bar_mpl(plt, pts, label, path):
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(pts) + 2), 3.5))
    ax.bar([p[0] for p in pts], [p[1] for p in pts], color='tab:blue')
    ax.set_ylabel(label)
    ax.set_title(label)
    for i, (_, v) in enumerate(pts):
        ax.annotate(f'{v:.4g}', (i, v), ha='center', va='bottom', fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=20, ha='right')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _scatter_mpl(plt, pts, xlabel, ylabel, path):
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter([p[1] for p in pts], [p[2] for p in pts], color='tab:red')
    for name, x, y in pts:
        ax.annotate(name, (x, y), textcoords='offset points', xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f'{ylabel} vs {xlabel}')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


_W, _H, _M = 480, 320, 40  # PIL canvas and margin


def _span(values):
    lo, hi = min(values + [0.0]), max(values + [0.0])
    return lo, (hi if hi > lo else lo + 1.0)


def _bar_pil(_, pts, label, path):
    from PIL import Image, ImageDraw
    im = Image.new('RGB', (_W, _H), 'white')
    d = ImageDraw.Draw(im)
    lo, hi = _span([p[1] for p in pts])
    y = lambda v: _H - _M - (v - lo) / (hi - lo) * (_H - 2 * _M)  # noqa: E731
    w = (_W - 2 * _M) / len(pts)
    d.text((_M, 10), label, fill='black')
    for i, (name, v) in enumerate(pts):
        x0 = _M + i * w + w * 0.15
        d.rectangle([x0, min(y(v), y(0)), x0 + w * 0.7, max(y(v), y(0))], fill=(31, 119, 180))
        d.text((x0, _H - _M + 4), name[:12], fill='black')
        d.text((x0, min(y(v), y(0)) - 12), f'{v:.4g}', fill='black')
    im.save(path)


def _scatter_pil(_, pts, xlabel, ylabel, path):
    from PIL import Image, ImageDraw
    im = Image.new('RGB', (_W, _H), 'white')
    d = ImageDraw.Draw(im)
    xs, ys = [p[1] for p in pts], [p[2] for p in pts]
    (xl, xh), (yl, yh) = (min(xs) - 1, max(xs) + 1), (min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1)
    d.text((_M, 10), f'{ylabel} vs {xlabel}', fill='black')
    d.rectangle([_M, _M, _W - _M, _H - _M], outline='black')
    for name, x, yv in pts:
        px = _M + (x - xl) / (xh - xl) * (_W - 2 * _M)
        py = _H - _M - (yv - yl) / (yh - yl) * (_H - 2 * _M) if yh > yl else _H / 2
        d.ellipse([px - 4, py - 4, px + 4, py + 4], fill=(214, 39, 40))
        d.text((px + 6, py - 6), name[:12], fill='black')
    im.save(path)
