"""MILO as a training loss, in image space (``MILOLoss``) and in VAE latent space (``MILOLatentLoss``).

The loss is ``loss_weight * raw error`` of MILO (see ``iqa_plugin.archs.milo_arch``): the mean over
channels and pixels of ``mask * |target - pred|``, where ``mask`` (B, 1, H, W) in (0, 4) is MILO's
spatial masking map (high where a difference is visible, low where the content masks it).

Curriculum spatial masking (optional, ``curriculum={...}``)
-----------------------------------------------------------
With training progress ``p`` in [0, 1] (the SR model calls ``loss.set_progress(p)``) a mixing weight
``t(p)`` in [0, 1] moves the per-pixel emphasis from the regions MILO finds least visible (low mask) to
the most visibly distorted ones (high mask). Exactly:

* ``u = clip((p - start) / (end - start), 0, 1)`` (``u = 1[p >= start]`` when ``end <= start``);
* ``t = u`` (linear), ``t = (1 - cos(pi * u)) / 2`` (cosine), ``t = floor(u * steps) / steps`` (step);
* per image, the detached mask is normalised to ``m = (mask - min) / (max - min)`` in [0, 1]
  (``m = 0.5`` everywhere for a flat mask);
* ``w_raw = min_weight + (1 - min_weight) * ((1 - t) * (1 - m) + t * m)`` and ``w = w_raw / mean(w_raw)``
  (mean over the image's pixels, so the loss keeps the scale of the raw error);
* loss per image ``= mean_{c, pixels}(w * mask * |target - pred|)``.

At ``t = 0`` the weight is largest where the mask is lowest, at ``t = 1`` where it is highest, and at
``t = 0.5`` ``w = 1`` everywhere (the plain MILO loss). ``curriculum_t`` returns t(p) for plotting.
Options: ``schedule`` ('linear' | 'cosine' | 'step', default 'cosine'), ``start`` (0.0), ``end`` (1.0),
``steps`` (4, step schedule only), ``min_weight`` (0.1, keeps every pixel's weight above
``min_weight / mean(w_raw)``).

Speed (``detach_mask``, default True): the mask is computed under ``torch.no_grad()`` so the gradient
flows only through ``|target - pred|`` (``d loss / d pred = -mask * sign(target - pred) / N``). The loss
value is unchanged; the backward pass through the mask network is skipped, which also keeps the
generator from lowering the loss by manipulating MILO's masking estimate. ``detach_mask=False`` gives
the full gradient. ``channels_last='auto'`` (default) runs the detached mask network in channels-last
format on CPU. Measured figures: docs/milo.md.
"""
import math
import threading

import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from iqa_plugin.losses.frozen_iqa import FrozenIQALoss
from iqa_plugin.scoring import freeze

_SCHEDULES = ('linear', 'cosine', 'step')
_CURRICULUM_KEYS = ('schedule', 'start', 'end', 'steps', 'min_weight')


# ---------------------------------------------------------------------- curriculum
def check_curriculum(curriculum):
    """Validate a curriculum dict and fill its defaults; None stays None."""
    if curriculum is None:
        return None
    if not isinstance(curriculum, dict):
        raise TypeError(f'curriculum must be a dict or None, got {type(curriculum).__name__}')
    unknown = set(curriculum) - set(_CURRICULUM_KEYS)
    if unknown:
        raise ValueError(f"curriculum: unknown key(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(_CURRICULUM_KEYS)}")
    cfg = {'schedule': 'cosine', 'start': 0.0, 'end': 1.0, 'steps': 4, 'min_weight': 0.1, **curriculum}
    if cfg['schedule'] not in _SCHEDULES:
        raise ValueError(f"curriculum schedule must be one of {', '.join(_SCHEDULES)}, got {cfg['schedule']!r}")
    cfg['start'], cfg['end'] = float(cfg['start']), float(cfg['end'])
    cfg['min_weight'] = float(cfg['min_weight'])
    cfg['steps'] = int(cfg['steps'])
    if not (0.0 <= cfg['start'] <= 1.0 and 0.0 <= cfg['end'] <= 1.0):
        raise ValueError(f"curriculum start and end must lie in [0, 1], got {cfg['start']} and {cfg['end']}")
    if not 0.0 <= cfg['min_weight'] < 1.0:
        raise ValueError(f"curriculum min_weight must lie in [0, 1), got {cfg['min_weight']}")
    if cfg['steps'] < 1:
        raise ValueError(f"curriculum steps must be >= 1, got {cfg['steps']}")
    return cfg


