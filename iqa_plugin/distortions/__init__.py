"""The distortion engine: graded, seeded image distortions with signed per-axis intensity maps.

Everything that trains a metric label-free (MILO on pseudo-MOS, the relational networks, ``nr-lite``)
draws its training pairs from here. See ``docs/distortions.md`` for the parameter of each operation
at each level, the axes and the measured speed.

Conventions
-----------
* Images are float32 numpy arrays, HWC, RGB, values in [0, 1]; every operation returns the same
  shape, dtype and range. ``sample_tensor`` wraps the engine for (3, H, W) torch tensors.
* ``severity`` is a float in [0, 1]: 0 leaves the image untouched, 1 is the strongest setting.
  The five graded levels 1..5 are severities 0.2, 0.4, 0.6, 0.8, 1.0 (``severity_of_level``).
* Each distorted image comes with ``maps``, a float32 (K, H, W) array, K = ``len(AXES)``: the signed
  intensity of the distortion on each axis relative to the reference. One operation with severity
  ``s`` adds ``sign * weight * s * mask`` on each of its axes (``OPS[name].axes``), where ``mask`` is
  1 everywhere for a global operation and a smooth (H, W) field in [0, 1] for a spatially varying one
  (0 where the image is untouched). Operations applied in sequence add on their axes, so values lie
  in [-max_ops, max_ops].
* Randomness comes only from ``numpy.random.Generator`` objects passed in (or the engine's own,
  seeded at construction): the global numpy / torch / random states are never read or changed.
"""
import functools
import math
import warnings
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ['AXES', 'AXIS_INDEX', 'AXIS_SIGNS', 'DEFAULT_TYPES', 'LEVELS', 'MASK_KINDS', 'OPS', 'DistortionEngine',
           'OpCall', 'OpSpec', 'apply', 'check_image', 'image_to_tensor', 'level_table', 'plan_from_info',
           'random_mask', 'severity_of_level', 'tensor_to_image']

# ----------------------------------------------------------------------------------------------
# Axes
# ----------------------------------------------------------------------------------------------
AXES = ('sharpness', 'noise', 'brightness', 'contrast', 'saturation', 'compression', 'quantisation', 'resampling')
"""Ordered distortion axes of the (K, H, W) maps; the sign is the direction relative to the reference."""

AXIS_SIGNS = {
    'sharpness': 'negative: blur (Gaussian, motion, bilinear resampling); positive: over-sharpening, ringing',
    'noise': 'positive: added noise (Gaussian, Poisson, colour); negative: denoised / smoothed texture',
    'brightness': 'negative: darker; positive: brighter',
    'contrast': 'negative: lower contrast; positive: higher contrast',
    'saturation': 'negative: less saturated (towards grey); positive: more saturated',
    'compression': 'positive only: JPEG, WebP, JPEG 2000 artefacts',
    'quantisation': 'positive only: bit-depth reduction / posterisation',
    'resampling': 'positive only: down-up resampling without anti-aliasing (aliasing, pixelation)',
}
AXIS_INDEX = {a: i for i, a in enumerate(AXES)}

LEVELS = (0.2, 0.4, 0.6, 0.8, 1.0)
"""Severities of the graded levels 1..5."""


def severity_of_level(level, n_levels=5):
    """Graded level ``1..n_levels`` -> severity ``level / n_levels`` in (0, 1]."""
    if int(level) != level or not 1 <= level <= n_levels:
        raise ValueError(f'level must be an integer in 1..{n_levels}, got {level}')
    return float(level) / n_levels


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # BT.601, RGB order


def _luma(img):
    """(H, W) float32 luma of an RGB image."""
    return img @ _LUMA


def _clip(img):
    return np.clip(img, 0.0, 1.0, out=img).astype(np.float32, copy=False)


def _to_uint8_bgr(img):
    return np.ascontiguousarray((img[:, :, ::-1] * 255.0 + 0.5).astype(np.uint8))


def _from_uint8_bgr(img):
    return np.ascontiguousarray(img[:, :, ::-1]).astype(np.float32) * (1.0 / 255.0)


def _gaussian_blur(img, sigma):
    return cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma), borderType=cv2.BORDER_REFLECT)


