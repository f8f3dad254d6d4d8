"""``iqa-plugin bench milo``: MILO loss forward+backward against LPIPS-VGG, same run, same inputs.

Every variant computes a loss on a (B, 3, S, S) batch with ``requires_grad`` on the distorted input
and runs ``backward()``; one timed iteration = forward + backward. Variants are timed round-robin
(one iteration of each per round) so that load from other processes hits them alike; the figure is
the median over ``--repeats`` rounds after ``--warmup`` rounds.

Variants:
* ``reference``: a plain functional MILO (concatenation, full gradient through the mask network),
  written independently of ``milo_arch`` as the parity baseline;
* ``full``: ``MILOLoss(detach_mask=False, channels_last=False)``;  ``full_cl``: the same in channels-last
  format;
* ``detach``: ``MILOLoss(detach_mask=True, channels_last=False)``: mask under ``no_grad``, gradient only
  through ``|ref - dist|``;  ``detach_cl``: the same in channels-last format, which is what the default
  ``MILOLoss()`` runs on CPU;
* ``lpips_vgg``: ``lpips.LPIPS(net='vgg')`` with random weights (nothing is downloaded; the speed is
  that of the pretrained network).

The returned dict has ``ms`` (median ms per iteration for each variant), ``default`` (the variant
``MILOLoss()`` uses), ``ratio`` (LPIPS-VGG / default MILO), ``ratios`` (LPIPS-VGG / each MILO variant)
and ``max_score_diff`` (largest |loss - reference loss| over the MILO variants, per image).
"""
import argparse
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

MILO_VARIANTS = ('reference', 'full', 'full_cl', 'detach', 'detach_cl')
DEFAULT_VARIANT = 'detach_cl'  # what MILOLoss() does on CPU (detach_mask=True, channels_last='auto')


