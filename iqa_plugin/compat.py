"""Compatibility shim that lets basicsr 1.4.2 import on current torchvision.

basicsr 1.4.2 (``basicsr/data/degradations.py``) does
``from torchvision.transforms.functional_tensor import rgb_to_grayscale``. torchvision
0.17 renamed that private module to ``torchvision.transforms._functional_tensor`` and
later releases removed the old name, so ``import basicsr`` raises ModuleNotFoundError.

``apply()`` registers the new module under the old name in ``sys.modules`` before
BasicSR is imported. It changes nothing when the old module still exists, never
patches BasicSR's files, and is idempotent. ``import iqa_plugin`` calls it first.
"""
import importlib
import sys

_OLD = 'torchvision.transforms.functional_tensor'
_NEW = 'torchvision.transforms._functional_tensor'


def apply():
    """Make ``torchvision.transforms.functional_tensor`` importable. Returns True if aliased."""
    if _OLD in sys.modules:
        return False
    try:
        importlib.import_module(_OLD)
        return False  # old torchvision: nothing to do
    except ModuleNotFoundError:
        pass
    sys.modules[_OLD] = importlib.import_module(_NEW)
    return True