def _as_generator(rng):
    """``None`` -> a fixed generator (seed 0); an int or SeedSequence -> a new generator; a Generator as is."""
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer, np.random.SeedSequence, list, tuple)):
        return np.random.default_rng(rng)
    raise TypeError(f'rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}')


# ----------------------------------------------------------------------------------------------
# Operations: fn(img, s, rng) -> (out, params); img float32 HWC RGB in [0, 1], s in (0, 1]
# ----------------------------------------------------------------------------------------------
def _op_gaussian_blur(img, s, rng):
    sigma = 0.4 + 2.6 * s
    return _gaussian_blur(img, sigma), {'sigma': sigma}


@functools.lru_cache(maxsize=256)
def _motion_kernel(length, angle_deg):
    """Normalised line kernel of ``length`` px at ``angle_deg``, splatted bilinearly (sub-pixel exact)."""
    half = length / 2.0
    size = 2 * math.ceil(half) + 3
    c = size // 2
    k = np.zeros((size, size), np.float64)
    t = np.linspace(-half, half, max(2, int(length * 8)))
    a = math.radians(angle_deg)
    xs, ys = c + t * math.cos(a), c - t * math.sin(a)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(k, (y0 + dy, x0 + dx), w)
    return (k / k.sum()).astype(np.float32)


def _op_motion_blur(img, s, rng):
    length = 2.0 + 16.0 * s
    angle = float(rng.uniform(0.0, 180.0))
    # Angles are snapped to 1 degree and lengths to 0.25 px so the kernel cache stays small.
    kernel = _motion_kernel(round(length * 4) / 4, round(angle))
    return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT), {'length': length, 'angle': angle}


def _op_gaussian_noise(img, s, rng):
    sigma = 0.01 + 0.11 * s
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    return _clip(img + sigma * noise), {'sigma': sigma}


def _op_poisson_noise(img, s, rng):
    # Shot noise: counts ~ Poisson(peak * I), i.e. variance I / peak; drawn with the Gaussian
    # approximation N(I, I / peak), accurate for the peaks used here (>= 16 photons at white)
    # and much cheaper than numpy's exact Poisson sampler.
    peak = 10.0 ** (3.3 - 2.1 * s)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    return _clip(img + np.sqrt(img / peak) * noise), {'peak': peak}


# Chroma directions in RGB of unit changes of Cr and Cb (inverse of the BT.601 YCrCb transform):
# adding them leaves the luma unchanged.
_CR_RGB = np.array([1.403, -0.714, 0.0], dtype=np.float32)
_CB_RGB = np.array([0.0, -0.344, 1.773], dtype=np.float32)


def _op_colour_noise(img, s, rng):
    sigma = 0.02 + 0.13 * s
    h, w = img.shape[:2]
    n = rng.standard_normal((h, w, 2), dtype=np.float32)
    # Blotchy chroma noise: correlate over ~1 px and restore unit variance.
    blur_sigma = 1.0
    k1 = cv2.getGaussianKernel(2 * math.ceil(3 * blur_sigma) + 1, blur_sigma).ravel()
    n = cv2.GaussianBlur(n, (0, 0), blur_sigma, borderType=cv2.BORDER_REFLECT) / float((k1 ** 2).sum())
    out = img + sigma * (n[:, :, :1] * _CR_RGB + n[:, :, 1:] * _CB_RGB)
    return _clip(out), {'sigma': sigma}


def _op_denoise(img, s, rng):
    # Edge-preserving smoothing (what an over-eager denoiser does): removes fine texture / noise.
    sigma_color = 0.05 + 0.20 * s
    sigma_space = 1.0 + 2.0 * s
    out = cv2.bilateralFilter(img, -1, sigma_color, sigma_space, borderType=cv2.BORDER_REFLECT)
    return _clip(out), {'sigma_color': sigma_color, 'sigma_space': sigma_space}


def _codec(img, ext, params):
    ok, buf = cv2.imencode(ext, _to_uint8_bgr(img), params)
    if not ok:
        raise RuntimeError(f'OpenCV could not encode {ext}')
    return _from_uint8_bgr(cv2.imdecode(buf, cv2.IMREAD_COLOR))


def _op_jpeg(img, s, rng):
    q = round(90 - 85 * s)
    return _codec(img, '.jpg', [cv2.IMWRITE_JPEG_QUALITY, q]), {'quality': q}


