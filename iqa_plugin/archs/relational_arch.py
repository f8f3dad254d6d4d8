"""Relational IQA: dense, signed, per-axis distortion maps of one image relative to another, and a
relational score (after "Pixel Perfect: Relational Image Quality Assessment with Spatially-Aware
Distortions", arXiv 2605.02863; the paper publishes no code, the design below is this project's).

Conventions
-----------
* Images: (B, 3, H, W) float RGB in [0, 1], any H, W >= 16 (odd sizes too).
* Maps: (B, K, H, W) float, K = ``len(distortions.AXES)``; channel k is the signed intensity of the
  distortion on axis ``AXES[k]`` of ``a`` *relative to* ``b`` (the engine's convention: negative
  sharpness = blurrier, positive noise = noisier, ...). ``P(dist, ref)`` approximates the engine's
  maps of ``dist``, ``P(d1, d2)`` approximates ``maps1 - maps2``.

Exact properties (by construction, not learned)
-----------------------------------------------
* Anti-symmetry: ``P(a, b) = g(a, b) - g(b, a)`` with one shared network ``g``; IEEE subtraction is
  anti-commutative, so ``P(a, b) == -P(b, a)`` bit for bit and ``P(a, a) == 0``. ``g`` is evaluated
  on each ordered pair in a separate call (never batched with the swapped pair), so the two
  evaluations of ``g(a, b)`` inside ``P(a, b)`` and ``P(b, a)`` are the same computation.
* Fixed point of the score: ``s(a | ref) = -c mean_xy h(P(a, ref))`` (c = exp(log_scale) > 0) with
  ``h(m) = w2+ . relu(W1+ [relu(m); relu(-m)])`` (no biases, non-negative weights), so ``h(0) = 0``,
  ``h >= 0``: ``s(ref | ref) = 0`` exactly and ``s <= 0`` for anything else (higher = better).
* ``compare(a, b, ref) = sigmoid((s(a | ref) - s(b | ref)) / temperature)``: probability that ``a``
  is the better of the two; exactly 0.5 for ``a == b``.

Parameter counts (defaults): distortion net 51,752, score net 273 (``count_parameters``).
"""
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from iqa_plugin.labels.distortions import AXES
from iqa_plugin.scoring import freeze
from iqa_plugin.utils.image import prepare_pair

NUM_AXES = len(AXES)
MIN_SIZE = 16


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


_LUMA = (0.299, 0.587, 0.114)
NUM_STATS = 7
BLOCK = 8  # JPEG's DCT block (WebP's 4x4 / 16x16 macroblocks share its boundaries)


