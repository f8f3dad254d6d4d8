"""The engine: axes and levels, single deterministic operations (``apply``) and seeded random chains
(``DistortionEngine``: plans, rendering, ordinal tiers), with numpy <-> torch conversion.

Conventions are in the package docstring (``iqa_plugin.labels.distortions``).
"""
import math
import warnings
from dataclasses import dataclass

import numpy as np

from iqa_plugin.labels.distortions.masks import MASK_KINDS, random_mask
from iqa_plugin.labels.distortions.ops import DEFAULT_TYPES, OPS, as_generator, get_spec

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


for _spec in OPS.values():  # the operation table must only name known axes
    assert all(a in AXIS_INDEX for a in _spec.axes), _spec.name


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
    spec = get_spec(op)
    severity = _check_severity(severity)
    h, w = img.shape[:2]
    if mask is not None:
        mask = np.asarray(mask, dtype=np.float32)
        if mask.shape != (h, w):
            raise ValueError(f'mask shape {mask.shape} does not match the image size {(h, w)}')
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError(f'mask values must lie in [0, 1], got [{mask.min():.3g}, {mask.max():.3g}]')
    out, _ = _run_op(img, spec, severity, mask, as_generator(rng))
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
            get_spec(t)
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
        return self.rng if rng is None else as_generator(rng)

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
            spec = get_spec(call.op)
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