def _op_webp(img, s, rng):
    q = round(90 - 85 * s)
    return _codec(img, '.webp', [cv2.IMWRITE_WEBP_QUALITY, q]), {'quality': q}


def _op_jpeg2000(img, s, rng):
    # Target rate x1000 (1000 = lossless); 200 -> 5 is roughly 4.8 -> 0.12 bits per pixel.
    rate = round(200 * (5 / 200) ** s)
    return _codec(img, '.jp2', [cv2.IMWRITE_JPEG2000_COMPRESSION_X1000, rate]), {'rate_x1000': rate}


def _down_up(img, s, interp):
    h, w = img.shape[:2]
    factor = 1.0 + 3.0 * s
    dh, dw = max(1, round(h / factor)), max(1, round(w / factor))
    small = cv2.resize(img, (dw, dh), interpolation=interp)
    return cv2.resize(small, (w, h), interpolation=interp), {'factor': factor}


def _op_resample_nearest(img, s, rng):
    # INTER_NEAREST_EXACT samples pixel centres (plain INTER_NEAREST shifts the image by up to a pixel).
    return _down_up(img, s, cv2.INTER_NEAREST_EXACT)


def _op_resample_bilinear(img, s, rng):
    # cv2's INTER_LINEAR does no anti-aliasing on the way down: aliasing, then blur on the way up.
    out, p = _down_up(img, s, cv2.INTER_LINEAR)
    return _clip(out), p


def _op_unsharp(img, s, rng):
    sigma = 1.0 + 1.0 * s
    amount = 0.5 + 3.0 * s
    out = img + amount * (img - _gaussian_blur(img, sigma))
    return _clip(out), {'sigma': sigma, 'amount': amount}


@functools.lru_cache(maxsize=64)
def _sinc_kernel(cutoff, radius):
    """1-D truncated (rectangular-window) sinc low-pass with cutoff ``cutoff`` cycles/px, normalised."""
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = 2 * cutoff * np.sinc(2 * cutoff * t)
    return (k / k.sum()).astype(np.float32)


def _op_ringing(img, s, rng):
    # High-frequency boost through an ideal (truncated-sinc, separable) low-pass: the boosted residual
    # carries the Gibbs ripples, so edges get oscillating halos.
    cutoff = round(0.25 - 0.12 * s, 3)  # cycles per pixel (Nyquist = 0.5)
    amount = 0.4 + 1.6 * s
    k = _sinc_kernel(cutoff, 10)
    low = cv2.sepFilter2D(img, -1, k, k, borderType=cv2.BORDER_REFLECT)
    return _clip(img + amount * (img - low)), {'cutoff': cutoff, 'amount': amount}


def _op_brighten(img, s, rng):
    g = 0.5 * s
    return _clip(img + (1.0 - img) * g), {'gain': g}


def _op_darken(img, s, rng):
    g = 0.6 * s
    return _clip(img * (1.0 - g)), {'gain': g}


def _scale_contrast(img, c):
    m = float(_luma(img).mean())
    return _clip((img - m) * c + m)


def _op_contrast_up(img, s, rng):
    c = 1.0 + 1.5 * s
    return _scale_contrast(img, c), {'factor': c}


def _op_contrast_down(img, s, rng):
    c = 1.0 - 0.75 * s
    return _scale_contrast(img, c), {'factor': c}


def _scale_saturation(img, c):
    y = _luma(img)[:, :, None]
    return _clip((img - y) * c + y)


def _op_saturate(img, s, rng):
    c = 1.0 + 2.0 * s
    return _scale_saturation(img, c), {'factor': c}


def _op_desaturate(img, s, rng):
    c = 1.0 - s
    return _scale_saturation(img, c), {'factor': c}


def _op_quantise(img, s, rng):
    levels = max(2, round(2.0 ** (8.0 - 6.5 * s)))
    out = np.round(img * (levels - 1)) / (levels - 1)
    return out.astype(np.float32), {'levels': levels}


@dataclass(frozen=True)
class OpSpec:
    """One distortion operation.

    Attributes:
        name: key in ``OPS``.
        fn: ``fn(img, severity, rng) -> (out, params)``.
        axes: axis name -> signed weight; the map gets ``weight * severity * mask`` on that axis.
            The first axis is the primary one (``DistortionEngine`` uses one operation per primary axis).
        stage: position in the canonical processing order (optics, sensor, ISP, resampling, coding).
        params: how the parameters depend on the severity ``s`` (documentation).
    """
    name: str
    fn: callable = field(repr=False)
    axes: dict
    stage: int
    params: str = ''

    @property
    def primary_axis(self):
        return next(iter(self.axes))