def curriculum_t(p, schedule='cosine', start=0.0, end=1.0, steps=4, **_unused):
    """Mixing weight t(p) in [0, 1] for training progress ``p`` in [0, 1] (see the module docstring).

    Extra keys of a curriculum dict (``min_weight``) are accepted and ignored, so
    ``curriculum_t(p, **cfg)`` works.
    """
    p = min(max(float(p), 0.0), 1.0)
    if end <= start:
        u = 1.0 if p >= start else 0.0
    else:
        u = min(max((p - start) / (end - start), 0.0), 1.0)
    if schedule == 'linear':
        return u
    if schedule == 'cosine':
        return 0.5 * (1.0 - math.cos(math.pi * u))
    if schedule == 'step':
        return math.floor(u * steps) / steps
    raise ValueError(f"curriculum schedule must be one of {', '.join(_SCHEDULES)}, got {schedule!r}")


def curriculum_weights(mask, t, min_weight=0.1):
    """Per-pixel weights (B, 1, H, W), mean 1 per image, from a mask (B, 1, H, W) and t in [0, 1]."""
    mask = mask.detach()
    lo = mask.amin(dim=(1, 2, 3), keepdim=True)
    hi = mask.amax(dim=(1, 2, 3), keepdim=True)
    span = hi - lo
    flat = span <= 1e-12
    m = torch.where(flat, torch.full_like(mask, 0.5), (mask - lo) / torch.where(flat, torch.ones_like(span), span))
    w = min_weight + (1.0 - min_weight) * ((1.0 - t) * (1.0 - m) + t * m)
    return w / w.mean(dim=(1, 2, 3), keepdim=True)


# ---------------------------------------------------------------------- losses
class _MILOLossBase(FrozenIQALoss):
    """Shared machinery of the image and latent MILO losses: the MILO network, curriculum, options."""

    in_channels = 3
    default_weights = 'milo'

    def __init__(self, loss_weight=1.0, reduction='mean', weights=None, weights_path=None, curriculum=None,
                 detach_mask=True, out_of_range='clamp', channels_last='auto'):
        if channels_last not in ('auto', True, False):
            raise ValueError(f"channels_last must be 'auto', true or false, got {channels_last!r}")
        self.curriculum = check_curriculum(curriculum)
        self.weights = weights or self.default_weights
        self.weights_path = weights_path
        self.detach_mask = bool(detach_mask)
        self.channels_last = channels_last
        super().__init__(*self.metric_of(weights=self.weights, weights_path=weights_path), loss_weight=loss_weight,
                         reduction=reduction, out_of_range=out_of_range)

    @classmethod
    def metric_of(cls, weights=None, weights_path=None, **_):
        return 'milo', {'weights': weights or cls.default_weights, 'weights_path': weights_path,
                        'in_channels': cls.in_channels}

    def milo(self, device):
        """The shared frozen MILO network (``MILOScorer.net``) on ``device``."""
        return self.frozen_scorer(device).net

    def curriculum_t(self):
        """Current t(p), or None without a curriculum."""
        return None if self.curriculum is None else curriculum_t(self.progress, **self.curriculum)

    def weighted_error(self, dist, ref):
        """Per-image (B,) weighted MILO error for validated inputs (before ``loss_weight``)."""
        net = self.milo(dist.device)
        ref = ref.detach()
        cl = self.channels_last
        if cl == 'auto':  # measured faster on CPU (docs/milo.md); CUDA keeps the default layout
            cl = self.detach_mask and dist.device.type == 'cpu'
        if self.detach_mask:
            with torch.no_grad():
                mask = net.mask(dist, ref, channels_last=cl)
        else:
            mask = net.mask(dist, ref, channels_last=cl)
        err = mask * (ref - dist).abs()
        if self.curriculum is not None:
            err = err * curriculum_weights(mask, self.curriculum_t(), self.curriculum['min_weight'])
        return err.mean(dim=(1, 2, 3))

    def extra_repr(self):
        return (f'weights={self.weights!r}, loss_weight={self.loss_weight}, reduction={self.reduction!r}, '
                f'detach_mask={self.detach_mask}, curriculum={self.curriculum}')


