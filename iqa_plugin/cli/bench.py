"""``iqa-plugin bench``: performance harnesses (``iqa_plugin.apps.bench.BENCHES``).

    iqa-plugin bench --help | list      the benches, one line each
    iqa-plugin bench NAME [ARGS...]     run one (``bench NAME --help`` for its options)

Each bench measures ours and its baseline in the same run, prints its figures and ends with one JSON
line (with a ``ratio``).
"""
import json

from iqa_plugin.cli.common import CommandParser, UsageError, check_device_argv

NAME = 'bench'
HELP = 'performance harnesses (last line: one JSON object); bench --help lists them'
PASSTHROUGH = True  # the arguments after NAME go to the bench's own parser (which rejects unknown ones)
USAGE = 'iqa-plugin bench NAME [ARGS...]'


def add_parser(sub):
    return sub.add_parser(NAME, help=HELP, add_help=False)  # NAME --help goes to the bench itself


def listing():
    from iqa_plugin.apps.bench import BENCHES, describe

    w = max(len(n) for n in BENCHES)
    lines = [f'usage: {USAGE}   (iqa-plugin bench NAME --help: its options)', '',
             'Each bench times ours and its baseline in the same run; the last line is one JSON object.', '',
             'benches:']
    lines += [f'  {n.ljust(w)}  {describe(n)}' for n in sorted(BENCHES)]
    return '\n'.join(lines)


def main_argv(argv):
    import importlib

    from iqa_plugin.apps.bench import BENCHES

    argv = list(argv)
    if argv[:1] in (['-h'], ['--help']) or argv == ['list']:
        print(listing())
        return 0
    if not argv:
        raise UsageError(f"bench needs a NAME; known: {', '.join(sorted(BENCHES))} (bench --help describes them)")
    name, rest = argv[0], argv[1:]
    if name == 'list' or name.startswith('-'):  # bench itself has no option but --help; list takes no argument
        CommandParser(prog='iqa-plugin bench', usage=USAGE, add_help=False).error(
            f'unrecognized arguments: {" ".join(rest if name == "list" else [name])}')
    if name not in BENCHES:
        raise UsageError(f"unknown bench '{name}'; known: {', '.join(sorted(BENCHES))}")
    check_device_argv(rest)  # --device cuda without a GPU: one line, before the bench builds anything
    module, func = BENCHES[name].split(':')
    result = getattr(importlib.import_module(module), func)(list(rest))
    print(json.dumps(result), flush=True)
    return 0
