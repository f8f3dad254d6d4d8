"""What changed between two sets of images, axis by axis: the relational network's signed maps of B relative to A.

For two images of the same content (two checkpoints' outputs for one input, an image before and after an
operation), ``maps = P(B, A)`` (``RelationalDistortionNet``, (K, H, W), K = ``len(distortions.AXES)``) is the signed
intensity of B's distortion *relative to* A on each axis, with the distortion engine's sign convention
(negative sharpness = B is blurrier than A, positive noise = B is noisier, ...). ``P(A, A) == 0`` exactly and
``P(A, B) == -P(B, A)`` exactly, by construction. The spatial mean of each map is the image's change on that axis.

Used by ``iqa-plugin diff`` (``iqa_plugin/cli/diff.py``) and by the IQA models' ``val.axis_report``
(``iqa_plugin/models/axis_report.py``); this module imports neither.

* ``image_maps(scorer, a, b)``: the (K, H, W) float32 maps of b relative to a (float32, outside autocast).
* ``AxisDiff``: accumulates per-image means (and, with a reference, each side's relational score) and
  summarises them: per-axis mean over images, each axis's share of the change, whether it is above the
  noise floor, the axes that moved most per image, and one sentence (``sentence``).
* ``diff_figure``, ``bar_chart``, ``stack``, ``write_png``: figures as uint8 RGB arrays drawn with OpenCV
  (a dependency; matplotlib is not), so the command and TensorBoard get the same pictures.

Noise floor (``FLOOR``, ``SCORE_FLOOR``): an axis counts as changed only when the absolute mean of its map
is above the floor, the 95th percentile of the per-image |mean| over changes nobody would call a change
(a 1-pixel shift of the content, +-1 grey level of noise, rounding a float image to 8 bits) on
scikit-image's photos; measured by ``docs/scripts/axis_floor.py`` (docs/guides/diff.md gives the table).
"""
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from iqa_plugin.labels.distortions import AXES

# Measured by ``OMP_NUM_THREADS=1 python docs/scripts/axis_floor.py`` with the shipped relational weights
# (docs/guides/diff.md, "Noise floor"): per axis, the largest over the null changes of the 95th percentile
# of the per-image |mean|, rounded up to 0.005.
FLOOR = {'sharpness': 0.055, 'noise': 0.095, 'brightness': 0.015, 'contrast': 0.065, 'saturation': 0.03,
         'compression': 0.155, 'quantisation': 0.07, 'resampling': 0.14}
# the same for the relational score against a reference (``--ref``): |s(B | ref) - s(A | ref)| when B is A
# rounded to 8 bits or with +-1 grey level of noise
SCORE_FLOOR = 1.885

# Words for B relative to A: (negative, positive) direction of each axis.
DIRECTIONS = {
    'sharpness': ('blurrier', 'sharper'),
    'noise': ('smoother', 'noisier'),
    'brightness': ('darker', 'brighter'),
    'contrast': ('lower in contrast', 'higher in contrast'),
    'saturation': ('less saturated', 'more saturated'),
    'compression': ('less compressed', 'more compressed'),
    'quantisation': ('less quantised', 'more quantised'),
    'resampling': ('less aliased', 'more aliased'),
}
SLIGHT = 2.0  # |mean| below SLIGHT x the axis's floor: "slightly"
STRONG = 0.5  # |mean| at or above: "much" (the middle of the engine's severities, 0.1 to 1)
TOP = 3  # axes named per image


def relational_scorer(device='cpu', weights_path=None):
    """The frozen relational network from the one cache (``scoring.get_cached_metric('relational', device)``)."""
    from iqa_plugin import scoring

    opts = {'weights_path': str(weights_path)} if weights_path else {}
    return scoring.get_cached_metric('relational', device, **opts)


def _device(scorer):
    p = next(scorer.parameters(), None)
    return p.device if p is not None else torch.device('cpu')


