"""``iqa-plugin bench gt-sampling``: time per training iteration with AMO against UPos GT selection, same run.

One full SR training iteration, simulated with tensors (no dataset): choose one of N GT candidates per sample
with the strategy, gather them, SR forward of the LQ batch, L1 loss against the chosen GT, backward, Adam step.
Both strategies use the same network, batch (LQ (B, 3, S/scale, S/scale), candidates (B, N, 3, S, S), labels
original/positive/negative/similar) and, for AMO, the scoring-table scorer (default nr-lite) through
``gt_sampling.AMOStrategy`` (all B*N crops in one no-grad forward of ``score_candidates``).

* ``upos`` (baseline): HGGT's uniform choice among the positives;
* ``amo`` (ours): argmax of the scorer over every candidate crop.

Networks: ``rrdb`` = BasicSR's RRDBNet x4 as in ESRGAN (64 features, 23 blocks; the target setting with B=4,
S=128, N=5) and ``small`` = RRDBNet x4 with 32 features, 4 blocks. The variants alternate round by round so
load from other processes hits both alike; each figure is the median over ``--repeats`` rounds after one
warm-up round. ``scorer_share`` is the median time of AMO's ``choose`` (scoring + argmax) over the median
AMO iteration. The returned dict's ``ratio`` is AMO / UPos time per iteration of the last network run
(target <= 1.25 for rrdb); ``ratio_within`` = AMO iteration / (AMO iteration - AMO's choose + UPos's choose),
the same comparison inside AMO's own iterations, which round-to-round load on a shared machine cannot skew;
``per_arch`` holds every network's figures.
"""
import argparse
import statistics
import time
import warnings

import torch

ARCHS = {
    'small': {'num_feat': 32, 'num_block': 4, 'num_grow_ch': 16},
    'rrdb': {'num_feat': 64, 'num_block': 23, 'num_grow_ch': 32},
}


def make_batch(batch, candidates, size, scale, device, seed=0):
    """LQ (B, 3, S/scale, S/scale), candidates (B, N, 3, S, S) in [0, 1] and labels (B, N) on ``device``."""
    from iqa_plugin.data.multigt_layout import LABEL_NEGATIVE, LABEL_ORIGINAL, LABEL_POSITIVE, LABEL_SIMILAR

    g = torch.Generator().manual_seed(seed)
    cands = torch.rand(batch, candidates, 3, size, size, generator=g)
    lq = torch.nn.functional.interpolate(cands[:, 0], scale_factor=1 / scale, mode='bicubic',
                                         align_corners=False).clamp(0, 1)
    cycle = [LABEL_POSITIVE, LABEL_POSITIVE, LABEL_NEGATIVE, LABEL_SIMILAR]
    labels = torch.tensor([[LABEL_ORIGINAL] + [cycle[(k + b) % 4] for k in range(candidates - 1)]
                           for b in range(batch)], dtype=torch.int64)
    return {'lq': lq.to(device), 'gt_candidates': cands.to(device), 'gt_labels': labels,
            'group': [f'g{b}' for b in range(batch)]}


