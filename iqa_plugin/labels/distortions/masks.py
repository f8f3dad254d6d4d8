"""Smooth random spatial masks: where a spatially varying operation is applied, and how strongly.

A mask is a float32 (H, W) field in [0, 1] (0 = untouched); the engine blends an operation in with it
and multiplies the operation's map by it.
"""
import math

import cv2
import numpy as np

from iqa_plugin.labels.distortions.ops import as_generator

MASK_KINDS = ('blobs', 'ellipse', 'gradient')
"""Kinds of ``random_mask``."""


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
    rng = as_generator(rng)
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

