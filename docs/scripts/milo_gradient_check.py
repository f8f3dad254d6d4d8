"""Compare MILOLoss gradients with and without ``detach_mask`` and a short pixel-space descent.

    python docs/scripts/milo_gradient_check.py --weights-path ../shared/weights/milo/MILO.pth

On a crop of the official fixture pair (../shared/fixtures/milo, or a synthetic pair with --synthetic):
1. the gradient w.r.t. the distorted image of the plain loss (``detach_mask=False``) and of the detached
   one: cosine similarity and norm ratio;
2. ``--steps`` Adam steps on the pixels of the distorted image for each variant (same lr), then the
   official MILO quality score, raw error and PSNR against the reference, and the time taken.
"""
import argparse
import math
import time
from pathlib import Path

import torch

import iqa_plugin  # noqa: F401
from iqa_plugin.archs.milo_arch import get_frozen_milo
from iqa_plugin.losses.milo_loss import MILOLoss
from iqa_plugin.utils.image import read_image


def psnr(a, b):
    return float(10 * torch.log10(1.0 / ((a - b) ** 2).mean()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--weights-path', default=None)
    parser.add_argument('--fixtures', default=str(Path(__file__).resolve().parents[3] / 'shared' / 'fixtures' / 'milo'))
    parser.add_argument('--synthetic', action='store_true')
    parser.add_argument('--crop', type=int, default=128)
    parser.add_argument('--steps', type=int, default=100)
    parser.add_argument('--lr', type=float, default=0.01)
    parser.add_argument('--threads', type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.synthetic:
        ref = torch.nn.functional.avg_pool2d(torch.rand(1, 3, args.crop, args.crop), 5, 1, 2, count_include_pad=False)
        dist = (ref + 0.08 * torch.randn_like(ref)).clamp(0, 1)
    else:
        ref = read_image(Path(args.fixtures) / 'ref.png')
        dist = read_image(Path(args.fixtures) / 'dist.png')
        h0, w0 = (ref.shape[2] - args.crop) // 2, (ref.shape[3] - args.crop) // 2
        ref, dist = (x[..., h0:h0 + args.crop, w0:w0 + args.crop].contiguous() for x in (ref, dist))
    net = get_frozen_milo('milo', args.weights_path, 3, 'cpu')
    losses = {'detach_mask=True': MILOLoss(weights_path=args.weights_path, detach_mask=True),
              'detach_mask=False': MILOLoss(weights_path=args.weights_path, detach_mask=False)}

    grads = {}
    for name, loss in losses.items():
        d = dist.clone().requires_grad_(True)
        loss(d, ref).backward()
        grads[name] = d.grad.flatten()
    gd, gf = grads['detach_mask=True'], grads['detach_mask=False']
    cos = float(torch.nn.functional.cosine_similarity(gd, gf, dim=0))
    print(f'gradient cosine(detached, full) = {cos:.3f}; |full| / |detached| = {float(gf.norm() / gd.norm()):.2f}')

    with torch.no_grad():
        start = net(dist, ref)
    print(f'start: quality {float(start.quality_score):.4f}, raw {float(start.raw_error):.5f}, '
          f'PSNR {psnr(dist, ref):.2f} dB')
    print(f"{'variant':<20}{'quality':>10}{'raw error':>12}{'PSNR dB':>10}{'seconds':>10}")
    results = {'cosine': cos}
    for name, loss in losses.items():
        x = dist.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=args.lr)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            opt.zero_grad()
            loss(x.clamp(0, 1), ref).backward()
            opt.step()
        secs = time.perf_counter() - t0
        with torch.no_grad():
            xc = x.clamp(0, 1)
            out = net(xc, ref)
        results[name] = dict(quality=float(out.quality_score), raw=float(out.raw_error), psnr=psnr(xc, ref), s=secs)
        print(f'{name:<20}{float(out.quality_score):>10.4f}{float(out.raw_error):>12.5f}{psnr(xc, ref):>10.2f}'
              f'{secs:>10.1f}')
    assert math.isfinite(cos)
    return results


if __name__ == '__main__':
    main()