_OP_LIST = [
    OpSpec('gaussian_blur', _op_gaussian_blur, {'sharpness': -1.0}, 0, 'sigma = 0.4 + 2.6 s px'),
    OpSpec('motion_blur', _op_motion_blur, {'sharpness': -1.0}, 0,
           'line kernel, length = 2 + 16 s px, random angle'),
    OpSpec('gaussian_noise', _op_gaussian_noise, {'noise': 1.0}, 1, 'sigma = 0.01 + 0.11 s, per channel'),
    OpSpec('poisson_noise', _op_poisson_noise, {'noise': 1.0}, 1,
           'shot noise, variance I / peak, peak = 10^(3.3 - 2.1 s) photons at white'),
    OpSpec('colour_noise', _op_colour_noise, {'noise': 1.0}, 1,
           'chroma-only (Cr, Cb) noise, sigma = 0.02 + 0.13 s, correlated over 1 px'),
    OpSpec('denoise', _op_denoise, {'noise': -1.0}, 2,
           'bilateral filter, sigma_color = 0.05 + 0.2 s, sigma_space = 1 + 2 s px'),
    OpSpec('unsharp', _op_unsharp, {'sharpness': 1.0}, 3,
           'unsharp mask, sigma = 1 + s px, amount = 0.5 + 3 s'),
    OpSpec('ringing', _op_ringing, {'sharpness': 1.0}, 3,
           'boost of the residual of a truncated-sinc low-pass (cutoff 0.25 - 0.12 s cycles/px), '
           'amount = 0.4 + 1.6 s'),
    OpSpec('brighten', _op_brighten, {'brightness': 1.0}, 4, 'I + (1 - I) g, g = 0.5 s'),
    OpSpec('darken', _op_darken, {'brightness': -1.0}, 4, 'I (1 - g), g = 0.6 s'),
    OpSpec('contrast_up', _op_contrast_up, {'contrast': 1.0}, 4, 'around mean luma, factor = 1 + 1.5 s'),
    OpSpec('contrast_down', _op_contrast_down, {'contrast': -1.0}, 4, 'around mean luma, factor = 1 - 0.75 s'),
    OpSpec('saturate', _op_saturate, {'saturation': 1.0}, 4, 'chroma around luma, factor = 1 + 2 s'),
    OpSpec('desaturate', _op_desaturate, {'saturation': -1.0}, 4, 'chroma around luma, factor = 1 - s'),
    OpSpec('resample_nearest', _op_resample_nearest, {'resampling': 1.0}, 5,
           'down by 1 + 3 s then up, nearest (pixel-centre exact) both ways'),
    OpSpec('resample_bilinear', _op_resample_bilinear, {'resampling': 1.0, 'sharpness': -0.5}, 5,
           'down by 1 + 3 s then up, bilinear both ways (no anti-aliasing)'),
    OpSpec('quantise', _op_quantise, {'quantisation': 1.0}, 6, 'levels per channel = round(2^(8 - 6.5 s)) (>= 2)'),
    OpSpec('jpeg', _op_jpeg, {'compression': 1.0}, 7, 'quality = round(90 - 85 s)'),
    OpSpec('webp', _op_webp, {'compression': 1.0}, 7, 'quality = round(90 - 85 s)'),
    OpSpec('jpeg2000', _op_jpeg2000, {'compression': 1.0}, 7,
           'rate x1000 = round(200 (5/200)^s), OpenJPEG; ~12x slower than JPEG'),
]
OPS = {op.name: op for op in _OP_LIST}
"""All operations by name."""

DEFAULT_TYPES = tuple(name for name in OPS if name != 'jpeg2000')
"""Operations ``DistortionEngine`` samples from by default (JPEG 2000 is slow: opt in with ``types``)."""

MASK_KINDS = ('blobs', 'ellipse', 'gradient')

