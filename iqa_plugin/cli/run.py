"""``iqa-plugin run``: run a Python script or module with the plugin in place before its first line.

    iqa-plugin run script.py [ARGS...]          as ``python script.py ARGS...``
    iqa-plugin run -m package.module [ARGS...]  as ``python -m package.module ARGS...``

For code that imports ``basicsr`` before ``iqa_plugin`` (BasicSR's own scripts and tests do): on a
current torchvision, ``import basicsr`` fails before such code reaches ``import iqa_plugin``. Here the
torchvision shim is installed and the plugin registered into BasicSR's registries first, then the
script runs as ``__main__`` with ``sys.argv`` = [script, ARGS...] and its folder first on ``sys.path``.
Its exceptions keep their traceback (exit status 1) and its ``sys.exit`` code is the command's.
"""
import os
import sys
import traceback

from iqa_plugin.cli.common import CommandParser, UsageError

NAME = 'run'
HELP = 'run a Python script (or -m module) with the shim and registrations in place first'
PASSTHROUGH = True  # everything after the script belongs to the script


def add_parser(sub):
    return sub.add_parser(NAME, help=HELP, add_help=False)


def main_argv(argv):
    import runpy

    import iqa_plugin

    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__.strip())
        return 0 if argv else 2
    if argv[0].startswith('-') and argv[0] != '-m':  # run's own options end at the script: only -m and --help
        CommandParser(prog='iqa-plugin run', usage='%(prog)s script.py [ARGS...] | -m module [ARGS...]',
                      add_help=False).error(f'unrecognized arguments: {argv[0]}')
    if argv[0] == '-m':
        if len(argv) < 2:
            raise UsageError('run -m needs a module name')
        target, args = argv[1], argv[2:]
    else:
        target, args = argv[0], argv[1:]
        if not os.path.isfile(target):
            raise FileNotFoundError(f'script not found: {target}')
    iqa_plugin.register()
    old_argv, old_path0 = sys.argv, sys.path[0] if sys.path else None
    try:
        if argv[0] == '-m':
            sys.argv = [target, *args]  # runpy replaces argv[0] with the module's file
            sys.path.insert(0, os.getcwd())
            runpy.run_module(target, run_name='__main__', alter_sys=True)
        else:
            sys.argv = [target, *args]
            sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
            runpy.run_path(target, run_name='__main__')
    except Exception:  # noqa: BLE001  (the script's own error: shown as Python would show it)
        traceback.print_exc()
        return 1
    finally:
        sys.argv = old_argv
        if sys.path and old_path0 is not None and sys.path[0] != old_path0:
            sys.path.pop(0)
    return 0
