"""iqa-plugin: modern image-quality assessment for BasicSR training.

Importing the package installs the torchvision compatibility shim (see ``basicsr_glue.compat``; it imports
nothing until the old torchvision name is asked for) and the finder of the package's renamed modules (see
``moved``: old import paths keep working for one release, with a DeprecationWarning), and then calls
``register()``, which imports the plugin's archs, losses, metrics, datasets and models so that they are in
BasicSR's registries.

Registration at import is unconditional but for one explicit switch: with ``IQA_PLUGIN_LAZY_REGISTER=1``
(also ``true``/``yes``/``on``) in the environment the import leaves it to a later ``register()``. The
``iqa-plugin`` command's entry module (top-level ``iqa_plugin_cli``, outside this package) sets it while it
imports the package, so ``--help`` and ``weights list`` load no torch, BasicSR or pyiqa; its subcommands call
``register()`` when they need the registries. Nothing else (argv, the script's name) changes what the import
does; ``python -m iqa_plugin.cli`` therefore registers eagerly (``python -m iqa_plugin_cli`` is the fast form).
"""
import os

from iqa_plugin.basicsr_glue import compat

compat.install()

from iqa_plugin import moved  # noqa: E402

moved.install()

from iqa_plugin.version import __version__  # noqa: E402

__all__ = ['__version__', 'register', 'is_registered']

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


def _lazy_requested():
    """True when ``IQA_PLUGIN_LAZY_REGISTER`` asks this process to defer registration to ``register()``."""
    return os.environ.get('IQA_PLUGIN_LAZY_REGISTER', '').strip().lower() in ('1', 'true', 'yes', 'on')


if not _lazy_requested():
    register()