for _op in _OP_LIST:  # the table must only name known axes
    assert all(a in AXIS_INDEX for a in _op.axes), _op.name


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------
def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def random_mask(h, w, rng, kind=None):
    """A smooth random (H, W) float32 mask in [0, 1] covering roughly 20-80 % of the image.

    Args:
        h, w (int): size.
        rng (numpy.random.Generator): source of randomness.
        kind (str | None): 'blobs' (thresholded smooth noise field), 'ellipse' (soft-edged ellipse),
            'gradient' (soft linear ramp); None picks one at random.
    """
    rng = _as_generator(rng)
    if kind is None:
        kind = MASK_KINDS[int(rng.integers(len(MASK_KINDS)))]
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind '{kind}'; known: {', '.join(MASK_KINDS)}")
    if kind == 'blobs':
        g = int(rng.integers(2, 6))
        field_ = rng.standard_normal((g + 1, g + 1)).astype(np.float32)
        f = cv2.resize(field_, (w, h), interpolation=cv2.INTER_CUBIC)
        t = np.quantile(f, rng.uniform(0.2, 0.8))
        soft = float(f.std()) * rng.uniform(0.2, 0.6) + 1e-6
        m = _smoothstep((f - t) / soft + 0.5)
    elif kind == 'ellipse':
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
        ay, ax = rng.uniform(0.25, 0.55) * h, rng.uniform(0.25, 0.55) * w
        th = rng.uniform(0, math.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * math.cos(th) + dy * math.sin(th)) / ax
        v = (-dx * math.sin(th) + dy * math.cos(th)) / ay
        r = np.sqrt(u * u + v * v)
        soft = rng.uniform(0.2, 0.6)
        m = _smoothstep((1.0 - r) / soft + 0.5)
    else:  # gradient
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        th = rng.uniform(0, 2 * math.pi)
        p = ((xx / max(w - 1, 1) - 0.5) * math.cos(th) + (yy / max(h - 1, 1) - 0.5) * math.sin(th))
        p = (p - p.min()) / max(float(p.max() - p.min()), 1e-6)
        centre, width = rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.6)
        m = _smoothstep((p - centre) / width + 0.5)
    return m.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Single operation
# ----------------------------------------------------------------------------------------------
def check_image(img, name='img', min_size=16):
    """Validate a float (H, W, 3) RGB image in [0, 1]; returns it as contiguous float32.

    The numpy counterpart of ``utils.image.prepare_image`` with the same rules and messages:
    (H, W) or (H, W, 1) grayscale is replicated, other channel counts, sides below ``min_size``,
    integer dtypes and NaN/Inf raise; values outside [0, 1] warn and are clamped. (The checks run
    in numpy: through torch tensors they cost far more per image, which matters inside a DataLoader.)
    """
    if not isinstance(img, np.ndarray):
        raise TypeError(f'{name}: expected a numpy HWC float array, got {type(img).__name__}')
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f'{name}: expected an (H, W, 3) image, got shape {tuple(img.shape)}')
    if not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f'{name}: expected a float image in [0, 1], got dtype {img.dtype}')
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] != 3:
        raise ValueError(f'{name}: expected 3 channels, got {img.shape[2]} (shape {tuple(img.shape)})')
    h, w = img.shape[:2]
    if min(h, w) < min_size:
        raise ValueError(f'{name}: image is {h}x{w}, smaller than the minimum side of {min_size} px')
    img = np.ascontiguousarray(img, dtype=np.float32)
    lo, hi = float(img.min()), float(img.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f'{name}: contains NaN or Inf values')
    if lo < 0.0 or hi > 1.0:
        warnings.warn(f'{name}: values outside [0, 1] (got [{lo:.4g}, {hi:.4g}]); clamping', stacklevel=3)
        img = np.clip(img, 0.0, 1.0)
    return img


def _op_maps(spec, severity, mask, h, w, out=None):
    maps = np.zeros((len(AXES), h, w), np.float32) if out is None else out
    for axis, weight in spec.axes.items():
        v = np.float32(weight * severity)
        if mask is None:
            maps[AXIS_INDEX[axis]] += v
        else:
            maps[AXIS_INDEX[axis]] += v * mask
    return maps


def _run_op(img, spec, severity, mask, rng):
    """Apply ``spec`` at ``severity`` through ``mask`` (None = everywhere); returns (out, params)."""
    if severity == 0:
        return img.copy(), {}
    out, params = spec.fn(img, float(severity), rng)
    if mask is not None:
        out = img + mask[:, :, None] * (out - img)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False), params


