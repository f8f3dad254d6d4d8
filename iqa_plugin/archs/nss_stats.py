"""Differentiable natural-scene statistics of an image: the hand-crafted branch of ``NRLite``.

``NSSStats`` maps (B, 3, H, W) RGB in [0, 1] to (B, F) features that a small learned head can combine.
They are the cues that the classic NR models (BRISQUE, NIQE) and JPEG blockiness measures use, in
torch, so gradients flow:

* per scale (full, 1/2, 1/4; 2x2 average pooling between scales), from the luma Y (BT.601):
  the MSCN coefficients ``m = (Y - mu) / (sigma + c)`` (Gaussian window, sigma 7/6 px, as in BRISQUE
  and NIQE; ``c = 1/255``), their second moment, mean absolute value and a kurtosis
  ``E[m^4] / E[m^2]^2``, the correlations of ``m`` with its right, lower and two diagonal neighbours
  (structure: blur raises them, noise lowers them), and the mean and spread of ``log(sigma + c)``
  (local contrast: flat, blurred and low-contrast images have small ``sigma``);
* global: mean and standard deviation of Y, the fraction of near-black and near-white pixels (soft
  counts), chroma magnitude and spread of the opponent channels ``R - G`` and ``(R + G) / 2 - B``
  (colourfulness), the mean high-frequency energy ``|Y - blur(Y)|``, and an 8x8 blockiness ratio (the largest mean horizontal/vertical step across
  columns/rows of one phase modulo 8, over the mean step: JPEG/WebP block edges).

Flat or constant input is valid: sigma is 0, the MSCN coefficients are 0 and every feature is finite.
No learned parameters. Positive magnitudes are log-transformed so features are O(1).
"""
import torch
import torch.nn.functional as F
from torch import nn

_C = 1.0 / 255.0  # MSCN stabiliser for [0, 1] images (BRISQUE/NIQE use 1 on 0..255)
_EPS = 1e-6


def _gaussian_window(sigma=7.0 / 6.0, radius=3):
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


class NSSStats(nn.Module):
    """Hand-crafted, differentiable quality statistics; see the module docstring.

    Forward: x (B, 3, H, W) RGB in [0, 1], H, W >= 16 -> (B, ``NSSStats.num_features``) float32.
    """
    scales = 3
    per_scale = 9     # m2, |m|, kurtosis, 4 neighbour correlations, mean and std of log sigma
    global_features = 9
    num_features = scales * per_scale + global_features

    def __init__(self):
        super().__init__()
        self.register_buffer('window', _gaussian_window(), persistent=False)
        self.register_buffer('luma', torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1), persistent=False)

    def _blur(self, y):
        r = self.window.numel() // 2
        y = F.pad(y, (r, r, r, r), mode='replicate')
        y = F.conv2d(y, self.window.view(1, 1, 1, -1))
        return F.conv2d(y, self.window.view(1, 1, -1, 1))

    def _scale_stats(self, y, mu):
        """The ``per_scale`` statistics of luma ``y`` (B, 1, H, W) given its local mean ``mu = _blur(y)``."""
        var = (self._blur(y * y) - mu * mu).clamp_min(0.0)
        sigma = (var + _EPS ** 2).sqrt()
        m = (y - mu) / (sigma + _C)
        m2 = m.pow(2).mean(dim=(1, 2, 3))
        m1 = m.abs().mean(dim=(1, 2, 3))
        kurt = m.pow(4).mean(dim=(1, 2, 3)) / (m2.pow(2) + 1e-4)
        pairs = [(m[..., :, 1:], m[..., :, :-1]), (m[..., 1:, :], m[..., :-1, :]),
                 (m[..., 1:, 1:], m[..., :-1, :-1]), (m[..., 1:, :-1], m[..., :-1, 1:])]
        corr = [(a * b).mean(dim=(1, 2, 3)) / (m2 + 1e-4) for a, b in pairs]
        ls = torch.log(sigma + _C)
        return [torch.log(m2 + 1e-4), torch.log(m1 + 1e-4), torch.log(kurt + 1.0), *corr,
                ls.mean(dim=(1, 2, 3)), ls.std(dim=(1, 2, 3), unbiased=False)]

    @staticmethod
    def _blockiness(y):
        """Sum over both axes of log(max over the 8 phases of the mean step across columns (rows) of that phase
        / the mean step)."""
        total = 0.0
        for dim in (-1, -2):
            d = y.diff(dim=dim).abs().movedim(dim, -1)  # steps along the last axis
            n = d.shape[-1] - d.shape[-1] % 8
            phase = d[..., :n].reshape(*d.shape[:-1], n // 8, 8).mean(dim=(1, 2, 3))  # (B, 8)
            total = total + torch.log((phase.max(dim=1).values + 1e-4) / (phase.mean(dim=1) + 1e-4))  # flat: 0
        return total

    def forward(self, x):
        x = x.float()
        y = (x * self.luma).sum(1, keepdim=True)
        feats = []
        ys, mu0 = y, self._blur(y)
        for s in range(self.scales):
            if s:
                ys = F.avg_pool2d(ys, 2)
            feats.extend(self._scale_stats(ys, mu0 if s == 0 else self._blur(ys)))
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        rg, yb = r - g, 0.5 * (r + g) - b
        chroma = (rg.pow(2) + yb.pow(2) + _EPS).sqrt()
        feats += [y.mean(dim=(1, 2, 3)), torch.log(y.std(dim=(1, 2, 3), unbiased=False) + _C),
                  torch.sigmoid((0.02 - y) * 200.0).mean(dim=(1, 2, 3)),
                  torch.sigmoid((y - 0.98) * 200.0).mean(dim=(1, 2, 3)),
                  torch.log(chroma.mean(dim=(1, 2)) + _C), torch.log(rg.std(dim=(1, 2), unbiased=False) + _C),
                  torch.log(yb.std(dim=(1, 2), unbiased=False) + _C), self._blockiness(y),
                  torch.log((y - mu0).abs().mean(dim=(1, 2, 3)) + _C)]  # high-frequency energy
        return torch.stack(feats, dim=1)


class RunningStandardise(nn.Module):
    """Standardise (B, F) features with a mean and standard deviation estimated from the first training batches.

    In training mode the first ``max_count`` samples update a cumulative mean and variance (no gradient);
    afterwards, and always in eval mode, the stored estimates are used, so inference is deterministic
    and a batch never normalises itself (its images would then depend on each other). The estimates
    are buffers: they are saved with the weights.
    """

    def __init__(self, num_features, max_count=4096):
        super().__init__()
        self.max_count = int(max_count)
        self.register_buffer('mean', torch.zeros(num_features))
        self.register_buffer('var', torch.ones(num_features))
        self.register_buffer('count', torch.zeros((), dtype=torch.long))

    def forward(self, f):
        if self.training and int(self.count) < self.max_count:
            with torch.no_grad():
                x = f.detach().float()
                n, m = int(self.count), x.shape[0]
                bm, bv = x.mean(0), x.var(0, unbiased=False)
                tot = n + m
                delta = bm - self.mean
                mean = self.mean + delta * (m / tot)
                var = (self.var * n + bv * m) / tot + delta.pow(2) * (n * m / tot ** 2)  # n = 0: bv
                self.mean.copy_(mean)
                self.var.copy_(var)
                self.count.fill_(tot)
        return (f - self.mean) / (self.var + 1e-6).sqrt()
