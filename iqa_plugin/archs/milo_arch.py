"""MILO: a light-weight multiscale full-reference quality metric with a spatial masking map.

Reference: U. Cogalan, M. Bemana, K. Myszkowski, H.-P. Seidel, T. Groth, "MILO: A Lightweight
Perceptual Quality Metric for Image and Latent-Space Optimization", ACM TOG 2025 (arXiv 2509.01411).
Official weights (Apache-2.0): github.com/ugurcogalan06/MILO, resolved by the weights manager as
``milo`` (RGB) and ``milo-latent`` (4-channel Stable Diffusion VAE latents).

The model (about 45k parameters):

* ``MaskFinder``: five 3x3 convolutions ``(2C+1) -> 32 -> 64 -> 32 -> 16 -> 1`` with ReLU between and a
  sigmoid at the end; one set of weights for every scale. Its input is the concatenation
  ``[dist, ref, upsampled mask]`` along channels (C = 3 for RGB, 4 for latents).
* A pyramid of ``num_scales = 3`` 2x2 average-pool steps (4 levels). The mask starts as zeros of size
  ``floor(size / 2)`` of the coarsest level; from coarse to fine it is upsampled x2 (bilinear,
  ``align_corners=True``), replicate-padded by one row at the bottom / one column at the right where
  the level's side is odd, and updated as ``mask = sigmoid(MaskFinder(cat)) + upsampled``. The final
  full-resolution mask therefore lies in (0, num_scales + 1) = (0, 4).
* Raw error (the loss): ``mean over channels and pixels of mask * |ref - dist|``.
* ``ScalerNetwork``: 1x1 convolutions ``1 -> 32 -> 32 -> 1`` with LeakyReLU(0.2) and a sigmoid; the
  quality map is ``scaler(mean_c(mask * |ref - dist|)) - scaler(0)`` and the quality score is its mean:
  0 for identical images, towards 1 for strongly distorted ones.

Inputs are (B, C, H, W) float tensors: RGB in [0, 1] (no normalisation, no resizing) or VAE latents;
every side must be at least ``2 ** (num_scales + 1) = 16``. Outputs are per image, shape (B,).
"""
import os
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn
from torch.nn import functional as F

from iqa_plugin import weights as weights_manager
from iqa_plugin.scoring import freeze
from iqa_plugin.utils.image import prepare_pair

NUM_SCALES = 3
_STATE_DICT_WRAPPERS = ('params_ema', 'params', 'state_dict', 'model')


class MaskFinder(nn.Module):
    """Per-scale mask update: (B, 2C+1, h, w) -> (B, 1, h, w) in (0, 1)."""

    def __init__(self, in_channels):
        super().__init__()
        chans = [in_channels, 32, 64, 32, 16, 1]
        layers = []
        for i in range(5):
            layers.append(nn.Conv2d(chans[i], chans[i + 1], kernel_size=3, stride=1, padding=1, bias=True))
            if i < 4:
                layers.append(nn.ReLU(inplace=True))
        self.netBasic = nn.Sequential(*layers)  # name kept so the official state dict loads as is

    def forward(self, x):
        return torch.sigmoid(self.netBasic(x))


