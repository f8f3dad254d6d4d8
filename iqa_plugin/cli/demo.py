"""``iqa-plugin demo``: train a small x4 SR model on bundled images (``iqa_plugin.demo.run_demo``)."""
NAME = 'demo'
HELP = 'train a small x4 SR model on bundled images'


def add_parser(sub):
    p = sub.add_parser(NAME, help=HELP, description=HELP)
    p.add_argument('--arch', choices=['swinir', 'rrdb'], default='swinir')
    p.add_argument('--iters', type=int, default=None, help='training iterations (default: the demo option file)')
    p.add_argument('--val-freq', type=int, default=None)
    p.add_argument('--out', default='iqa_plugin_demo', help='output folder (default ./iqa_plugin_demo)')
    p.add_argument('--device', choices=['auto', 'cpu'], default='auto')
    return p


def main(args, rest=()):
    from iqa_plugin.cli.common import UsageError
    from iqa_plugin.demo import run_demo

    if rest:
        raise UsageError(f'unrecognized arguments: {" ".join(rest)}')
    run_demo(arch=args.arch, iters=args.iters, out=args.out, val_freq=args.val_freq, device=args.device)
    return 0