@torch.no_grad()
def image_maps(scorer, a, b):
    """(K, H, W) float32 maps of ``b`` relative to ``a``: P(b, a); a, b (1, 3, H, W) RGB in [0, 1], same size.

    The network runs in float32 outside autocast (whatever the caller's autocast state) on its own device.
    """
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f'size mismatch: {tuple(a.shape[-2:])} vs {tuple(b.shape[-2:])}')
    dev = _device(scorer)
    with torch.autocast(device_type=dev.type, enabled=False):
        maps = scorer.maps(b.to(dev, torch.float32), a.to(dev, torch.float32))
    return maps[0].float()


@torch.no_grad()
def relational_score(scorer, x, ref):
    """s(x | ref) (float; higher is better, 0 for x == ref), float32 outside autocast."""
    dev = _device(scorer)
    with torch.autocast(device_type=dev.type, enabled=False):
        out = scorer(x.to(dev, torch.float32), ref.to(dev, torch.float32))
    return float(out['relational'].reshape(-1)[0])


@dataclass
class ImageDiff:
    """One image: the spatial mean of each axis's map of B relative to A, and each side's score vs the ref."""
    name: str
    means: np.ndarray  # (K,) float64
    max_abs: float  # largest |value| of any map (0.0: B == A as far as the network can tell, exactly)
    score_a: float = None
    score_b: float = None

    def axes(self):
        return {a: float(v) for a, v in zip(AXES, self.means)}


@dataclass
class AxisDiff:
    """Per-image axis means of B relative to A, and their summary (see the module docstring).

    ``floor`` maps each axis to its noise floor (default ``FLOOR``); ``score_floor`` the relational score's.
    """
    floor: dict = None
    score_floor: float = SCORE_FLOOR
    images: list = field(default_factory=list)

    def __post_init__(self):
        self.floor = dict(FLOOR if self.floor is None else self.floor)
        missing = [a for a in AXES if a not in self.floor]
        if missing:
            raise ValueError(f'noise floor misses the axes {missing}')

    def add_maps(self, name, maps, score_a=None, score_b=None):
        """Record one image from its (K, H, W) maps (tensor or array); returns its ``ImageDiff``."""
        m = maps.detach().double().cpu().numpy() if torch.is_tensor(maps) else np.asarray(maps, np.float64)
        if m.ndim != 3 or m.shape[0] != len(AXES):
            raise ValueError(f'expected ({len(AXES)}, H, W) maps, got shape {m.shape}')
        item = ImageDiff(str(name), m.mean(axis=(1, 2)), float(np.abs(m).max()) if m.size else 0.0,
                         None if score_a is None else float(score_a), None if score_b is None else float(score_b))
        self.images.append(item)
        return item

    def add(self, scorer, name, a, b, ref=None):
        """Compute and record one image: (``ImageDiff``, its (K, H, W) maps on the scorer's device)."""
        maps = image_maps(scorer, a, b)
        sa = sb = None
        if ref is not None:
            if tuple(ref.shape) != tuple(a.shape):
                raise ValueError(f'size mismatch for {name}: ref {tuple(ref.shape[-2:])} vs {tuple(a.shape[-2:])}')
            sa, sb = relational_score(scorer, a, ref), relational_score(scorer, b, ref)
        return self.add_maps(name, maps, sa, sb), maps

    # ------------------------------------------------------------------ summary
    def changed(self, axis, value):
        return abs(value) > self.floor[axis]

    def moved(self, item, top=TOP):
        """[(axis, mean), ...] of one image's axes above the floor, largest |mean| first, at most ``top``."""
        order = np.argsort(-np.abs(item.means), kind='stable')
        out = [(AXES[k], float(item.means[k])) for k in order if self.changed(AXES[k], item.means[k])]
        return out[:top]

    def summary(self):
        """A plain dict (JSON-ready): see ``iqa-plugin diff --json`` in docs/guides/diff.md."""
        if not self.images:
            raise ValueError('no images to summarise')
        means = np.stack([i.means for i in self.images])  # (N, K)
        mean = means.mean(axis=0)
        spread = np.abs(means).mean(axis=0)
        total = float(spread.sum())
        out = {
            'images': len(self.images),
            'axes': {a: float(v) for a, v in zip(AXES, mean)},
            'share': {a: (float(v / total) if total > 0 else 0.0) for a, v in zip(AXES, spread)},
            'changed': {a: bool(self.changed(a, v)) for a, v in zip(AXES, mean)},
            'floor': dict(self.floor),
            'identical': all(i.max_abs == 0.0 for i in self.images),
            'per_image': {},
        }
        for i in self.images:
            entry = {'axes': i.axes(), 'moved': [[a, v] for a, v in self.moved(i)]}
            if i.score_a is not None:
                entry['relational_a'], entry['relational_b'] = i.score_a, i.score_b
            out['per_image'][i.name] = entry
        scored = [i for i in self.images if i.score_a is not None]
        if scored:
            sa = float(np.mean([i.score_a for i in scored]))
            sb = float(np.mean([i.score_b for i in scored]))
            d = sb - sa
            closer = 'B' if d > self.score_floor else 'A' if d < -self.score_floor else 'neither'
            out['reference'] = {'relational_a': sa, 'relational_b': sb, 'difference': d, 'closer': closer,
                                'score_floor': self.score_floor}
        return out