def reference_milo_error(sd, dist, ref, num_scales=3):
    """Plain MILO raw error per image (B,), straight from the published description, full gradient."""

    def mask_finder(x):
        for i in range(5):
            x = F.conv2d(x, sd[f'mask_finder_1.netBasic.{2 * i}.weight'], sd[f'mask_finder_1.netBasic.{2 * i}.bias'],
                         padding=1)
            x = F.relu(x) if i < 4 else torch.sigmoid(x)
        return x

    dists, refs = [dist], [ref]
    for _ in range(num_scales):
        dists.insert(0, F.avg_pool2d(dists[0], 2))
        refs.insert(0, F.avg_pool2d(refs[0], 2))
    mask = dist.new_zeros(dist.shape[0], 1, dists[0].shape[2] // 2, dists[0].shape[3] // 2)
    for d, r in zip(dists, refs):
        up = F.interpolate(mask, scale_factor=2, mode='bilinear', align_corners=True)
        if up.shape[2] != d.shape[2]:
            up = F.pad(up, [0, 0, 0, 1], mode='replicate')
        if up.shape[3] != d.shape[3]:
            up = F.pad(up, [0, 1, 0, 0], mode='replicate')
        mask = mask_finder(torch.cat([d, r, up], 1)) + up
    return (mask * (ref - dist).abs()).mean(dim=(1, 2, 3))


def _make_inputs(batch, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(batch, 3, size, size, generator=g)
    # smooth content plus noise, so the mask is not trivial
    ref = F.avg_pool2d(ref, 5, stride=1, padding=2, count_include_pad=False)
    dist = (ref + 0.08 * torch.randn(batch, 3, size, size, generator=g)).clamp(0, 1)
    return dist, ref


def build_variants(weights_path=None, with_lpips=True, variants=None):
    """name -> callable(dist, ref) returning per-image losses (B,)."""
    from iqa_plugin.archs.milo_arch import resolve_milo_weights
    from iqa_plugin.losses.milo_loss import MILOLoss
    from iqa_plugin.scoring import freeze
    from iqa_plugin.weights import load_state_dict

    variants = list(variants or MILO_VARIANTS + (('lpips_vgg',) if with_lpips else ()))
    fns = {}
    if 'reference' in variants:
        sd = load_state_dict(resolve_milo_weights('milo', weights_path, 3))
        fns['reference'] = lambda d, r: reference_milo_error(sd, d, r)
    opts = {'full': dict(detach_mask=False, channels_last=False),
            'full_cl': dict(detach_mask=False, channels_last=True),
            'detach': dict(detach_mask=True, channels_last=False),
            'detach_cl': dict(detach_mask=True, channels_last=True)}
    for name, o in opts.items():
        if name in variants:
            fns[name] = MILOLoss(weights_path=weights_path, reduction='none', **o)
    if 'lpips_vgg' in variants:
        import lpips
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            net = freeze(lpips.LPIPS(net='vgg', pretrained=False, pnet_rand=True, verbose=False))
        fns['lpips_vgg'] = lambda d, r: net(d, r, normalize=True).flatten()
    unknown = set(variants) - set(fns)
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(MILO_VARIANTS + ('lpips_vgg',))}")
    return fns


def time_variants(fns, dist, ref, repeats=5, warmup=1):
    """Round-robin timing: name -> list of seconds per forward+backward iteration (after warm-up)."""
    times = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            d = dist.clone().requires_grad_(True)
            t0 = time.perf_counter()
            fn(d, ref).mean().backward()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
    return times


def score_differences(fns, dist, ref):
    """Largest |loss - reference loss| per image for each MILO variant (needs 'reference')."""
    with torch.no_grad():
        base = fns['reference'](dist, ref)
        return {k: float((fn(dist, ref) - base).abs().max()) for k, fn in fns.items()
                if k not in ('reference', 'lpips_vgg')}


def profile_variant(fn, dist, ref, rows=8):
    """torch.profiler table (self CPU time) of one forward+backward."""
    from torch.profiler import ProfilerActivity, profile
    d = dist.clone().requires_grad_(True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(d, ref).mean().backward()
    return prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='iqa-plugin bench milo', description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    parser.add_argument('--repeats', type=int, default=5, help='timed rounds (median reported)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds first')
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--size', type=int, default=256)
    parser.add_argument('--variants', default=','.join(MILO_VARIANTS + ('lpips_vgg',)),
                        help='comma-separated subset of ' + ', '.join(MILO_VARIANTS + ('lpips_vgg',)))
    parser.add_argument('--weights-path', default=None, help='MILO.pth (default: the weights manager)')
    parser.add_argument('--profile', default=None, metavar='VARIANT',
                        help='also print the top operators of one forward+backward of VARIANT (torch.profiler)')
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error('--repeats must be >= 1 and --warmup >= 0')
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(',') if v.strip()]
    if 'lpips_vgg' not in variants or DEFAULT_VARIANT not in variants:
        parser.error(f"--variants must include lpips_vgg and {DEFAULT_VARIANT} (the ratio compares them)")
    if 'reference' not in variants:
        variants.insert(0, 'reference')

    dist, ref = _make_inputs(args.batch, args.size)
    fns = build_variants(args.weights_path, variants=variants)
    diffs = score_differences(fns, dist, ref)
    times = time_variants(fns, dist, ref, repeats=args.repeats, warmup=args.warmup)
    ms = {k: 1000.0 * statistics.median(v) for k, v in times.items()}
    lp = ms['lpips_vgg']
    ratios = {k: lp / v for k, v in ms.items() if k != 'lpips_vgg'}

    print(f'MILO loss vs LPIPS-VGG, forward+backward, batch {args.batch}, {args.size}x{args.size}, CPU, '
          f'{torch.get_num_threads()} threads, median of {args.repeats} (warm-up {args.warmup})')
    print(f"{'variant':<12}{'ms/iter':>12}{'LPIPS/variant':>16}{'max |diff| vs ref':>20}")
    for k in fns:
        r = f'{ratios[k]:.2f}x' if k in ratios else '-'
        d = f'{diffs[k]:.2e}' if k in diffs else ('0' if k == 'reference' else '-')
        mark = '  <- MILOLoss() default' if k == DEFAULT_VARIANT else ''
        print(f'{k:<12}{ms[k]:>12.1f}{r:>16}{d:>20}{mark}')
    if args.profile:
        if args.profile not in fns:
            parser.error(f'--profile: {args.profile} is not among the variants run')
        print(profile_variant(fns[args.profile], dist, ref))
    result = {
        'batch': args.batch, 'size': args.size, 'threads': torch.get_num_threads(), 'repeats': args.repeats,
        'ms': {k: round(v, 2) for k, v in ms.items()},
        'default': DEFAULT_VARIANT,
        'ratio': round(ratios[DEFAULT_VARIANT], 3),
        'ratios': {k: round(v, 3) for k, v in ratios.items()},
        'max_score_diff': max(diffs.values()) if diffs else 0.0,
        'score_diffs': diffs,
    }
    print(f"ratio LPIPS-VGG / MILO ({DEFAULT_VARIANT}): {result['ratio']:.2f}x; "
          f"max |loss - reference| {result['max_score_diff']:.2e}")
    return result


if __name__ == '__main__':
    import json

    import iqa_plugin  # noqa: F401  (registries, torchvision shim)
    print(json.dumps(main()))