def _get_spec(op):
    if op not in OPS:
        raise ValueError(f"unknown distortion '{op}'; known: {', '.join(OPS)}")
    return OPS[op]


def _check_severity(severity):
    if not (isinstance(severity, (int, float, np.floating, np.integer)) and 0.0 <= float(severity) <= 1.0):
        raise ValueError(f'severity must be a number in [0, 1], got {severity!r}')
    return float(severity)


def apply(img, op, severity, mask=None, rng=None):
    """Apply one operation deterministically.

    Args:
        img (ndarray): (H, W, 3) float32 RGB in [0, 1].
        op (str): a key of ``OPS``.
        severity (float): in [0, 1]; 0 returns an unchanged copy.
        mask (ndarray | None): (H, W) float in [0, 1]; the operation is blended in with it.
        rng (Generator | int | None): for the operation's random parts (noise, motion angle);
            None means seed 0, so the same call gives the same output.

    Returns:
        (dist, maps): dist (H, W, 3) float32 in [0, 1]; maps (K, H, W) float32, signed severity on the
        operation's axes (times the mask).
    """
    img = check_image(img)
    spec = _get_spec(op)
    severity = _check_severity(severity)
    h, w = img.shape[:2]
    if mask is not None:
        mask = np.asarray(mask, dtype=np.float32)
        if mask.shape != (h, w):
            raise ValueError(f'mask shape {mask.shape} does not match the image size {(h, w)}')
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError(f'mask values must lie in [0, 1], got [{mask.min():.3g}, {mask.max():.3g}]')
    out, _ = _run_op(img, spec, severity, mask, _as_generator(rng))
    return out, _op_maps(spec, severity, mask, h, w)


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------
@dataclass
class OpCall:
    """One planned operation: replaying it with the same fields gives the same output.

    ``severity`` is the planned severity; ``render`` multiplies it by a scale (tiers).
    """
    op: str
    severity: float
    seed: int
    mask_kind: str = None  # None: global
    mask_seed: int = 0

    def as_dict(self, severity=None, params=None):
        d = {'op': self.op, 'severity': float(self.severity if severity is None else severity),
             'spatial': self.mask_kind is not None, 'mask': self.mask_kind, 'seed': int(self.seed),
             'mask_seed': int(self.mask_seed)}
        if params:
            d['params'] = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in params.items()}
        return d

    @classmethod
    def from_dict(cls, d):
        """Inverse of ``as_dict``: an entry of ``info['ops']`` -> ``OpCall`` (replays that operation)."""
        return cls(d['op'], float(d['severity']), int(d['seed']), d.get('mask'), int(d.get('mask_seed', 0)))


def plan_from_info(info):
    """The plan that reproduces a returned ``info``: ``engine.render(img, plan_from_info(info))``."""
    return [OpCall.from_dict(d) for d in info['ops']]