class ScalerNetwork(nn.Module):
    """Per-pixel error -> quality: (B, 1, h, w) -> (B, 1, h, w) in (0, 1)."""

    def __init__(self, mid_channels=32):
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(1, mid_channels, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(mid_channels, mid_channels, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(mid_channels, 1, 1), nn.Sigmoid())

    def forward(self, x):
        return self.model(x)


class MILOOutput(NamedTuple):
    """What ``MILO.forward`` returns; shapes for a batch of B images of H x W."""
    raw_error: torch.Tensor  # (B,) mean of mask * |ref - dist|; the loss
    quality_score: torch.Tensor  # (B,) mean of quality_map, 0 = identical
    quality_map: torch.Tensor  # (B, 1, H, W) scaler(mean_c(mask * |ref - dist|)) - scaler(0)
    mask: torch.Tensor  # (B, 1, H, W) in (0, num_scales + 1)


def default_weights_name(in_channels):
    """Official weights for ``in_channels``: 'milo' (RGB) or 'milo-latent' (4-channel latents)."""
    if in_channels == 3:
        return 'milo'
    if in_channels == 4:
        return 'milo-latent'
    raise ValueError(f'MILO: in_channels must be 3 (RGB) or 4 (latents), got {in_channels}')


def resolve_milo_weights(weights='auto', weights_path=None, in_channels=3):
    """Path of the weights file to load, or None for random initialisation.

    Args:
        weights (str | None): a weights-manager entry ('milo', 'milo-latent', 'milo-pseudomos'),
            'auto' (the official entry for ``in_channels``) or None / 'none' (random init).
        weights_path (str | Path | None): explicit file; checked against the entry's sha256 when the
            entry is an official release. With ``weights=None`` the file is loaded unchecked.
    """
    if weights == 'auto':
        weights = default_weights_name(in_channels)
    if weights in (None, '', 'none', 'None'):
        if weights_path:
            return weights_manager.check_file(Path(os.path.expanduser(str(weights_path))))
        return None
    return weights_manager.resolve(weights, path=weights_path)


def load_milo_state_dict(path, in_channels):
    """Read a MILO weights file (official layout or a BasicSR checkpoint wrapping it)."""
    sd = weights_manager.load_state_dict(path)
    if isinstance(sd, dict):
        for key in _STATE_DICT_WRAPPERS:
            if key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict):
        raise weights_manager.WeightsError(f'{path}: expected a MILO state dict, got {type(sd).__name__}')
    sd = OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in sd.items())
    first = sd.get('mask_finder_1.netBasic.0.weight')
    if first is None:
        raise weights_manager.WeightsError(f'{path}: not a MILO state dict (no mask_finder_1.netBasic.0.weight)')
    if first.shape[1] != 2 * in_channels + 1:
        raise weights_manager.WeightsError(
            f'{path}: weights are for {(first.shape[1] - 1) // 2}-channel inputs, '
            f'the model has in_channels={in_channels}')
    return sd


def _upsample_mask(mask, size):
    """x2 bilinear upsampling (align_corners=True), then replicate-pad one bottom row / right column
    where the target side is odd: (B, 1, h, w) -> (B, 1, *size)."""
    up = F.interpolate(mask, size=(2 * mask.shape[-2], 2 * mask.shape[-1]), mode='bilinear', align_corners=True)
    pad_h, pad_w = size[0] - up.shape[-2], size[1] - up.shape[-1]
    if pad_h or pad_w:
        up = F.pad(up, [0, pad_w, 0, pad_h], mode='replicate')
    return up


