"""``iqa-plugin bench``: performance harnesses (``iqa_plugin.bench.BENCHES``).

    iqa-plugin bench --help | list      the benches, one line each
    iqa-plugin bench NAME [ARGS...]     run one (``bench NAME --help`` for its options)

Each bench measures ours and its baseline in the same run, prints its figures and ends with one JSON
line (with a ``ratio``).
"""
import json

from iqa_plugin.cli.common import UsageError, check_device_argv

NAME = 'bench'
HELP = 'performance harnesses (last line: one JSON object); bench --help lists them'


def add_parser(sub):
    p = sub.add_parser(NAME, help=HELP, add_help=False)  # NAME --help goes to the bench itself
    p.add_argument('name', nargs='?')
    return p


def listing():
    from iqa_plugin.bench import BENCHES, describe

    w = max(len(n) for n in BENCHES)
    lines = ['usage: iqa-plugin bench NAME [ARGS...]   (iqa-plugin bench NAME --help: its options)', '',
             'Each bench times ours and its baseline in the same run; the last line is one JSON object.', '',
             'benches:']
    lines += [f'  {n.ljust(w)}  {describe(n)}' for n in sorted(BENCHES)]
    return '\n'.join(lines)


def main(args, rest=()):
    import importlib

    from iqa_plugin.bench import BENCHES

    if args.name in (None, 'list') and (args.name == 'list' or {'-h', '--help'} & set(rest)):
        print(listing())
        return 0
    if args.name is None:
        raise UsageError(f"bench needs a NAME; known: {', '.join(sorted(BENCHES))} (bench --help describes them)")
    if args.name not in BENCHES:
        raise UsageError(f"unknown bench '{args.name}'; known: {', '.join(sorted(BENCHES))}")
    check_device_argv(rest)  # --device cuda without a GPU: one line, before the bench builds anything
    module, func = BENCHES[args.name].split(':')
    result = getattr(importlib.import_module(module), func)(list(rest))
    print(json.dumps(result), flush=True)
    return 0