@LOSS_REGISTRY.register()
class MILOLoss(_MILOLossBase):
    """MILO loss on RGB images.

    Args:
        loss_weight (float): multiplier of the loss.
        reduction (str): 'mean' (over the batch), 'sum' or 'none' (per image, shape (B,)).
        weights (str): weights-manager entry ('milo', or 'milo-pseudomos' for this project's model).
        weights_path (str | None): explicit weights file.
        curriculum (dict | None): curriculum spatial masking, e.g. ``{schedule: cosine, start: 0.0, end: 0.8}``
            (module docstring); None for the plain loss.
        detach_mask (bool): gradient only through ``|target - pred|`` (default; same loss value, faster).
        out_of_range (str): inputs outside [0, 1]: 'clamp' (straight-through; warned on the first call),
            'error' or 'ignore' (``FrozenIQALoss``).
        channels_last (bool | str): run the mask network in channels-last memory format; 'auto' (default):
            only for the detached mask on CPU, where it measured faster (docs/milo.md). Same values up
            to float rounding.

    ``forward(pred, target)``: (B, 3, H, W) RGB in [0, 1], H, W >= 16 -> scalar (or (B,) with 'none').
    """
    in_channels = 3
    default_weights = 'milo'

    def __init__(self, loss_weight=1.0, reduction='mean', weights='milo', weights_path=None, curriculum=None,
                 detach_mask=True, out_of_range='clamp', channels_last='auto'):
        super().__init__(loss_weight, reduction, weights, weights_path, curriculum, detach_mask, out_of_range,
                         channels_last)

    def per_image(self, pred, target):
        dist, ref = self.prepare_pair(pred, target, channels=3, min_size=16)
        return self.weighted_error(dist.float(), ref.float())


