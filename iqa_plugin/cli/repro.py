"""``iqa-plugin repro``: the augmented-SR experiment end to end, offline (``iqa_plugin.apps.repro``).

    iqa-plugin repro --small [--out DIR] [--src DIR] [--size N] [--arch rrdb|swinir] [--iters-scale F]
                     [--tiny] [--device auto|cpu|cuda] [--threads N] [--resume] [--weights-dir DIR]

Makes train and held-out multi-GT sets (make-multigt), trains L1 pretraining, UPos, AMO and AMO+FT (LoRA
NR-IQA fine-tuning) from the shipped options/repro rows shrunk by one small-scale layer, runs them on the
held-out LQ, evaluates them with HGGT's protocol (iqa-plugin evaluate) and writes OUT/summary.md: per judge,
whether AMO beats UPos and AMO+FT beats AMO, and the PSNR costs. Everything under --out (default
experiments/repro_small): data/, options/, logs/, experiments/, results/, evaluation/, summary.md.
Nothing is downloaded; metrics whose weights are absent are skipped with a note (the official MILO
weights: --weights-dir, or $IQA_PLUGIN_WEIGHTS_DIR). About 10 min on 2 CPU cores with one torch thread (docs/repro.md).
"""
NAME = 'repro'
HELP = 'run the augmented-SR experiment end to end, offline, at small scale'


def add_parser(sub):
    import argparse

    p = sub.add_parser(NAME, help=HELP, description=__doc__.split('\n\n')[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--small', action='store_true', help='the small offline run (required: the only mode so far)')
    p.add_argument('--out', default='experiments/repro_small', metavar='DIR',
                   help='output folder (default experiments/repro_small)')
    p.add_argument('--src', metavar='DIR', help="HR images (default: scikit-image's bundled photos, as the demo)")
    p.add_argument('--size', type=int, default=256,
                   help='with --src: shorter side resized to N and centre-cropped N x N (default 256)')
    p.add_argument('--arch', choices=['rrdb', 'swinir'], default='rrdb', help='small RRDBNet (default) or SwinIR')
    p.add_argument('--iters-scale', type=float, default=1.0, metavar='F',
                   help='multiply every stage\'s iterations by F (default 1)')
    p.add_argument('--tiny', action='store_true', help='a seconds-long smoke test (tiny nets, 2 iterations per stage): checks that everything runs, '
                        'gives no verdict')
    p.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto')
    p.add_argument('--threads', type=int, default=1,
                   help="torch CPU threads (default 1: fastest on a shared machine; 0 = torch's default)")
    p.add_argument('--resume', action='store_true',
                   help='skip the stages whose final checkpoint exists (written with the same options)')
    p.add_argument('--weights-dir', metavar='DIR',
                   help='folder of extra weights files, e.g. the official MILO.pth (sets IQA_PLUGIN_WEIGHTS_DIR)')
    return p


def main(args):
    import os
    from pathlib import Path

    from iqa_plugin.cli.common import UsageError, check_device

    if not args.small:
        raise UsageError('give --small (the small offline run is the only mode so far)')
    check_device(args.device)
    if args.weights_dir is not None:
        if not Path(args.weights_dir).is_dir():
            raise UsageError(f'--weights-dir folder not found: {args.weights_dir}')
        os.environ['IQA_PLUGIN_WEIGHTS_DIR'] = str(Path(args.weights_dir).resolve())
    from iqa_plugin.apps.repro import ReproError, run

    try:
        res = run(out=args.out, src=args.src, arch=args.arch, scale='tiny' if args.tiny else 'small',
                  iters_scale=args.iters_scale, size=args.size, device=args.device, resume=args.resume,
                  threads=args.threads)
    except ReproError as e:
        raise UsageError(str(e)) from None
    print(res['summary'].read_text(encoding='utf-8'))
    print(f"repro: everything is in {res['out']}\n  summary:    {res['summary']}\n"
          f"  evaluation: {res['evaluation']} (per_method.md, per_image.md, bar_*.png, scatter_*.png)")
    return 0