class DistortionEngine:
    """Random chains of graded distortions with signed per-axis maps.

    Args:
        types (sequence[str] | None): operations to sample from (keys of ``OPS``); None =
            ``DEFAULT_TYPES``.
        max_ops (int): a sample applies 1..max_ops operations (uniform), at most one per primary axis
            and never two with opposite signs on a shared axis (so maps do not cancel).
        spatial_prob (float): probability that an operation is applied through a random smooth mask.
        severity_range (tuple): severities are drawn uniformly from this range.
        order (str): 'canonical' (optics -> noise -> ISP -> tone -> resampling -> quantisation ->
            coding, ``OpSpec.stage``) or 'random'.
        seed (int | None): seed of the engine's own generator, used when no ``rng`` is passed.
    """

    def __init__(self, types=None, max_ops=3, spatial_prob=0.5, severity_range=(0.1, 1.0), order='canonical',
                 seed=None):
        types = tuple(DEFAULT_TYPES if types is None else types)
        if not types:
            raise ValueError('types must name at least one distortion')
        for t in types:
            _get_spec(t)
        if int(max_ops) < 1:
            raise ValueError(f'max_ops must be >= 1, got {max_ops}')
        if not 0.0 <= float(spatial_prob) <= 1.0:
            raise ValueError(f'spatial_prob must lie in [0, 1], got {spatial_prob}')
        lo, hi = (float(v) for v in severity_range)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f'severity_range must satisfy 0 <= low <= high <= 1, got {severity_range}')
        if order not in ('canonical', 'random'):
            raise ValueError(f"order must be 'canonical' or 'random', got '{order}'")
        self.types = types
        self.max_ops = int(max_ops)
        self.spatial_prob = float(spatial_prob)
        self.severity_range = (lo, hi)
        self.order = order
        self.rng = np.random.default_rng(seed)

    num_axes = len(AXES)

    def _rng(self, rng):
        return self.rng if rng is None else _as_generator(rng)

    # -- planning --------------------------------------------------------------------------------
    def sample_plan(self, rng=None, n_ops=None, severity=None):
        """Draw a list of ``OpCall`` (types, severities, seeds, masks) without touching any image.

        Args:
            rng (Generator | int | None): None uses the engine's generator.
            n_ops (int | None): number of operations; None draws 1..max_ops.
            severity (float | None): fixed severity for every operation; None draws from
                ``severity_range``.
        """
        rng = self._rng(rng)
        n = int(rng.integers(1, self.max_ops + 1)) if n_ops is None else int(n_ops)
        used = {}  # axis -> sign
        plan = []
        for _ in range(n):
            allowed = [t for t in self.types
                       if OPS[t].primary_axis not in used
                       and all(used.get(a, np.sign(wt)) == np.sign(wt) for a, wt in OPS[t].axes.items())]
            if not allowed:
                break
            spec = OPS[allowed[int(rng.integers(len(allowed)))]]
            for a, wt in spec.axes.items():
                used[a] = np.sign(wt)
            s = float(rng.uniform(*self.severity_range)) if severity is None else _check_severity(severity)
            spatial = rng.random() < self.spatial_prob
            mask_kind = MASK_KINDS[int(rng.integers(len(MASK_KINDS)))] if spatial else None
            plan.append(OpCall(spec.name, s, int(rng.integers(2 ** 62)), mask_kind, int(rng.integers(2 ** 62))))
        if self.order == 'canonical':
            plan.sort(key=lambda c: OPS[c.op].stage)
        return plan

    def render(self, img, plan, scale=1.0, check=True):
        """Apply a plan to ``img``; each operation runs at ``severity * scale`` (clipped to [0, 1]).

        Returns (dist, maps, info) as ``sample``. Rendering the same plan twice gives identical output.
        """
        if check:
            img = check_image(img)
        h, w = img.shape[:2]
        maps = np.zeros((len(AXES), h, w), np.float32)
        out = img
        ops = []
        for call in plan:
            spec = _get_spec(call.op)
            s = min(max(float(call.severity) * float(scale), 0.0), 1.0)
            mask = None
            if call.mask_kind is not None:
                mask = random_mask(h, w, np.random.default_rng(call.mask_seed), call.mask_kind)
            out, params = _run_op(out, spec, s, mask, np.random.default_rng(call.seed))
            _op_maps(spec, s, mask, h, w, out=maps)
            ops.append(call.as_dict(s, params))
        if out is img:
            out = img.copy()
        return out, maps, {'ops': ops}

    # -- public sampling -------------------------------------------------------------------------
    def sample(self, img, rng=None, severity=None):
        """Distort ``img`` with a random chain of operations.

        Args:
            img (ndarray): (H, W, 3) float32 RGB in [0, 1], H, W >= 16.
            rng (Generator | int | None): None uses the engine's generator (seeded at construction).
            severity (float | None): fixed severity for all operations; None draws each from
                ``severity_range``.

        Returns:
            dist (ndarray): (H, W, 3) float32 in [0, 1].
            maps (ndarray): (K, H, W) float32 signed intensities on ``AXES``.
            info (dict): {'ops': [{'op', 'severity', 'spatial', 'mask', 'seed', 'mask_seed', 'params'}, ...]};
                ``render(img, plan_from_info(info))`` reproduces ``dist`` and ``maps`` exactly.
        """
        img = check_image(img)
        return self.render(img, self.sample_plan(rng, severity=severity), check=False)

    def apply(self, img, op, severity, mask=None, rng=None):
        """One deterministic operation: see the module function ``apply``."""
        return apply(img, op, severity, mask=mask, rng=rng)

    def make_tiers(self, img, n_tiers, rng=None, n_ops=None):
        """Ordinally ranked versions of ``img``: the same chain of operations at increasing severity.

        One plan (mixed types, masks, noise seeds) is drawn; each operation also gets a fixed weight in
        [0.5, 1]. Tier ``t`` (0 = mildest) runs every operation at ``weight * b_t`` with
        ``b_t = (t + u_t) / n_tiers``, ``u_t ~ U(0.25, 0.75)``, so severities strictly increase with ``t``.

        Returns:
            list of ``n_tiers`` (dist, maps, info) tuples, ``info['tier'] = t``.
        """
        if int(n_tiers) < 1:
            raise ValueError(f'n_tiers must be >= 1, got {n_tiers}')
        n_tiers = int(n_tiers)
        img = check_image(img)
        rng = self._rng(rng)
        plan = self.sample_plan(rng, n_ops=n_ops, severity=1.0)
        for call in plan:
            call.severity = float(rng.uniform(0.5, 1.0))
        base = (np.arange(n_tiers) + rng.uniform(0.25, 0.75, size=n_tiers)) / n_tiers
        tiers = []
        for t in range(n_tiers):
            dist, maps, info = self.render(img, plan, scale=float(base[t]), check=False)
            info['tier'] = t
            info['base_severity'] = float(base[t])
            tiers.append((dist, maps, info))
        return tiers

    def sample_tensor(self, x, rng=None, severity=None):
        """``sample`` for a (3, H, W) float tensor in [0, 1]: returns (dist (3,H,W), maps (K,H,W), info)."""
        dist, maps, info = self.sample(tensor_to_image(x), rng=rng, severity=severity)
        return image_to_tensor(dist, like=x), _maps_to_tensor(maps, like=x), info

    def make_tiers_tensor(self, x, n_tiers, rng=None, n_ops=None):
        """``make_tiers`` for a (3, H, W) tensor: returns (dist (T,3,H,W), maps (T,K,H,W), infos)."""
        import torch

        tiers = self.make_tiers(tensor_to_image(x), n_tiers, rng=rng, n_ops=n_ops)
        dist = torch.stack([image_to_tensor(d, like=x) for d, _, _ in tiers])
        maps = torch.stack([_maps_to_tensor(m, like=x) for _, m, _ in tiers])
        return dist, maps, [i for _, _, i in tiers]


