"""NIQE with a pristine model fitted on this project's own images, and a scorer that handles flat input.

NIQE (Mittal et al., "Making a 'Completely Blind' Image Quality Analyzer", IEEE SPL 2013) describes an
image by 36 natural-scene statistics per 96x96 block (18 at full and 18 at half resolution: the AGGD
shape/scale of the mean-subtracted contrast-normalised (MSCN) luma and of its four neighbour products)
and scores it by the Mahalanobis-like distance between the multivariate Gaussian (MVG) of its blocks
and the MVG of pristine blocks. The features are pyiqa's (``pyiqa.archs.niqe_arch.compute_feature``,
``normalize_img_with_gauss``, ``imresize``, MATLAB Y of YIQ rounded to 8 bit), so a fitted file also
works with pyiqa's ``niqe`` (``{mu_pris_param, cov_pris_param}`` tensors, what ``iqa_plugin.scoring.pyiqa_adapter``
accepts as NIQE weights).

Fitting (``fit_pristine``, ``python -m iqa_plugin.archs.niqe_fitted_arch fit``): every 96 px block of
every pristine image, kept when its sharpness (mean local standard deviation) is at least
``sharpness_frac`` (0.75, as the paper) of the sharpest block of that image; mu and cov of their 36
features.

Degenerate input: a block whose MSCN coefficients are all zero (flat, constant, or only one sign) has
no AGGD fit; pyiqa returns NaN features for it, and an image made only of such blocks makes pyiqa's
``niqe`` raise ``LinAlgError`` (pinv of a NaN covariance). ``NIQEFitted`` instead counts those blocks
as structureless: score = NIQE distance of the valid blocks + ``flat_penalty`` x the fraction of
structureless blocks (an image with no valid block scores ``flat_penalty``, by default 100, the top
of the scoring range), so a flat image gets a low quality, never an error or NaN.
"""
import argparse
import math
from pathlib import Path

import torch
from torch import nn

from iqa_plugin import weights as wm
from iqa_plugin.scoring.scorer import NRScorer

BLOCK = 96
MIN_SIZE = 96
FEATURES = 36


def _pyiqa():
    from pyiqa.archs.func_util import normalize_img_with_gauss
    from pyiqa.archs.niqe_arch import compute_feature
    from pyiqa.matlab_utils import imresize
    from pyiqa.utils.color_util import to_y_channel
    return normalize_img_with_gauss, compute_feature, imresize, to_y_channel


