"""Colour images of signed relational distortion maps (diverging colormap: sign = direction).

Blue = negative (less: blurrier, darker, lower contrast, less saturated, smoothed), white = 0,
red = positive (more: sharper/ringing, noisier, brighter, ..., compressed, quantised, aliased).
"""
import numpy as np

from iqa_plugin.labels.distortions import AXES

_NEG = np.array([0.23, 0.30, 0.75], np.float32)  # blue
_POS = np.array([0.75, 0.15, 0.15], np.float32)  # red
_MID = np.array([1.0, 1.0, 1.0], np.float32)


def map_to_rgb(m, vmax=1.0):
    """(H, W) signed map -> (H, W, 3) float32 RGB in [0, 1] on a blue-white-red scale clipped at +-vmax."""
    m = np.asarray(m, dtype=np.float32)
    t = np.clip(m / max(float(vmax), 1e-8), -1.0, 1.0)[..., None]
    pos = _MID + (_POS - _MID) * np.clip(t, 0, 1)
    neg = _MID + (_NEG - _MID) * np.clip(-t, 0, 1)
    return np.where(t >= 0, pos, neg).astype(np.float32)


def maps_to_rgb(maps, vmax=1.0):
    """(K, H, W) maps -> (K, H, W, 3) float32 RGB tiles, one per axis."""
    return np.stack([map_to_rgb(m, vmax) for m in np.asarray(maps)])


def maps_grid(maps, vmax=1.0, pad=2):
    """(K, H, W) maps -> one (H, K*(W+pad)-pad, 3) float32 RGB strip in the order of ``AXES``."""
    tiles = maps_to_rgb(maps, vmax)
    k, h, w, _ = tiles.shape
    out = np.ones((h, k * (w + pad) - pad, 3), np.float32)
    for i in range(k):
        out[:, i * (w + pad):i * (w + pad) + w] = tiles[i]
    return out


def dominant_axes(maps, top=3, min_level=0.02):
    """[(axis, signed mean, mean |value|), ...] of the strongest axes of (K, H, W) maps, strongest first."""
    maps = np.asarray(maps, dtype=np.float32)
    mag = np.abs(maps).mean(axis=(1, 2))
    mean = maps.mean(axis=(1, 2))
    order = np.argsort(-mag)
    return [(AXES[i], float(mean[i]), float(mag[i])) for i in order[:top] if mag[i] >= min_level]
