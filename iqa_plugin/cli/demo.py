"""``iqa-plugin demo``: train a small x4 SR model on bundled images (``iqa_plugin.apps.demo.run_demo``)."""
NAME = 'demo'
HELP = 'train a small x4 SR model on bundled images'


def add_parser(sub):
    p = sub.add_parser(NAME, help=HELP, description=HELP)
    p.add_argument('--arch', choices=['swinir', 'rrdb'], default='swinir')
    p.add_argument('--iters', type=int, default=None, help='training iterations (default: the demo option file)')
    p.add_argument('--val-freq', type=int, default=None)
    p.add_argument('--out', default='iqa_plugin_demo', help='output folder (default ./iqa_plugin_demo)')
    p.add_argument('--device', choices=['auto', 'cpu'], default='auto')
    p.add_argument('--threads', type=int, default=None, metavar='N',
                   help="torch CPU threads (default 1, or $OMP_NUM_THREADS when set; 0 = torch's default, one per "
                        "core). 1 is the measured fastest for the demo's small nets on a shared machine (README)")
    return p


def main(args):
    import os

    from iqa_plugin.cli.common import UsageError

    threads = args.threads
    if threads is None:  # the default: 1, unless the user chose with OMP_NUM_THREADS (torch follows it)
        threads = None if os.environ.get('OMP_NUM_THREADS') else 1
    elif threads < 0:
        raise UsageError(f'--threads must be >= 0, got {threads}')
    from iqa_plugin.apps.demo import run_demo

    run_demo(arch=args.arch, iters=args.iters, out=args.out, val_freq=args.val_freq, device=args.device,
             threads=threads)
    return 0
