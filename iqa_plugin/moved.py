"""The package's renamed modules: the one table of old dotted paths and their new ones, kept importable for one
release with a ``DeprecationWarning``.

``install()`` (called by ``import iqa_plugin``, after the torchvision shim) puts ``MovedModuleFinder`` at the
front of ``sys.meta_path``. It answers only the names in ``MOVED``: importing an old name imports the new module
and binds the same module object under the old name too (``sys.modules``, the parent package's attribute), so
``import iqa_plugin.nriqa``, ``from iqa_plugin.nriqa import X`` and ``from iqa_plugin import nriqa`` work, as does
``python -m`` on an old name (``python -m iqa_plugin.distortions``, ``python -m iqa_plugin.export_weights``).
The first import of each old name warns once: "iqa_plugin.nriqa is deprecated; import
iqa_plugin.scoring.pyiqa_adapter (removed in 0.3)". The package's own code uses the new names only
(``tests/test_moved.py`` checks every row and that importing the package warns about none).
"""
import importlib.abc
import importlib.machinery
import importlib.util
import sys

from iqa_plugin.basicsr_glue.compat import AliasLoader

REMOVED_IN = '0.3'

_BENCHES = ('afine_bench', 'cli_bench', 'gt_sampling_bench', 'lora_bench', 'milo_bench', 'nriqa_bench',
            'train_step_bench')

# old dotted path -> new dotted path (the layout of 0.2: apps/, labels/, basicsr_glue/, scoring/, weights/)
MOVED = {
    'iqa_plugin.demo': 'iqa_plugin.apps.demo',
    'iqa_plugin.repro_small': 'iqa_plugin.apps.repro',
    'iqa_plugin.evaluate': 'iqa_plugin.apps.evaluate',
    'iqa_plugin.multigt_make': 'iqa_plugin.apps.multigt_make',
    'iqa_plugin.relational_vis': 'iqa_plugin.scoring.relational_vis',
    'iqa_plugin.bench': 'iqa_plugin.apps.bench',
    **{f'iqa_plugin.bench.{b}': f'iqa_plugin.apps.bench.{b}' for b in _BENCHES},
    'iqa_plugin.distortions': 'iqa_plugin.labels.distortions',
    **{f'iqa_plugin.distortions.{m}': f'iqa_plugin.labels.distortions.{m}' for m in ('ops', 'masks', 'engine', 'cli')},
    'iqa_plugin.pseudomos': 'iqa_plugin.labels.pseudomos',
    'iqa_plugin.pseudomos_cache': 'iqa_plugin.labels.pseudomos_cache',
    'iqa_plugin.pseudomos_ensemble': 'iqa_plugin.labels.pseudomos_ensemble',
    'iqa_plugin.label_free': 'iqa_plugin.labels.augment',
    'iqa_plugin.compat': 'iqa_plugin.basicsr_glue.compat',
    'iqa_plugin.utils.dist': 'iqa_plugin.basicsr_glue.dist',
    'iqa_plugin.utils.options_check': 'iqa_plugin.basicsr_glue.options_check',
    'iqa_plugin.utils.option_base': 'iqa_plugin.basicsr_glue.option_base',
    'iqa_plugin.utils.registry_scan': 'iqa_plugin.basicsr_glue.registry_scan',
    'iqa_plugin.torchscript_tensors': 'iqa_plugin.utils.torchscript_tensors',
    'iqa_plugin.export_weights': 'iqa_plugin.weights.export',
    'iqa_plugin.nriqa': 'iqa_plugin.scoring.pyiqa_adapter',
    'iqa_plugin.pyiqa_offline': 'iqa_plugin.scoring.pyiqa_offline',
    'iqa_plugin.axis_diff': 'iqa_plugin.scoring.axes',
}


def message(old):
    return f'{old} is deprecated; import {MOVED[old]} (removed in {REMOVED_IN})'


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder answering the old names of ``MOVED`` with the new modules (``AliasLoader``, warning)."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        real = importlib.util.find_spec(new)
        if real is None:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, AliasLoader(new, warning=message(fullname)),
                                              is_package=real.submodule_search_locations is not None)
        if real.submodule_search_locations is not None:  # ``python -m`` on an old package finds its __main__
            spec.submodule_search_locations = list(real.submodule_search_locations)
        return spec


def install():
    """Put the finder first on ``sys.meta_path`` (idempotent). Returns True when this call added it."""
    if any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, MovedModuleFinder())
    return True