def block_boundary_ratio(y):
    """Log ratio of the squared luma steps across 8-pixel block boundaries to those inside blocks.

    y: (B, 1, H, W) -> (B, 1, H, W). Every 8x8 window (stride 1) holds exactly one boundary column and
    row of the grid anchored at pixel (0, 0), where codecs place their blocks, so the ratio is defined
    everywhere; about 0 for natural content, positive where blocks show.
    """
    h, w = y.shape[-2:]
    dx = F.pad((y[..., :, 1:] - y[..., :, :-1]) ** 2, (0, 1, 0, 0))
    dy = F.pad((y[..., 1:, :] - y[..., :-1, :]) ** 2, (0, 0, 0, 1))
    col = (torch.arange(w, device=y.device) % BLOCK == BLOCK - 1).to(y.dtype)
    row = (torch.arange(h, device=y.device) % BLOCK == BLOCK - 1).to(y.dtype)
    col[-1] = 0  # the padded last step is not a boundary
    row[-1] = 0
    edge = dx * col + dy * row[:, None]
    inner = dx * (1 - col) + dy * (1 - row[:, None])
    k = min(BLOCK, h, w)
    pad = (k // 2, k - 1 - k // 2, k // 2, k - 1 - k // 2)
    edge = F.avg_pool2d(F.pad(edge, pad, mode='replicate'), k, 1)
    inner = F.avg_pool2d(F.pad(inner, pad, mode='replicate'), k, 1) / (BLOCK - 1)
    return torch.log((edge + 1e-5) / (inner + 1e-5))


def image_statistics(x, size):
    """Fixed (parameter-free) local statistics of (B, 3, H, W) images, area-pooled to ``size``: (B, 7, h, w).

    Channels: luma, chroma magnitude, log gradient energy, log Laplacian energy, log local variance
    (5x5), log chroma variance and the block-boundary ratio (``block_boundary_ratio``: codec blocking,
    which the small convolution stack at quarter resolution did not pick up). Log energies turn ratios
    between two images into differences, so sharper/blurrier, noisier/smoother, higher/lower contrast
    become signed differences the pair head reads almost linearly; the learned convolutions handle the
    rest (quantisation, aliasing, the codecs' other artefacts).
    """
    w = x.new_tensor(_LUMA).view(1, 3, 1, 1)
    y = (x * w).sum(1, keepdim=True)
    chroma = x - y
    cmag = chroma.abs().mean(1, keepdim=True)
    yp = F.pad(y, (1, 1, 1, 1), mode='replicate')
    dx = yp[..., 1:-1, 2:] - yp[..., 1:-1, :-2]
    dy = yp[..., 2:, 1:-1] - yp[..., :-2, 1:-1]
    lap = 4 * y - yp[..., 1:-1, 2:] - yp[..., 1:-1, :-2] - yp[..., 2:, 1:-1] - yp[..., :-2, 1:-1]
    mean5 = F.avg_pool2d(F.pad(y, (2, 2, 2, 2), mode='replicate'), 5, 1)
    var5 = F.avg_pool2d(F.pad((y - mean5) ** 2, (2, 2, 2, 2), mode='replicate'), 5, 1)
    cvar = (chroma - F.avg_pool2d(F.pad(chroma, (1, 1, 1, 1), mode='replicate'), 3, 1)).pow(2).mean(1, keepdim=True)
    stats = torch.cat([y, cmag, dx * dx + dy * dy, lap * lap, var5, cvar, block_boundary_ratio(y)], 1)
    stats = F.adaptive_avg_pool2d(stats, size)
    eps = 1e-5
    return torch.cat([stats[:, :2] * 2.0 - 0.5, 0.25 * torch.log(stats[:, 2:6] + eps), 0.5 * stats[:, 6:]], 1)


class _Encoder(nn.Module):
    """Per-image features at quarter resolution: (B, 3, H, W) -> (B, C + 7, ceil(ceil(H/2)/2), ...).

    Learned convolutions (plain, non-dilated: PyTorch's dilated convolution takes a slow path on CPU)
    plus the 7 fixed ``image_statistics`` pooled to the same grid.
    """

    def __init__(self, num_feat=32):
        super().__init__()
        c1 = max(num_feat // 2, 8)
        self.body = nn.Sequential(
            nn.Conv2d(3, c1, 3, 1, 1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(c1, num_feat, 3, 2, 1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(num_feat, num_feat, 3, 2, 1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.LeakyReLU(0.1, inplace=True))

    def forward(self, x):
        # centred input: a constant image gives the same response everywhere
        f = self.body(x * 2.0 - 1.0)
        return torch.cat([f, image_statistics(x, f.shape[-2:])], 1)


@ARCH_REGISTRY.register()
class RelationalDistortionNet(nn.Module):
    """Anti-symmetric distortion predictor ``P(a, b) -> (B, K, H, W)`` (see the module docstring).

    ``g(a, b)`` takes the features of both images (shared encoder), their difference, a global
    context vector (spatial mean of the features, for global operations such as brightness or
    contrast) and predicts K maps at quarter resolution, upsampled bilinearly to (H, W).

    Args:
        num_feat (int): encoder channels (default 32).
        num_head (int): channels of the pair head (default 32).
        num_axes (int): K, default ``len(distortions.AXES)`` = 8.
    """

    def __init__(self, num_feat=32, num_head=32, num_axes=NUM_AXES):
        super().__init__()
        self.num_axes = int(num_axes)
        self.encoder = _Encoder(num_feat)
        cin = 3 * (num_feat + NUM_STATS)
        self.local = nn.Conv2d(cin, num_head, 1)
        self.context = nn.Linear(cin, num_head)
        self.head = nn.Sequential(
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(num_head, num_head, 3, 1, 1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(num_head, num_head, 3, 1, 1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(num_head, self.num_axes, 3, 1, 1))

    def features(self, x):
        """(B, 3, H, W) -> (B, num_feat + 7, ~H/4, ~W/4)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f'expected (B, 3, H, W) images, got shape {tuple(x.shape)}')
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(f'image is {x.shape[-2]}x{x.shape[-1]}, smaller than the minimum side of {MIN_SIZE} px')
        return self.encoder(x)

    def g(self, fa, fb, size):
        """The shared, non-symmetric pair head on encoder features; returns (B, K, H, W) at ``size``."""
        x = torch.cat([fa, fb, fa - fb], 1)
        y = self.local(x) + self.context(x.mean(dim=(2, 3)))[:, :, None, None]
        y = self.head(y)
        return F.interpolate(y, size=size, mode='bilinear', align_corners=False)

    def forward_features(self, fa, fb, size):
        """``P`` from precomputed features (lets a caller encode each image once)."""
        return self.g(fa, fb, size) - self.g(fb, fa, size)

    def forward(self, a, b):
        """P(a, b): (B, K, H, W), the distortion of ``a`` relative to ``b``; P(a, b) == -P(b, a)."""
        if a.shape != b.shape:
            raise ValueError(f'a and b shapes differ: a {tuple(a.shape)} vs b {tuple(b.shape)}')
        return self.forward_features(self.features(a), self.features(b), a.shape[-2:])


class _NonNegConv1x1(nn.Module):
    """1x1 convolution without bias whose effective weights are softplus(raw) >= 0."""

    def __init__(self, cin, cout, init=0.0):
        super().__init__()
        self.raw = nn.Parameter(torch.randn(cout, cin) * 0.1 + init)

    def weight(self):
        return F.softplus(self.raw)

    def forward(self, x):
        return torch.einsum('oc,bchw->bohw', self.weight().to(x.dtype), x)


@ARCH_REGISTRY.register()
class RelationalScoreNet(nn.Module):
    """Relational score from maps: ``s = -exp(log_scale) mean_xy h(maps)``, (B, K, H, W) -> (B,), higher = better,
    s(0) = 0.

    ``h`` is a monotone (non-negative weights, no biases) two-layer per-pixel network on the
    rectified positive and negative parts of the maps, so over- and under-shooting an axis (e.g.
    sharpening vs blur) can weigh differently. ``temperature`` scales ``compare``.

    Args:
        num_axes (int): K (default 8).
        num_hidden (int): hidden channels of ``h`` (default 16).
    """

    def __init__(self, num_axes=NUM_AXES, num_hidden=16):
        super().__init__()
        self.num_axes = int(num_axes)
        self.fc1 = _NonNegConv1x1(2 * self.num_axes, num_hidden, init=-1.0)
        self.fc2 = _NonNegConv1x1(num_hidden, 1, init=-1.0)
        # overall scale of s (learned in stage 2: the Plackett-Luce / ListMLE objective calibrates it)
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))
        self.register_buffer('temperature', torch.tensor(1.0))

    def penalty_map(self, maps):
        """h(maps): (B, K, H, W) -> (B, 1, H, W), >= 0, exactly 0 where all maps are 0."""
        if maps.ndim != 4 or maps.shape[1] != self.num_axes:
            raise ValueError(f'expected maps (B, {self.num_axes}, H, W), got shape {tuple(maps.shape)}')
        x = torch.cat([F.relu(maps), F.relu(-maps)], 1)
        return self.fc2(F.relu(self.fc1(x)))

    def axis_weights(self):
        """(2K,) effective linearised weights of [positive; negative] parts (for inspection)."""
        return (self.fc2.weight() @ self.fc1.weight()).reshape(-1)

    def forward(self, maps):
        return -self.log_scale.exp() * self.penalty_map(maps).mean(dim=(1, 2, 3))


@ARCH_REGISTRY.register()
class RelationalIQANet(nn.Module):
    """Both networks: ``distortion`` (P) and ``score`` (s); what ``relational.pth`` holds.

    ``forward(a, ref)`` -> (score (B,), maps (B, K, H, W)).
    """

    def __init__(self, num_feat=32, num_head=32, num_hidden=16, num_axes=NUM_AXES):
        super().__init__()
        self.distortion = RelationalDistortionNet(num_feat, num_head, num_axes)
        self.score = RelationalScoreNet(num_axes, num_hidden)

    def maps(self, a, b):
        return self.distortion(a, b)

    def relational_score(self, a, ref):
        """s(a | ref): (B,), higher = better, exactly 0 for a == ref."""
        return self.score(self.distortion(a, ref))

    def compare(self, a, b, ref):
        """P(a better than b | ref) = sigmoid((s(a|ref) - s(b|ref)) / temperature): (B,) in [0, 1]."""
        fr = self.distortion.features(ref)
        size = ref.shape[-2:]
        sa = self.score(self.distortion.forward_features(self.distortion.features(a), fr, size))
        sb = self.score(self.distortion.forward_features(self.distortion.features(b), fr, size))
        return torch.sigmoid((sa - sb) / self.score.temperature)

    def forward(self, a, ref):
        m = self.distortion(a, ref)
        return self.score(m), m


def load_relational_weights(net, weights='relational', weights_path=None):
    """Load a plain state dict (or a BasicSR checkpoint with ``params``) into ``net``; returns the path."""
    from iqa_plugin import weights as weights_mod

    path = weights_mod.resolve(weights, weights_path)
    sd = weights_mod.load_state_dict(path)
    for key in ('params_ema', 'params'):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise weights_mod.WeightsError(f'weights file {path} does not hold a state dict')
    sd = {k[7:] if k.startswith('module.') else k: v for k, v in sd.items()}
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise weights_mod.WeightsError(f'weights file {path} does not match RelationalIQANet: '
                                       f'{str(e).splitlines()[0]}') from e
    return path


class RelationalScorer(nn.Module):
    """Scoring-table module for ``relational`` (full-reference, higher is better).

    ``forward(dist, ref)`` with (B, 3, H, W) RGB in [0, 1] returns an ordered dict of (B,) tensors:
    ``relational`` (primary, s(dist | ref) <= 0, 0 = identical), ``magnitude`` (mean |P| over axes and
    pixels) and one ``axis_<name>`` per axis (spatial mean of the signed map). The maps of the last
    call are kept in ``last_maps`` (B, K, H, W, detached) for visualisation; ``maps(dist, ref)`` and
    ``compare(a, b, ref)`` are available directly. Differentiable with respect to ``dist``.
    """
    kind = 'fr'
    lower_better = False
    output_names = ('relational', 'magnitude') + tuple(f'axis_{a}' for a in AXES)

    def __init__(self, net, out_of_range='clamp'):
        super().__init__()
        self.net = net
        self.out_of_range = out_of_range
        self.last_maps = None
        freeze(self)

    def train(self, mode=True):
        return super().train(False)

    def _inputs(self, dist, ref):
        if ref is None:
            raise ValueError('relational is a full-reference metric: ref is required')
        dist, ref = prepare_pair(dist, ref, channels=3, min_size=MIN_SIZE, out_of_range=self.out_of_range)
        dtype = next(self.net.parameters()).dtype
        return dist.to(dtype), ref.to(dtype)

    def maps(self, dist, ref):
        dist, ref = self._inputs(dist, ref)
        return self.net.maps(dist, ref)

    def compare(self, a, b, ref):
        a, ref_ = self._inputs(a, ref)
        b, _ = self._inputs(b, ref)
        return self.net.compare(a, b, ref_)

    def forward(self, dist, ref=None):
        dist, ref = self._inputs(dist, ref)
        score, maps = self.net(dist, ref)
        self.last_maps = maps.detach()
        out = OrderedDict([('relational', score), ('magnitude', maps.abs().mean(dim=(1, 2, 3)))])
        means = maps.mean(dim=(2, 3))
        for k, a in enumerate(AXES):
            out[f'axis_{a}'] = means[:, k]
        return out


def build_relational_net(weights='relational', weights_path=None, **net_opts):
    net = RelationalIQANet(**net_opts)
    load_relational_weights(net, weights, weights_path)
    return freeze(net)


def build_relational_scorer(device, weights='relational', weights_path=None, out_of_range='clamp', **opts):
    """Factory for ``scoring.METRICS['relational']``: a frozen ``RelationalScorer`` on ``device``.

    Args:
        device (torch.device | str): where the network lives.
        weights (str): weights-manager entry (default 'relational', the packaged file).
        weights_path (str | None): explicit weights file (a plain state dict or a BasicSR checkpoint).
        out_of_range (str): 'clamp' (warn once, clamp), 'error' or 'ignore'.
    """
    if opts:
        raise TypeError(f"build_relational_scorer: unknown option(s) {', '.join(sorted(opts))}")
    net = build_relational_net(weights, weights_path)
    return RelationalScorer(net, out_of_range=out_of_range).to(torch.device(device))


__all__ = ['RelationalDistortionNet', 'RelationalScoreNet', 'RelationalIQANet', 'RelationalScorer',
           'build_relational_scorer', 'build_relational_net', 'load_relational_weights', 'count_parameters',
           'NUM_AXES']