# ---------------------------------------------------------------------- words
def _signed(v):
    if abs(v) < 0.0005:
        return '0'
    return f'{v:+.2f}' if abs(v) >= 0.005 else f'{v:+.3f}'


def describe_axis(axis, value, floor=None):
    """'slightly noisier (noise +0.12)', 'blurrier (sharpness -0.41)', 'much darker (brightness -0.53)':
    'slightly' below ``SLIGHT`` times the axis's floor, 'much' from ``STRONG`` on."""
    word = DIRECTIONS[axis][value > 0]
    floor = FLOOR[axis] if floor is None else floor
    size = 'slightly ' if abs(value) < SLIGHT * floor else 'much ' if abs(value) >= STRONG else ''
    return f'{size}{word} ({axis} {_signed(value)})'


def _join(parts):
    return parts[0] if len(parts) == 1 else ', '.join(parts[:-1]) + ' and ' + parts[-1]


def sentence(summary, a='A', b='B', reference='the reference'):
    """The summary in one sentence, B relative to A, axes above their floor only, largest first:
    'B is blurrier (sharpness -0.41) and slightly noisier (noise +0.06) than A; other axes unchanged'
    (+ '; B is closer to the reference than A (relational -2.10 vs -3.40)' with a reference)."""
    axes, changed = summary['axes'], summary['changed']
    moved = sorted((k for k in AXES if changed[k]), key=lambda k: -abs(axes[k]))
    if summary.get('identical'):
        text = f'{b} is identical to {a} (every map is exactly 0)'
    elif not moved:
        largest = max(AXES, key=lambda k: abs(axes[k]))
        text = (f'{b} and {a} differ on no axis above its noise floor (largest: {largest} '
                f'{_signed(axes[largest])}, floor {summary["floor"][largest]:.3f})')
    else:
        text = f'{b} is {_join([describe_axis(k, axes[k], summary["floor"][k]) for k in moved])} than {a}'
        if len(moved) < len(AXES):
            text += '; other axes unchanged'
    ref = summary.get('reference')
    if ref:
        sa, sb = ref['relational_a'], ref['relational_b']
        how = {'B': f'closer to {reference} than {a}', 'A': f'further from {reference} than {a}',
               'neither': f'as close to {reference} as {a}'}[ref['closer']]
        text += f'; {b} is {how} (relational {sb:.2f} vs {sa:.2f})'
    return text