def luma255(x):
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H', W') float64 Y (YIQ) on 0..255, rounded, cropped to whole blocks."""
    *_, to_y_channel = _pyiqa()
    y = torch.round(to_y_channel(x.double(), 255, 'yiq'))
    h, w = (y.shape[-2] // BLOCK) * BLOCK, (y.shape[-1] // BLOCK) * BLOCK
    return y[..., :h, :w]


def block_features(y):
    """Per-block NIQE features of Y images.

    Args:
        y: (B, 1, H, W) float64 luma on 0..255, H and W multiples of 96.
    Returns:
        feats (B, N, 36) float64 (NaN rows = structureless blocks), sharpness (B, N) mean local
        standard deviation of each full-resolution block.
    """
    normalize_img_with_gauss, compute_feature, imresize, _ = _pyiqa()
    out, sharp = [], None
    img = y
    for scale in (1, 2):
        bs = BLOCK // scale
        mscn = normalize_img_with_gauss(img, padding='replicate')
        b, _, h, w = mscn.shape
        nh, nw = h // bs, w // bs
        blocks = mscn[..., :nh * bs, :nw * bs].reshape(b, nh, bs, nw, bs).permute(0, 1, 3, 2, 4)
        blocks = blocks.reshape(b * nh * nw, 1, bs, bs)
        with torch.no_grad():
            f = compute_feature(blocks)
        out.append(f.reshape(b, nh * nw, -1))
        if scale == 1:
            k = torch.ones(1, 1, 7, 7, dtype=img.dtype) / 49.0
            mu = nn.functional.conv2d(img, k, padding=3)
            sd = (nn.functional.conv2d(img * img, k, padding=3) - mu * mu).clamp_min(0).sqrt()
            sharp = sd.reshape(b, nh, bs, nw, bs).mean(dim=(2, 4)).reshape(b, -1)
            img = imresize(img / 255.0, scale=0.5, antialiasing=True) * 255.0
    feats = torch.cat(out, -1)
    bad = ~torch.isfinite(feats).all(-1)
    feats[bad] = float('nan')
    return feats, sharp


def fit_pristine(images, sharpness_frac=0.75, min_sharpness=1.0):
    """Fit the pristine MVG.

    Args:
        images: iterable of (3, H, W) RGB tensors in [0, 1], sides >= 96.
        sharpness_frac: keep blocks with sharpness >= this fraction of the image's sharpest block.
        min_sharpness: and with sharpness >= this (8-bit grey levels; drops flat blocks).
    Returns:
        dict(mu_pris_param (36,) float64, cov_pris_param (36, 36) float64, blocks int, images int).
    """
    rows, n_img = [], 0
    for x in images:
        f, s = block_features(luma255(x.unsqueeze(0)))
        f, s = f[0], s[0]
        keep = (s >= sharpness_frac * s.max()) & (s >= min_sharpness) & torch.isfinite(f).all(-1)
        rows.append(f[keep])
        n_img += 1
    feats = torch.cat(rows)
    if feats.shape[0] < 2 * FEATURES:
        raise ValueError(f'fit_pristine: only {feats.shape[0]} usable blocks from {n_img} images; '
                         f'need at least {2 * FEATURES}')
    return {'mu_pris_param': feats.mean(0), 'cov_pris_param': torch.cov(feats.T),
            'blocks': int(feats.shape[0]), 'images': n_img}


class NIQEFitted(nn.Module):
    """NIQE distance with structureless-block handling (lower = better).

    Args:
        mu_pris_param (36,), cov_pris_param (36, 36): the pristine MVG.
        flat_penalty (float): added per unit fraction of structureless blocks.
    Forward: (B, 3, H, W) RGB in [0, 1], sides >= 96 -> (B,) float32 scores >= 0, always finite.
    """

    def __init__(self, mu_pris_param=None, cov_pris_param=None, flat_penalty=100.0):
        super().__init__()
        mu = torch.zeros(FEATURES) if mu_pris_param is None else torch.as_tensor(mu_pris_param)
        cov = torch.eye(FEATURES) if cov_pris_param is None else torch.as_tensor(cov_pris_param)
        if mu.shape != (FEATURES,) or cov.shape != (FEATURES, FEATURES):
            raise ValueError(f'NIQEFitted: mu must be (36,) and cov (36, 36), got {tuple(mu.shape)} and '
                             f'{tuple(cov.shape)}')
        self.register_buffer('mu_pris_param', mu.double())
        self.register_buffer('cov_pris_param', cov.double())
        self.flat_penalty = float(flat_penalty)

    def forward(self, x):
        feats, _ = block_features(luma255(x.detach().cpu()))
        mu_p, cov_p = self.mu_pris_param.cpu(), self.cov_pris_param.cpu()
        out = []
        for f in feats:
            valid = f[torch.isfinite(f).all(-1)]
            frac_flat = 1.0 - valid.shape[0] / f.shape[0]
            if valid.shape[0] == 0:
                out.append(self.flat_penalty)
                continue
            cov_d = torch.cov(valid.T) if valid.shape[0] > 1 else torch.zeros_like(cov_p)
            diff = (mu_p - valid.mean(0)).unsqueeze(1)
            d2 = (diff.T @ torch.linalg.pinv((cov_p + cov_d) / 2) @ diff).squeeze()
            d = math.sqrt(max(float(d2), 0.0))
            if not math.isfinite(d):
                d = self.flat_penalty
            out.append(d + self.flat_penalty * frac_flat)
        return torch.tensor(out, dtype=torch.float32, device=x.device)


def build_niqe_fitted_scorer(device=None, weights='niqe-fitted', weights_path=None, pretrained=True, as_loss=False,
                             flat_penalty=100.0):
    """Scoring factory for the fitted NIQE: a frozen ``NRScorer`` (lower = better, range ~0..100, min side 96).

    Args:
        weights_path (str | None): a file of ``{mu_pris_param, cov_pris_param}`` tensors (``fit`` writes it);
            else the weights-manager entry ``weights``.
        pretrained (bool): False gives the placeholder model (mean 0, identity covariance).
        as_loss (bool): refused: NIQE is a hand-crafted statistic (optimising it games it), as pyiqa's niqe.
    """
    if as_loss:
        raise ValueError('niqe-fitted cannot be used as a loss: its block statistics are not differentiable '
                         'here and optimising them games the statistic')
    mu = cov = None
    if weights_path or pretrained:
        path = wm.resolve(weights, weights_path) if not weights_path else Path(weights_path)
        sd = wm.load_state_dict(path)
        if not isinstance(sd, dict) or 'mu_pris_param' not in sd or 'cov_pris_param' not in sd:
            raise wm.WeightsError(f'{path} has no mu_pris_param / cov_pris_param tensors')
        mu, cov = sd['mu_pris_param'], sd['cov_pris_param']
    net = NIQEFitted(mu, cov, flat_penalty=flat_penalty)
    scorer = NRScorer.for_row('niqe-fitted', net, score_range=(0.0, flat_penalty))  # the table's facts
    scorer.pretrained = mu is not None
    return scorer.to(torch.device(device) if device is not None else torch.device('cpu'))


def _read_images(roots, max_side=None):
    import numpy as np
    from PIL import Image

    exts = {'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff'}
    paths = sorted(p for r in roots for p in Path(r).iterdir() if p.suffix.lower() in exts)
    if not paths:
        raise ValueError(f'no images in {roots}')
    for p in paths:
        im = Image.open(p).convert('RGB')
        if max_side and max(im.size) > max_side:
            s = max_side / max(im.size)
            im = im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.BICUBIC)
        yield torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description='Fit the NIQE pristine model on folders of clean images.')
    sub = p.add_subparsers(dest='cmd', required=True)
    f = sub.add_parser('fit')
    f.add_argument('--dataroot', nargs='+', required=True)
    f.add_argument('--out', required=True)
    f.add_argument('--sharpness-frac', type=float, default=0.75)
    f.add_argument('--max-side', type=int, default=None, help='downscale larger images first (bicubic)')
    args = p.parse_args(argv)
    res = fit_pristine(_read_images(args.dataroot, args.max_side), args.sharpness_frac)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({'mu_pris_param': res['mu_pris_param'], 'cov_pris_param': res['cov_pris_param']}, args.out)
    print(f"fitted on {res['blocks']} blocks of {res['images']} images from {args.dataroot} -> {args.out}")


if __name__ == '__main__':
    main()
