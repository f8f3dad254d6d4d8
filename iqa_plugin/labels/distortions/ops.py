"""The distortion operations: ``fn(img, severity, rng) -> (out, params)`` and their table ``OPS``.

Each operation takes a float32 (H, W, 3) RGB image in [0, 1], a severity ``s`` in (0, 1] and a
``numpy.random.Generator`` for its random parts (noise, motion angle), and returns an image of the same
shape, dtype and range plus a dict of the parameters it used. ``OpSpec`` records which signed axes of
the maps an operation moves (names from ``engine.AXES``) and its stage in the canonical order. Adding an
operation = one function here and one ``OpSpec`` line in ``_OP_LIST``; see ``docs/distortions.md``.
"""
import functools
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

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



def as_generator(rng):
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


def get_spec(op):
    if op not in OPS:
        raise ValueError(f"unknown distortion '{op}'; known: {', '.join(OPS)}")
    return OPS[op]