# ---------------------------------------------------------------------- figures (OpenCV, uint8 RGB)
_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX
_INK = (30, 30, 30)
_NICE = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


def _cv2():
    import cv2
    return cv2


def _to_rgb_u8(x):
    """(1, 3, H, W) / (3, H, W) tensor or (H, W, 3) float array in [0, 1] -> (H, W, 3) uint8."""
    if torch.is_tensor(x):
        x = x.detach().float().cpu()
        x = x[0] if x.ndim == 4 else x
        x = x.permute(1, 2, 0).numpy()
    x = np.asarray(x, np.float32)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _fit(img, side):
    """Resize an (H, W, 3) uint8 image so its longer side is ``side`` (nearest: pixels stay visible)."""
    h, w = img.shape[:2]
    f = side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return _cv2().resize(img, size, interpolation=_cv2().INTER_NEAREST if f >= 1 else _cv2().INTER_AREA)


def _text(canvas, text, org, scale=0.42, color=_INK, thickness=1):
    _cv2().putText(canvas, text, org, _FONT, scale, color, thickness, _cv2().LINE_AA)


def _text_width(text, scale=0.42):
    return _cv2().getTextSize(text, _FONT, scale, 1)[0][0]


def nice_scale(maps):
    """Colour-scale limit for maps: the 99th percentile of |value| rounded up to 0.05/0.1/0.25/0.5/1/2."""
    m = np.abs(np.asarray(maps, np.float32))
    v = float(np.percentile(m, 99)) if m.size else 0.0
    return next((n for n in _NICE if v <= n), _NICE[-1])