def run_arch(arch, args, device):
    """Median seconds per iteration for upos and amo, and AMO's choose time, on one network."""
    from basicsr.archs.rrdbnet_arch import RRDBNet

    from iqa_plugin.models.gt_sampling import build_gt_strategy

    torch.manual_seed(0)
    net = RRDBNet(3, 3, scale=args.scale, **ARCHS[arch]).to(device)
    optim = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.9, 0.99))
    batch = make_batch(args.batch, args.candidates, args.size, args.scale, device)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        strategies = {'upos': build_gt_strategy({'type': 'upos'}),
                      'amo': build_gt_strategy({'type': 'amo', 'scorer': {'type': args.scorer}}, device=device)}
    cands = batch['gt_candidates']
    rows = torch.arange(cands.shape[0], device=device)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize()

    def iteration(strategy):
        sync()
        t0 = time.perf_counter()
        idx = strategy.choose(batch).to(device)
        sync()
        t_choose = time.perf_counter() - t0
        gt = cands[rows, idx]
        out = net(batch['lq'])
        loss = torch.nn.functional.l1_loss(out, gt)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sync()
        return time.perf_counter() - t0, t_choose

    for s in strategies.values():  # warm-up round
        iteration(s)
    times = {k: [] for k in strategies}
    choose = {k: [] for k in strategies}
    for _ in range(args.repeats):
        for k, s in strategies.items():
            t, tc = iteration(s)
            times[k].append(t)
            choose[k].append(tc)
    seconds = {k: statistics.median(v) for k, v in times.items()}
    choose_s = {k: statistics.median(v) for k, v in choose.items()}
    ratio = seconds['amo'] / seconds['upos']
    share = choose_s['amo'] / seconds['amo']
    # the same AMO iterations with UPos's choice instead of the scoring: free of round-to-round load noise
    within = seconds['amo'] / (seconds['amo'] - choose_s['amo'] + choose_s['upos'])
    sr = seconds['amo'] - choose_s['amo']
    print(f'{arch}: RRDBNet x{args.scale} {ARCHS[arch]}, {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M params')
    for k in strategies:
        print(f'  {k:5s} median {seconds[k]:.4f} s/iter (choose {choose_s[k] * 1e3:.1f} ms) over {args.repeats} rounds')
    print(f'  amo / upos = {ratio:.3f}x (within the AMO iterations: {within:.3f}x); '
          f'scorer share of the AMO iteration {share:.1%} '
          f'(scoring {choose_s["amo"] * 1e3:.1f} ms, SR step {sr * 1e3:.1f} ms)')
    return {'seconds': seconds, 'choose_seconds': choose_s, 'ratio': ratio, 'ratio_within': within,
            'scorer_share': share}


def main(argv=None):
    p = argparse.ArgumentParser(prog='iqa-plugin bench gt-sampling', description=__doc__.split('\n')[0])
    p.add_argument('--arch', choices=['small', 'rrdb', 'both'], default='both',
                   help='SR network(s): small, rrdb (ESRGAN RRDBNet, the target setting) or both (default)')
    p.add_argument('--batch', type=int, default=4, help='B (default 4)')
    p.add_argument('--candidates', type=int, default=5, help='N GT candidates incl. the original (default 5)')
    p.add_argument('--size', type=int, default=128, help='GT crop side S (default 128)')
    p.add_argument('--scale', type=int, default=4)
    p.add_argument('--scorer', default='nr-lite', help='scoring-table NR metric of AMO (default nr-lite)')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: leave as is)')
    p.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    p.add_argument('--quick', action='store_true', help='small network only, B=2, S=64, 2 rounds (a smoke run)')
    args = p.parse_args(argv)
    if args.quick:
        args.arch, args.batch, args.size, args.repeats = 'small', 2, 64, 2
    if args.size % args.scale:
        p.error(f'--size {args.size} must be a multiple of --scale {args.scale}')
    if args.candidates < 2:
        p.error('--candidates must be >= 2 (the original and at least one positive)')
    if args.threads:
        torch.set_num_threads(args.threads)
    import iqa_plugin

    iqa_plugin.register()
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    archs = ['small', 'rrdb'] if args.arch == 'both' else [args.arch]
    print(f'B={args.batch}, N={args.candidates}, GT crops {args.size}x{args.size}, x{args.scale}, scorer '
          f'{args.scorer}, device {device}, threads {torch.get_num_threads()}')
    per_arch = {a: run_arch(a, args, device) for a in archs}
    last = per_arch[archs[-1]]
    return {'bench': 'gt-sampling', 'batch': args.batch, 'candidates': args.candidates, 'size': args.size,
            'scorer': args.scorer, 'device': str(device), 'threads': torch.get_num_threads(), 'arch': archs[-1],
            'ratio': last['ratio'], 'ratio_within': last['ratio_within'], 'scorer_share': last['scorer_share'],
            'per_arch': per_arch}


if __name__ == '__main__':
    import json
    print(json.dumps(main()))