# ----------------------------------------------------------------------------------------------
# torch conversion
# ----------------------------------------------------------------------------------------------
def tensor_to_image(x):
    """(3, H, W) or (1, 3, H, W) float tensor in [0, 1] -> (H, W, 3) float32 numpy (validated)."""
    import torch

    if not torch.is_tensor(x):
        raise TypeError(f'expected a torch.Tensor, got {type(x).__name__}')
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f'expected one image (3, H, W), got a batch of shape {tuple(x.shape)}')
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f'img: expected shape (3, H, W), got {tuple(x.shape)}')
    if not x.is_floating_point():
        raise TypeError(f'img: expected a float tensor in [0, 1], got dtype {x.dtype}')
    return check_image(x.detach().to('cpu', torch.float32).permute(1, 2, 0).numpy())


def image_to_tensor(img, like=None):
    """(H, W, 3) numpy image -> (3, H, W) float32 tensor (on ``like``'s device when given)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    return t.to(like.device) if like is not None else t


def _maps_to_tensor(maps, like=None):
    import torch

    t = torch.from_numpy(maps)
    return t.to(like.device) if like is not None else t


# ----------------------------------------------------------------------------------------------
# Speed measurement: python -m iqa_plugin.distortions [--size 256] [--n 100] (see __main__.py)
# ----------------------------------------------------------------------------------------------
def _smooth_test_image(size, seed=0):
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

    p = argparse.ArgumentParser(prog='python -m iqa_plugin.distortions',
                                description='measure distortion-engine throughput on one core')
    p.add_argument('--size', type=int, default=256)
    p.add_argument('--n', type=int, default=100, help='images per measurement')
    p.add_argument('--threads', type=int, default=1, help='cv2 threads (1 = per core)')
    p.add_argument('--table', action='store_true',
                   help='print the markdown table of parameters and PSNR per level instead of timing')
    args = p.parse_args(argv)
    cv2.setNumThreads(args.threads)
    img = _smooth_test_image(args.size)
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