def _colour_bar(width, vmax):
    from iqa_plugin.scoring.relational_vis import map_to_rgb

    ramp = np.tile(np.linspace(-vmax, vmax, width, dtype=np.float32), (10, 1))
    bar = _to_rgb_u8(map_to_rgb(ramp, vmax))
    canvas = np.full((30, width, 3), 255, np.uint8)
    canvas[:10] = bar
    for label, x in ((f'-{vmax:g} (less)', 0), ('0', width // 2 - 4), (f'+{vmax:g} (more)', None)):
        x = width - _text_width(label, 0.38) if x is None else x
        _text(canvas, label, (max(0, x), 25), 0.38)
    return canvas


def diff_figure(a, b, maps, axes, title='', tile=192, vmax=None, labels=('A', 'B')):
    """One image's figure: A, B and the maps of ``axes`` (names) of B relative to A, blue-white-red.

    ``maps`` (K, H, W); each map tile is titled '<axis> <mean>'; one colour bar (+-vmax, default
    ``nice_scale`` of the shown maps). Returns an (H, W, 3) uint8 RGB array.
    """
    from iqa_plugin.scoring.relational_vis import map_to_rgb

    maps = maps.detach().float().cpu().numpy() if torch.is_tensor(maps) else np.asarray(maps, np.float32)
    idx = [AXES.index(k) for k in axes]
    vmax = vmax or nice_scale(maps[idx] if idx else maps[:0])
    tiles = [(labels[0], _fit(_to_rgb_u8(a), tile)), (labels[1], _fit(_to_rgb_u8(b), tile))]
    for k in idx:
        tiles.append((f'{AXES[k]} {_signed(float(maps[k].mean()))}', _fit(_to_rgb_u8(map_to_rgb(maps[k], vmax)), tile)))
    pad, head = 6, 20
    th = max(t.shape[0] for _, t in tiles)
    tw = max(max(t.shape[1] for _, t in tiles), max(_text_width(n) for n, _ in tiles))
    top = 22 if title else 0
    width = len(tiles) * (tw + pad) + pad
    canvas = np.full((top + head + th + pad + 30 + pad, width, 3), 255, np.uint8)
    if title:
        _text(canvas, title, (pad, 16), 0.45)
    for i, (name, t) in enumerate(tiles):
        x = pad + i * (tw + pad)
        _text(canvas, name, (x, top + 15))
        canvas[top + head:top + head + t.shape[0], x:x + t.shape[1]] = t
    if idx:
        bar = _colour_bar(min(width - 2 * pad, 360), vmax)
        x0 = width - pad - bar.shape[1]
        canvas[top + head + th + pad:top + head + th + pad + 30, x0:x0 + bar.shape[1]] = bar
    else:
        _text(canvas, 'no axis above its noise floor', (pad, top + head + th + pad + 20))
    return canvas


def bar_chart(summary, title='', width=560):
    """Bars of the per-axis means of ``summary`` (``AxisDiff.summary()``), zero in the middle, the noise floor
    shaded; bars below the floor grey. Returns an (H, W, 3) uint8 RGB array."""
    axes, floor = summary['axes'], summary['floor']
    label_w, value_w, row, pad = 100, 70, 22, 8
    top = 26 if title else 8
    lim = max(max(abs(v) for v in axes.values()), max(floor.values())) * 1.1
    lim = next((n for n in _NICE if lim <= n), lim)
    plot_w = width - label_w - value_w - 2 * pad
    x0 = pad + label_w
    zero = x0 + plot_w // 2
    canvas = np.full((top + row * len(AXES) + 28, width, 3), 255, np.uint8)
    cv2 = _cv2()
    if title:
        _text(canvas, title, (pad, 17), 0.45)
    for i, axis in enumerate(AXES):
        y = top + i * row
        v, f = axes[axis], floor[axis]
        fx = int(round(f / lim * plot_w / 2))
        cv2.rectangle(canvas, (zero - fx, y + 2), (zero + fx, y + row - 3), (228, 228, 228), -1)
        bx = int(round(v / lim * plot_w / 2))
        colour = (200, 200, 200) if abs(v) <= f else ((190, 40, 40) if v > 0 else (60, 75, 190))
        if bx:
            cv2.rectangle(canvas, (min(zero, zero + bx), y + 5), (max(zero, zero + bx), y + row - 6), colour, -1)
        _text(canvas, axis, (pad, y + 15))
        _text(canvas, _signed(v), (x0 + plot_w + 8, y + 15))
    cv2.line(canvas, (zero, top), (zero, top + row * len(AXES)), _INK, 1)
    y = top + row * len(AXES) + 18
    _text(canvas, f'-{lim:g}', (x0, y), 0.38)
    _text(canvas, f'+{lim:g}', (x0 + plot_w - _text_width(f'+{lim:g}', 0.38), y), 0.38)
    _text(canvas, 'grey band: noise floor', (zero - _text_width('grey band: noise floor', 0.38) // 2, y), 0.38)
    return canvas


def stack(images, pad=8):
    """Stack (H, W, 3) uint8 images vertically on white, left-aligned."""
    width = max(i.shape[1] for i in images)
    out = np.full((sum(i.shape[0] for i in images) + pad * (len(images) - 1), width, 3), 255, np.uint8)
    y = 0
    for i in images:
        out[y:y + i.shape[0], :i.shape[1]] = i
        y += i.shape[0] + pad
    return out


def write_png(path, rgb):
    """Write an (H, W, 3) uint8 RGB array as PNG atomically (a temporary file, then a rename)."""
    cv2 = _cv2()
    ok, buf = cv2.imencode('.png', np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError(f'cannot encode {path} as PNG')
    path = os.fspath(path)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'wb') as f:
        f.write(buf.tobytes())
    os.replace(tmp, path)
    return path


__all__ = ['AXES', 'AxisDiff', 'DIRECTIONS', 'FLOOR', 'ImageDiff', 'SCORE_FLOOR', 'bar_chart', 'describe_axis',
           'diff_figure', 'image_maps', 'nice_scale', 'relational_score', 'relational_scorer', 'sentence', 'stack',
           'write_png']
