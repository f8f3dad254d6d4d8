"""iqa-plugin: modern image-quality assessment for BasicSR training.

Importing the package installs the torchvision compatibility shim (see ``basicsr_glue.compat``; it imports
nothing until the old torchvision name is asked for) and the finder of the package's renamed modules (see
``moved``: old import paths keep working for one release, with a DeprecationWarning), and then calls
``register()``, which imports the plugin's archs, losses, metrics, datasets and models so that they are in
BasicSR's registries.

The ``iqa-plugin`` command's own process skips that import (it would load torch, BasicSR and pyiqa,
seconds, for ``--help``): its subcommands call ``register()`` when they need the registries.
``IQA_PLUGIN_LAZY_REGISTER`` overrides the choice: ``1`` defers registration in any process, ``0``
registers at import even in the command (the eager path, the baseline of ``iqa-plugin bench cli``).
"""
import os
import sys

from iqa_plugin.basicsr_glue import compat

compat.install()

from iqa_plugin import moved  # noqa: E402

moved.install()

from iqa_plugin.version import __version__  # noqa: E402

__all__ = ['__version__', 'register', 'is_registered']

CLI_NAMES = ('iqa-plugin', 'iqa-plugin.exe', 'iqa-plugin-script.py')  # console-script file names
CLI_MODULES = ('iqa_plugin.cli',)  # ``python -m`` targets that are the command

_registered = False


def register():
    """Import the plugin's ``archs``, ``data``, ``losses``, ``metrics`` and ``models`` packages, whose
    registry scans fill BasicSR's registries. Idempotent; returns None."""
    global _registered
    if _registered:
        return
    from iqa_plugin import archs, data, losses, metrics, models  # noqa: F401
    _registered = True


def is_registered():
    return _registered


def _in_cli_process():
    """True when this interpreter is running the ``iqa-plugin`` command (console script, or
    ``python -m iqa_plugin.cli``); then registration waits for the subcommand."""
    flag = os.environ.get('IQA_PLUGIN_LAZY_REGISTER', '').strip().lower()
    if flag in ('1', 'true', 'yes', 'on'):
        return True
    if flag in ('0', 'false', 'no', 'off'):
        return False
    if sys.argv and os.path.basename(sys.argv[0]) in CLI_NAMES:
        return True
    if not sys.argv or sys.argv[0] != '-m':  # '-m' while ``python -m`` imports the target's packages
        return False
    orig = list(getattr(sys, 'orig_argv', ()))  # Python >= 3.10: the interpreter's own arguments
    return any(a == '-m' and i + 1 < len(orig) and orig[i + 1] in CLI_MODULES for i, a in enumerate(orig))


if not _in_cli_process():
    register()
