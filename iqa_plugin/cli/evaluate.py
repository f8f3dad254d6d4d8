"""``iqa-plugin evaluate``: score folders of SR results against ground truths (``iqa_plugin.apps.evaluate``).

    iqa-plugin evaluate --results DIR [DIR ...] --gt DIR [--labels DIR] [--metrics psnr,ssim,...]
                        [--out DIR] [--device cpu|cuda] [--batch-size N]

One method per results folder (its name); a result ``<gtname>_<suffix>.png`` (or ``<gtname>.png``) is scored
against GT ``<gtname>``. ``--gt`` is a plain folder of GTs (single-GT) or HGGT's layout: a root with
images/ and labels/, or an image set (original/, 01/, ...) with ``--labels`` (its A/ B/ C/ folder); with
labels, HGGT's multi-GT protocol (full-reference metrics against every positive GT, averaged per image,
then over images). Metrics whose weights are not on this machine are skipped with a note. Writes
per_method.{md,csv}, per_image.{md,csv}, results.json, bar_<metric>.png and scatter_<nr>_vs_psnr.png to
``--out`` (default: evaluation/) and prints the per-method table.
"""
NAME = 'evaluate'
HELP = 'per-image and per-method tables and plots of SR results against (multi-)GTs'


def add_parser(sub):
    import argparse

    from iqa_plugin.apps.evaluate import DEFAULT_METRICS  # no torch at import (the module imports it lazily)

    p = sub.add_parser(NAME, help=HELP, description=__doc__.split('\n\n')[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--results', nargs='+', required=True, metavar='DIR', help='one folder of SR outputs per method')
    p.add_argument('--gt', required=True, metavar='DIR', help='GT folder, HGGT root or HGGT image set')
    p.add_argument('--labels', metavar='DIR', help="HGGT labels folder (A/, B/, C/) of the set given as --gt")
    p.add_argument('--metrics', default=','.join(DEFAULT_METRICS),
                   help=f"comma-separated (default {','.join(DEFAULT_METRICS)})")
    p.add_argument('--out', default='evaluation', metavar='DIR', help='output folder (default evaluation/)')
    p.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    p.add_argument('--batch-size', type=int, default=8, help='images per no-reference forward (default 8)')
    return p


def main(args):
    import sys
    import warnings

    from iqa_plugin.cli.common import UsageError, check_device
    from iqa_plugin.apps.evaluate import EvaluateError, EvaluateWarning, evaluate

    check_device(args.device)
    if args.batch_size < 1:
        raise UsageError(f'--batch-size must be >= 1, got {args.batch_size}')

    default_show = warnings.showwarning

    def show(message, category, *a, **k):
        if issubclass(category, EvaluateWarning):
            print(f'iqa-plugin evaluate: warning: {message}', file=sys.stderr)
        else:
            default_show(message, category, *a, **k)

    with warnings.catch_warnings():
        warnings.simplefilter('always', EvaluateWarning)
        warnings.showwarning = show
        try:
            res = evaluate(args.results, args.gt, labels=args.labels, metrics=args.metrics, out=args.out,
                           device=args.device, batch_size=args.batch_size)
        except EvaluateError as e:
            raise UsageError(str(e)) from None
    from pathlib import Path
    print(Path(args.out, 'per_method.md').read_text(encoding='utf-8'))
    print(f'evaluate: {len(res["files"])} files written to {args.out}')
    return 0