@LOSS_REGISTRY.register()
class MILOLatentLoss(_MILOLossBase):
    """MILO loss in the 4-channel latent space of a Stable Diffusion VAE (official ``milo-latent`` weights).

    Args (besides those of ``MILOLoss``; ``weights`` defaults to 'milo-latent'):
        encoder: how inputs become latents.
            * None or 'precomputed': ``pred`` and ``target`` are already latents (B, 4, h, w), scaled as in
              diffusers pipelines (VAE latent times its ``scaling_factor``); h, w >= 16.
            * a dict ``{type: diffusers, path: <local folder or hub id>, subfolder: vae}`` (optional keys
              ``sample`` (False: use the posterior mean), ``dtype`` ('float32')): diffusers'
              ``AutoencoderKL`` is loaded (lazily imported; ``pip install diffusers``), frozen and cached
              per process. ``pred`` and ``target`` are then RGB images in [0, 1], mapped to [-1, 1] for the
              VAE; the latents are ``(z - shift_factor) * scaling_factor`` with both factors from the VAE's
              config (shift 0 when absent).
            * an object with ``encode(x)`` (the injection hook, e.g. a small test encoder; also
              ``set_encoder(obj)``): called on [-1, 1] images; ``encode`` may return a tensor, an object
              with ``latent_dist`` (diffusers) or a distribution with ``mode()``/``sample()``. Its scaling
              factor comes from ``scaling_factor=``, ``obj.config.scaling_factor`` or ``obj.scaling_factor``.
        scaling_factor (float | None): overrides the VAE's scaling factor.

    ``forward(pred, target)`` -> scalar (or (B,) with reduction 'none'). Gradients flow through the
    encoder to ``pred``; the target is encoded without gradient.
    """
    in_channels = 4
    default_weights = 'milo-latent'

    def __init__(self, loss_weight=1.0, reduction='mean', weights='milo-latent', weights_path=None, curriculum=None,
                 detach_mask=True, out_of_range='clamp', channels_last='auto', encoder=None, scaling_factor=None):
        super().__init__(loss_weight, reduction, weights, weights_path, curriculum, detach_mask, out_of_range,
                         channels_last)
        self.scaling_factor = None if scaling_factor is None else float(scaling_factor)
        self.sample_latent = False
        self.encoder_spec = None
        self._encoder = None  # plain attribute set with object.__setattr__: never a submodule
        self._encoder_scale = None
        self._encoder_shift = 0.0
        if encoder is None or encoder == 'precomputed':
            return
        if isinstance(encoder, dict):
            self.encoder_spec = dict(encoder)
            enc, scale, shift, sample = _load_encoder(self.encoder_spec)
            self.sample_latent = sample
            self.set_encoder(enc, scaling_factor=scale if self.scaling_factor is None else self.scaling_factor,
                             shift_factor=shift)
        elif hasattr(encoder, 'encode'):
            self.set_encoder(encoder, scaling_factor=self.scaling_factor)
        else:
            raise ValueError("encoder must be None, 'precomputed', a dict {type: diffusers, path: ...} "
                             f'or an object with an encode() method, got {encoder!r}')

    def set_encoder(self, encoder, scaling_factor=None, shift_factor=None):
        """Injection hook: use ``encoder`` (an object with ``encode(x)``) to map images to latents.

        The encoder is frozen (eval mode, no trainable parameters) when it is an ``nn.Module``; it is kept
        out of the loss's parameters and state dict. None switches back to precomputed latents.
        """
        if encoder is None:
            object.__setattr__(self, '_encoder', None)
            return
        if not hasattr(encoder, 'encode'):
            raise ValueError(f'encoder has no encode() method: {type(encoder).__name__}')
        config = getattr(encoder, 'config', None)
        if scaling_factor is None:
            scaling_factor = _config_value(config, 'scaling_factor')
        if scaling_factor is None:
            scaling_factor = getattr(encoder, 'scaling_factor', None)
        if scaling_factor is None:
            raise ValueError('encoder has no scaling_factor (config.scaling_factor or .scaling_factor); '
                             'pass scaling_factor= to MILOLatentLoss')
        if shift_factor is None:
            shift_factor = _config_value(config, 'shift_factor')
        if shift_factor is None:
            shift_factor = getattr(encoder, 'shift_factor', None)
        if isinstance(encoder, nn.Module):
            freeze(encoder)
        object.__setattr__(self, '_encoder', encoder)
        self._encoder_scale = float(scaling_factor)
        self._encoder_shift = float(shift_factor or 0.0)

    @property
    def encoder(self):
        return self._encoder

    def train(self, mode=True):
        super().train(mode)
        if isinstance(self._encoder, nn.Module):
            self._encoder.eval()  # frozen whatever the training loop asks
        return self

    def encode(self, images):
        """RGB images (B, 3, H, W) in [0, 1] -> scaled latents (B, 4, h, w), differentiable."""
        if self._encoder is None:
            raise ValueError('MILOLatentLoss has no encoder: inputs must be precomputed latents')
        enc = self._encoder
        if isinstance(enc, nn.Module):
            param = next(enc.parameters(), None)
            if param is not None and (param.device != images.device):
                enc.to(images.device)
            x = images.to(param.dtype) if param is not None else images
        else:
            x = images
        out = enc.encode(x * 2.0 - 1.0)
        z = _latent_from_output(out, self.sample_latent)
        return ((z.float() - self._encoder_shift) * self._encoder_scale)

    def per_image(self, pred, target):
        if self._encoder is not None:
            dist, ref = self.prepare_pair(pred, target, channels=3, min_size=16)
            dist = self.encode(dist)
            with torch.no_grad():
                ref = self.encode(ref)
            if dist.shape[1] != 4:
                raise ValueError(f'encoder produced {dist.shape[1]}-channel latents {tuple(dist.shape)}; '
                                 'MILO latent weights need 4 channels')
        else:
            dist, ref = pred, target
        dist, ref = self.prepare_pair(dist, ref, channels=4, min_size=16, value_range=None)
        return self.weighted_error(dist.float(), ref.float())

    def extra_repr(self):
        enc = 'precomputed' if self._encoder is None else type(self._encoder).__name__
        return super().extra_repr() + f', encoder={enc}'


