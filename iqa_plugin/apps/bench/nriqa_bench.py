"""``iqa-plugin bench nriqa``: batched candidate scoring against a per-image loop, same run, same inputs.

Scores (B, N, 3, S, S) candidates with one no-reference metric in two ways:

* ``loop`` (baseline): ``scorer(candidates[b, n])`` image by image under ``inference_mode``, the way a
  data loader would score GT candidates without a batched API;
* ``batched`` (ours): ``score_candidates(scorer, candidates, chunk_size)``: B*N images in
  ceil(B*N / chunk) forwards (channels-last input; float32, as AMO scores).

The variants alternate round by round so load from other processes hits both alike; the figure is
the median over ``--repeats`` rounds after one warm-up round. The metric is built with random weights
unless ``--pretrained`` (speed does not depend on the weights). The returned dict has ``seconds``
(median per variant), ``ratio`` (loop / batched) and ``max_abs_diff`` between the two score tables.
"""
import argparse
import statistics
import time
import warnings

import torch


def main(argv=None):
    p = argparse.ArgumentParser(prog='iqa-plugin bench nriqa', description=__doc__.split('\n')[0])
    p.add_argument('--metric', default='paq2piq', help='scoring-table NR metric (default paq2piq)')
    p.add_argument('--batch', type=int, default=4, help='B')
    p.add_argument('--candidates', type=int, default=4, help='N')
    p.add_argument('--size', type=int, default=128, help='image side S')
    p.add_argument('--chunk', type=int, default=32, help='score_candidates chunk_size')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: leave as is)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--pretrained', action='store_true', help='load the published weights (default: random)')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import iqa_plugin  # noqa: F401
    from iqa_plugin.scoring.scorer import score_candidates
    from iqa_plugin.scoring import create_metric

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.manual_seed(0)
        scorer = create_metric(args.metric, device=args.device, pretrained=args.pretrained)
    g = torch.Generator().manual_seed(0)
    cands = torch.rand(args.batch, args.candidates, 3, args.size, args.size, generator=g).to(args.device)
    name = scorer.output_names[0]
    sign = -1.0 if scorer.lower_better else 1.0

    def loop():
        with torch.inference_mode():
            return torch.stack([torch.stack([scorer(cands[b, n:n + 1])[name][0] for n in range(args.candidates)])
                                for b in range(args.batch)]) * sign

    def batched():
        return score_candidates(scorer, cands, chunk_size=args.chunk)

    def sync():
        if cands.is_cuda:
            torch.cuda.synchronize()

    variants = {'loop': loop, 'batched': batched}
    outputs = {k: f() for k, f in variants.items()}  # warm-up round
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, f in variants.items():
            sync()
            t = time.perf_counter()
            f()
            sync()
            times[k].append(time.perf_counter() - t)
    seconds = {k: statistics.median(v) for k, v in times.items()}
    diff = float((outputs['loop'].float().cpu() - outputs['batched'].cpu()).abs().max())
    print(f'metric {args.metric}, {args.batch}x{args.candidates} candidates of {args.size}x{args.size}, '
          f'device {args.device}, threads {torch.get_num_threads()}, chunk {args.chunk}')
    for k, v in seconds.items():
        print(f'  {k:8s} median {v:.4f} s over {args.repeats} rounds')
    ratio = seconds['loop'] / seconds['batched']
    print(f'  loop / batched = {ratio:.2f}x, max |score difference| = {diff:.2e}')
    return {'metric': args.metric, 'batch': args.batch, 'candidates': args.candidates, 'size': args.size,
            'device': args.device, 'threads': torch.get_num_threads(), 'seconds': seconds, 'ratio': ratio,
            'max_abs_diff': diff}


if __name__ == '__main__':
    import json
    print(json.dumps(main()))
