"""Compatibility shim that lets basicsr 1.4.2 import on current torchvision.

basicsr 1.4.2 (``basicsr/data/degradations.py``) does
``from torchvision.transforms.functional_tensor import rgb_to_grayscale``. torchvision
0.17 renamed that private module to ``torchvision.transforms._functional_tensor`` and
later releases removed the old name, so ``import basicsr`` raises ModuleNotFoundError.

``install()`` appends an import finder (``RenamedModuleFinder``) to the end of ``sys.meta_path``.
It imports nothing itself: only when some code imports the old name and no other finder has it
(a torchvision without the old module) does it answer with the new module under the old name.
On an old torchvision the regular path finder finds the real module first and the shim never
acts. It never patches BasicSR's files and is idempotent. ``import iqa_plugin`` calls it first.
"""
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings

OLD_NAME = 'torchvision.transforms.functional_tensor'
NEW_NAME = 'torchvision.transforms._functional_tensor'


class AliasLoader(importlib.abc.Loader):
    """Loads ``alias`` as the already-importable module ``target`` (the same module object).

    With ``warning`` (a message), loading the alias warns ``DeprecationWarning`` once (a loaded alias stays in
    ``sys.modules``). ``get_code`` gives the target's code, so ``python -m <alias>`` runs the target
    (``iqa_plugin.moved`` uses both for the package's renamed modules).
    """

    def __init__(self, target, warning=None):
        self.target = target
        self.warning = warning
        self._spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__  # the import system overwrites __spec__; exec_module restores it
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec
        if self.warning:
            warnings.warn(self.warning, DeprecationWarning, stacklevel=2)  # importlib's frames are skipped

    def get_code(self, fullname):
        """The target's code object (``runpy`` asks for it under the alias's name)."""
        spec = importlib.util.find_spec(self.target)
        return spec.loader.get_code(self.target)


class RenamedModuleFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder answering ``aliases`` (old name -> new name) with the new module.

    Consulted last (it sits at the end of ``sys.meta_path``), so it only acts where the old name
    does not exist; it returns None when the new name does not exist either.
    """

    def __init__(self, aliases):
        self.aliases = dict(aliases)

    def find_spec(self, fullname, path=None, target=None):
        new = self.aliases.get(fullname)
        if new is None:
            return None
        try:
            if importlib.util.find_spec(new) is None:
                return None
        except (ImportError, ValueError):
            return None
        return importlib.machinery.ModuleSpec(fullname, AliasLoader(new))


def _installed():
    return next((f for f in sys.meta_path if isinstance(f, RenamedModuleFinder)), None)


def install():
    """Make ``torchvision.transforms.functional_tensor`` importable on demand, without importing
    torchvision now. Returns True when the finder was added by this call, False when it was there."""
    if _installed() is not None:
        return False
    sys.meta_path.append(RenamedModuleFinder({OLD_NAME: NEW_NAME}))
    return True


apply = install  # the name of earlier releases
