"""The ``iqa-plugin`` command (console script ``iqa-plugin``, or ``python -m iqa_plugin_cli``).

    iqa-plugin train -opt YAML [--launcher none|pytorch|slurm] [--auto_resume] [--debug]
    iqa-plugin score --metric NAME [--ref PATH] --dist PATH [--weights PATH] [--json]
    iqa-plugin score --metric relational --ref R (--dist D [--save-maps DIR] | --compare A B)
    iqa-plugin score-gts -opt YAML [--out PATH]  (the sma/smp GT score cache)
    iqa-plugin weights list|fetch NAME|verify [NAME ...]
    iqa-plugin lora merge --base NET_G --adapter ADAPTER --out PATH
    iqa-plugin bench NAME [ARGS...]            (bench --help lists them; bench NAME --help: its ARGS)
    iqa-plugin demo [--arch swinir|rrdb] [--iters N] [--out DIR]
    iqa-plugin run script.py [ARGS...]         (scripts that import basicsr before iqa_plugin)
    iqa-plugin make-multigt --src HR_DIR --out DIR [--set NAME] [--seed S] [--size N]
    iqa-plugin evaluate --results DIR [DIR ...] --gt DIR [--labels DIR] [--metrics M,...] [--out DIR]
    iqa-plugin repro --small [--out DIR] [--src DIR] [--arch rrdb|swinir] [--tiny] [--resume]
    iqa-plugin diff A B [--ref GT] [--out DIR] [--json] | diff --nets NET_A NET_B -opt YAML  (axis by axis)

One module per subcommand (``train``, ``score``, ``score_gts``, ``weights``, ``bench``, ``demo``, ``run``,
``make_multigt``, ``evaluate``, ``repro``, ``diff``), each with
``NAME``, ``HELP``, ``add_parser(subparsers)`` and ``main(args)`` (or ``main_argv(argv)`` for a
``PASSTHROUGH`` command whose arguments belong to someone else: ``train`` to BasicSR's parser, ``bench NAME``
to the bench's, ``run`` to the script); ``common`` holds what they share.
They import nothing from this package module. The console script's entry module ``iqa_plugin_cli`` (top
level, outside the package) sets ``IQA_PLUGIN_LAZY_REGISTER=1`` while it imports this package, so
``import iqa_plugin`` does not register in the command's process: the subcommands that need BasicSR's
registries call ``iqa_plugin.register()``, and ``--help`` and ``weights list`` import no torch.
``python -m iqa_plugin.cli`` registers at import (correct, seconds slower to start).

Errors in the input print one line ``iqa-plugin: error: ...`` and exit with status 2; bugs keep their
traceback and exit with status 1 (``common.is_input_error``; ``IQA_PLUGIN_TRACEBACK=1`` shows every
traceback).
"""
import sys

from iqa_plugin.cli import (bench, demo, diff, evaluate, lora, make_multigt, repro, run, score, score_gts, train,
                            weights)
from iqa_plugin.cli.common import CommandParser, UsageError, run_with_error_policy

SUBCOMMANDS = (train, score, score_gts, weights, lora, bench, demo, run, make_multigt, evaluate, repro, diff)

__all__ = ['build_parser', 'dispatch', 'main', 'UsageError', 'SUBCOMMANDS']


def build_parser():
    parser = CommandParser(prog='iqa-plugin', description='IQA losses, validators and training for BasicSR')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND', parser_class=CommandParser)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def dispatch(argv):
    """Run the command line ``argv`` (without the program name); returns the exit code.

    Every command line is parsed exactly: an argument that no parser knows is argparse's error (the
    command's usage, then one line ``iqa-plugin CMD: error: unrecognized arguments: ...``; SystemExit(2)),
    and a ``PASSTHROUGH`` command hands its arguments to the parser that owns them, which does the same.
    Exceptions propagate (``main`` applies the error policy); argparse errors raise SystemExit(2)."""
    argv = list(argv)
    by_name = {m.NAME: m for m in SUBCOMMANDS}
    if argv and getattr(by_name.get(argv[0]), 'PASSTHROUGH', False):
        return by_name[argv[0]].main_argv(argv[1:])
    args = build_parser().parse_args(argv)  # exact: an unknown argument is argparse's error (status 2)
    return by_name[args.command].main(args)


def main(argv=None):
    """Console entry: ``dispatch`` under the error policy of ``common``, then ``sys.exit``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.exit(run_with_error_policy(dispatch, argv))
