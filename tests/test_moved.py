"""The package's renamed modules (``iqa_plugin.moved.MOVED``): every old dotted path still imports, as the same
module object as its new path, with one ``DeprecationWarning`` naming the new path; ``python -m`` on an old name
runs the new module; and the package's own code uses the new names only (importing every module and registering
warns about none of them).

Each check runs in a fresh interpreter, where no old name has been imported yet.
"""
import json
import os
import subprocess
import sys

import pytest

from iqa_plugin.moved import MOVED, REMOVED_IN, message

ENV = {**os.environ, 'IQA_PLUGIN_LAZY_REGISTER': '1', 'OMP_NUM_THREADS': '1'}

ROWS_SCRIPT = r'''
import importlib, json, sys, warnings
import iqa_plugin
from iqa_plugin.moved import MOVED
out = {}
for old, new in MOVED.items():
    target = importlib.import_module(new)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        exec(f'import {old}')  # an import statement, as a user's code has it (the warning points at it)
        alias = sys.modules[old]
        again = importlib.import_module(old)  # cached: no second warning
    parent, _, leaf = old.rpartition('.')
    ours = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)
            and 'is deprecated; import iqa_plugin.' in str(w.message)]
    out[old] = {'same': alias is target and again is target and sys.modules[old] is target,
                'attribute': getattr(sys.modules[parent], leaf, None) is target,
                'warnings': ours, 'filename': [w.filename for w in caught][:1]}
print(json.dumps(out))
'''


@pytest.fixture(scope='module')
def rows():
    r = subprocess.run([sys.executable, '-c', ROWS_SCRIPT], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('old', sorted(MOVED))
def test_old_path_is_the_new_module_and_warns_once(rows, old):
    row = rows[old]
    assert row['same'] and row['attribute'], row
    assert row['warnings'] == [message(old)], row
    assert message(old) == f'{old} is deprecated; import {MOVED[old]} (removed in {REMOVED_IN})'
    assert row['filename'] == ['<string>'], row  # the warning points at the importing code, not at importlib


def test_table_names_real_modules_and_no_old_file_remains():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for old, new in MOVED.items():
        assert importlib.util.find_spec(new) is not None, new
        rel = Path(*old.split('.'))
        assert not (root / rel.with_suffix('.py')).exists() and not (root / rel / '__init__.py').exists(), old


def test_from_imports_of_old_paths():
    """``from old import name``, ``from iqa_plugin import old_leaf`` and ``import old as x`` all give the new
    module's objects (one interpreter, as a user's script would)."""
    code = '''
import warnings
warnings.simplefilter('ignore', DeprecationWarning)
from iqa_plugin.nriqa import build_pyiqa_scorer, score_candidates, NRScorer
from iqa_plugin.scoring.pyiqa_adapter import build_pyiqa_scorer as b
from iqa_plugin.scoring.scorer import score_candidates as s, NRScorer as n
assert build_pyiqa_scorer is b and score_candidates is s and NRScorer is n
from iqa_plugin import pseudomos_ensemble, export_weights
import iqa_plugin.labels.pseudomos_ensemble as pe, iqa_plugin.weights.export as ex
assert pseudomos_ensemble is pe and export_weights is ex
import iqa_plugin.distortions.engine as e1
from iqa_plugin.labels.distortions import engine as e2
from iqa_plugin.distortions import AXES
import iqa_plugin.labels.distortions as d
assert e1 is e2 and AXES is d.AXES
from iqa_plugin.utils.options_check import OptionError
from iqa_plugin.basicsr_glue.options_check import OptionError as O
assert OptionError is O
print('ok')
'''
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-3000:]


@pytest.mark.parametrize('old, usage', [('iqa_plugin.distortions', 'iqa_plugin.labels.distortions'),
                                        ('iqa_plugin.export_weights', 'iqa_plugin.weights.export')])
def test_python_m_on_an_old_name(old, usage):
    r = subprocess.run([sys.executable, '-m', old, '--help'], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0 and f'python -m {usage}' in r.stdout, r.stderr[-3000:]


def test_the_package_itself_uses_no_old_path():
    """Importing every module of the package (and registering) imports no old name and raises no warning of ours."""
    code = r'''
import importlib, pkgutil, sys, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    import iqa_plugin
    iqa_plugin.register()
    names = [m.name for m in pkgutil.walk_packages(iqa_plugin.__path__, 'iqa_plugin.')
             if not m.name.endswith('__main__')]
    for name in names:
        importlib.import_module(name)
from iqa_plugin.moved import MOVED
ours = [str(w.message) for w in caught if 'is deprecated; import iqa_plugin.' in str(w.message)]
old = sorted(set(MOVED) & set(sys.modules))
print(len(names), ours, old)
assert len(names) > 80 and not ours and not old, (ours, old)
'''
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