@ARCH_REGISTRY.register()
class MILO(nn.Module):
    """MILO metric / loss network (see the module docstring for the computation).

    Args:
        in_channels (int): 3 for RGB images in [0, 1], 4 for Stable Diffusion VAE latents.
        weights (str | None): weights-manager entry to load; 'auto' picks the official file for
            ``in_channels`` ('milo' / 'milo-latent'); None gives a random initialisation (for training).
        weights_path (str | None): explicit weights file (overrides the manager's search folders).
        frozen (bool | None): eval mode forever and no trainable parameters; default: True when weights
            are loaded, False for a random initialisation.
        num_scales (int): pooling steps of the pyramid (3 in the official model).
        channels_last (bool): run the mask network in channels-last memory format (speed option; the
            values are the same up to float rounding).
    """

    def __init__(self, in_channels=3, weights='auto', weights_path=None, frozen=None, num_scales=NUM_SCALES,
                 channels_last=False):
        super().__init__()
        if in_channels not in (3, 4):
            raise ValueError(f'MILO: in_channels must be 3 (RGB) or 4 (latents), got {in_channels}')
        self.in_channels = in_channels
        self.num_scales = int(num_scales)
        self.min_size = 2 ** (self.num_scales + 1)
        self.channels_last = bool(channels_last)
        self.mask_finder_1 = MaskFinder(2 * in_channels + 1)
        self.scaler_network = ScalerNetwork()
        path = resolve_milo_weights(weights, weights_path, in_channels)
        self.weights_file = str(path) if path is not None else None
        if path is not None:
            sd = load_milo_state_dict(path, in_channels)
            try:
                self.load_state_dict(sd, strict=True)
            except RuntimeError as e:
                raise weights_manager.WeightsError(f'{path}: does not match the MILO architecture: {e}') from e
        self.frozen = (path is not None) if frozen is None else bool(frozen)
        if self.frozen:
            freeze(self)

    def train(self, mode=True):
        """A frozen MILO stays in eval mode whatever is asked."""
        return super().train(False if self.frozen else mode)

    # ------------------------------------------------------------------ input handling
    def check_inputs(self, dist, ref, out_of_range='clamp'):
        """Full validation (shapes, channels, NaN/Inf, min side, value range for RGB) -> (dist, ref)."""
        return prepare_pair(dist, ref, channels=self.in_channels, min_size=self.min_size, out_of_range=out_of_range,
                            value_range=(0.0, 1.0) if self.in_channels == 3 else None)

    def _check_shapes(self, dist, ref):
        # cheap shape checks only (no device sync): the full check is ``check_inputs``
        if dist.shape != ref.shape:
            raise ValueError(f'dist and ref shapes differ: dist {tuple(dist.shape)} vs ref {tuple(ref.shape)}')
        if dist.ndim != 4 or dist.shape[1] != self.in_channels:
            raise ValueError(f'MILO expects (B, {self.in_channels}, H, W) inputs, got {tuple(dist.shape)}')
        if min(dist.shape[-2:]) < self.min_size:
            raise ValueError(f'MILO: input is {dist.shape[-2]}x{dist.shape[-1]}, smaller than the minimum side '
                             f'of {self.min_size} px')

    # ------------------------------------------------------------------ computation
    def mask(self, dist, ref, channels_last=None):
        """Spatial masking map: (B, C, H, W) x2 -> (B, 1, H, W) in (0, num_scales + 1).

        Differentiable w.r.t. both inputs; call it under ``torch.no_grad()`` for a mask without gradient.
        """
        self._check_shapes(dist, ref)
        channels_last = self.channels_last if channels_last is None else channels_last
        dists, refs = [dist], [ref]
        for _ in range(self.num_scales):
            dists.insert(0, F.avg_pool2d(dists[0], kernel_size=2, stride=2))
            refs.insert(0, F.avg_pool2d(refs[0], kernel_size=2, stride=2))
        h, w = dists[0].shape[-2:]
        mask = dist.new_zeros((dist.shape[0], 1, h // 2, w // 2))
        for d, r in zip(dists, refs):
            up = _upsample_mask(mask, d.shape[-2:])
            x = torch.cat([d, r, up], dim=1)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            mask = self.mask_finder_1(x) + up
        return mask.contiguous() if channels_last else mask

    @staticmethod
    def error_map(dist, ref, mask):
        """Channel mean of ``mask * |ref - dist|``: (B, C, H, W) x2, (B, 1, H, W) -> (B, 1, H, W)."""
        return (mask * (ref - dist).abs()).mean(dim=1, keepdim=True)

    def scale(self, error_map):
        """Quality map from an error map: ``scaler(e) - scaler(0)``, (B, 1, H, W) -> (B, 1, H, W)."""
        zero = error_map.new_zeros((1, 1, 1, 1))
        return self.scaler_network(error_map) - self.scaler_network(zero)

    def raw_error(self, dist, ref):
        """Per-image raw error (the loss), (B,): mean over channels and pixels of mask * |ref - dist|."""
        return self.error_map(dist, ref, self.mask(dist, ref)).mean(dim=(1, 2, 3))

    def quality_map(self, dist, ref):
        """(B, 1, H, W) per-pixel quality (0 = no visible difference)."""
        return self.scale(self.error_map(dist, ref, self.mask(dist, ref)))

    def forward(self, dist, ref):
        """All outputs for a batch: see ``MILOOutput``. ``dist`` and ``ref`` are (B, C, H, W)."""
        mask = self.mask(dist, ref)
        err = self.error_map(dist, ref, mask)
        qmap = self.scale(err)
        return MILOOutput(err.mean(dim=(1, 2, 3)), qmap.mean(dim=(1, 2, 3)), qmap, mask)


# ---------------------------------------------------------------------- shared frozen networks
def get_frozen_milo(weights='auto', weights_path=None, in_channels=3, device='cpu'):
    """The frozen MILO network with these weights on ``device``, from the one cache of frozen networks
    (``scoring.get_cached_metric``, shared with the losses and validators); do not move or modify it."""
    if weights == 'auto':
        weights = default_weights_name(in_channels)
    if weights in (None, '', 'none', 'None') and not weights_path:
        raise ValueError('get_frozen_milo needs weights (a frozen random network is never what you want)')
    from iqa_plugin.scoring import get_cached_metric

    weights = weights or 'none'  # the cache drops None options, which would restore the default entry
    return get_cached_metric('milo', device, weights=weights, weights_path=weights_path, in_channels=in_channels).net


# ---------------------------------------------------------------------- scoring-table factory
class MILOScorer(nn.Module):
    """Batched MILO validator (the ``milo`` / ``milo-pseudomos`` entries of ``scoring.METRICS``).

    ``forward(dist, ref)`` takes (B, 3, H, W) RGB tensors in [0, 1] (validated: same shape, no NaN,
    side >= 16, out-of-range values handled by ``out_of_range``) and returns an ordered dict of (B,)
    tensors ``quality_score`` (primary, lower is better) and ``raw_error``. The network is frozen; the
    outputs are differentiable w.r.t. ``dist`` when gradients are enabled (validators run it under
    ``torch.no_grad()``; for training, ``MILOLoss`` is the faster choice).
    """
    kind = 'fr'
    lower_better = True
    output_names = ('quality_score', 'raw_error')

    def __init__(self, net, out_of_range='clamp'):
        super().__init__()
        self.net = net
        self.out_of_range = out_of_range
        freeze(self)

    def train(self, mode=True):
        return super().train(False)

    def forward(self, dist, ref=None):
        if ref is None:
            raise ValueError('milo is a full-reference metric: ref is required')
        dist, ref = self.net.check_inputs(dist, ref, out_of_range=self.out_of_range)
        dtype = next(self.net.parameters()).dtype
        out = self.net(dist.to(dtype), ref.to(dtype))
        return OrderedDict([('quality_score', out.quality_score), ('raw_error', out.raw_error)])


def build_milo_scorer(device, weights='milo', weights_path=None, out_of_range='clamp', channels_last=False,
                      in_channels=3, **opts):
    """Factory for ``scoring.METRICS['milo']`` / ``['milo-pseudomos']``: a frozen ``MILOScorer``.

    Args:
        device (torch.device | str): where the network lives.
        weights (str): weights-manager entry ('milo', 'milo-pseudomos', ...).
        weights_path (str | None): explicit weights file.
        out_of_range (str): 'clamp' (warn once, clamp), 'error' or 'ignore' for inputs outside [0, 1].
        channels_last (bool): speed option of the mask network.
        in_channels (int): 3 (RGB); 4 only for latent inputs with the 'milo-latent' weights.
    """
    if opts:
        raise TypeError(f"build_milo_scorer: unknown option(s) {', '.join(sorted(opts))}")
    net = MILO(in_channels=in_channels, weights=weights, weights_path=weights_path, frozen=True,
               channels_last=channels_last)
    return MILOScorer(net, out_of_range=out_of_range).to(torch.device(device))


__all__ = ['MILO', 'MILOOutput', 'MILOScorer', 'MaskFinder', 'ScalerNetwork', 'build_milo_scorer',
           'get_frozen_milo', 'resolve_milo_weights', 'load_milo_state_dict', 'NUM_SCALES']