def _config_value(config, key):
    if config is None:
        return None
    if isinstance(config, dict):
        return config.get(key)
    return getattr(config, key, None)


def _latent_from_output(out, sample):
    """Latent tensor from what an encoder returns (tensor, diffusers output, tuple, distribution)."""
    if torch.is_tensor(out):
        return out
    if hasattr(out, 'latent_dist'):
        out = out.latent_dist
    elif isinstance(out, (tuple, list)) and out:
        out = out[0]
        if torch.is_tensor(out):
            return out
    if sample and hasattr(out, 'sample'):
        return out.sample()
    if hasattr(out, 'mode'):
        return out.mode()
    if hasattr(out, 'mean') and torch.is_tensor(out.mean):
        return out.mean
    raise TypeError(f'cannot get a latent tensor from the encoder output of type {type(out).__name__}')


_encoder_cache = {}
_encoder_lock = threading.Lock()
_ENCODER_KEYS = ('type', 'path', 'subfolder', 'sample', 'dtype')


def _load_encoder(spec):
    """(encoder, scaling_factor, shift_factor, sample) for a ``{type: diffusers, ...}`` dict, cached per process."""
    unknown = set(spec) - set(_ENCODER_KEYS)
    if unknown:
        raise ValueError(f"encoder: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(_ENCODER_KEYS)}")
    if spec.get('type') != 'diffusers':
        raise ValueError("encoder type must be 'diffusers' (or pass an object with encode()), "
                         f"got {spec.get('type')!r}")
    if not spec.get('path'):
        raise ValueError('encoder: path (a local diffusers folder or a hub id) is required')
    dtype_name = spec.get('dtype', 'float32')
    dtype = getattr(torch, str(dtype_name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f'encoder: unknown dtype {dtype_name!r}')
    key = (str(spec['path']), str(spec.get('subfolder') or ''), str(dtype))
    with _encoder_lock:
        vae = _encoder_cache.get(key)
        if vae is None:
            try:
                from diffusers import AutoencoderKL
            except ImportError as e:
                raise ImportError("MILOLatentLoss encoder type 'diffusers' needs the diffusers package: "
                                  'pip install diffusers') from e
            kwargs = {'torch_dtype': dtype}
            if spec.get('subfolder'):
                kwargs['subfolder'] = spec['subfolder']
            _encoder_cache[key] = vae = freeze(AutoencoderKL.from_pretrained(spec['path'], **kwargs))
    config = getattr(vae, 'config', None)
    scale = _config_value(config, 'scaling_factor')
    shift = _config_value(config, 'shift_factor')
    return vae, scale, shift, bool(spec.get('sample', False))


__all__ = ['MILOLoss', 'MILOLatentLoss', 'curriculum_t', 'curriculum_weights', 'check_curriculum']
