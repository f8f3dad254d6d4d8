"""Layout rules of ``iqa_plugin``, checked statically with ``ast`` (nothing is imported):

* no import cycles between the package's modules, counting imports inside functions (a function-level
  import hides a cycle from Python, not from a reader);
* no module uses another module's underscore-private names (``from iqa_plugin.x import _y`` or
  ``x._y`` where ``x`` is an imported ``iqa_plugin`` module);
* the library (every module outside ``apps/`` and ``cli/``) never imports an application (``apps/``) or the
  command line (``cli/``);
* the package root holds at most ``MAX_ROOT_MODULES`` modules, and a module over ``LONG_FILE`` lines says why
  it is one file (a paragraph starting "Why one file" in its docstring).

The known exceptions are the explicit allow-lists below, each with its reason, to shrink as the
modules are reworked. The remaining ones are printed (``pytest -s tests/test_layout.py``), and so are
entries that no longer match anything: delete those.

The graph has an edge ``a -> b`` for every ``import``/``from ... import`` in ``a`` naming module ``b``
(``from pkg import sub`` names the submodule, ``from pkg import name`` the package). It does not
follow string lookups (``scoring.METRICS`` factory paths, the registry scans of the ``archs``/``data``/
``losses``/``metrics``/``models`` package inits): those are tables, resolved at call time.
"""
import ast
import fnmatch
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / 'iqa_plugin'

# Cycles still to remove. An entry allows a strongly connected component of the import graph when every
# one of its modules matches one of the entry's patterns (fnmatch).
ALLOWED_CYCLES = {}

# Underscore-private names still used across modules: (importing module, owning module, name).
ALLOWED_PRIVATE = set()

# The applications and the command line: built on the library, never imported by it.
APPLICATION_PACKAGES = ('apps', 'cli')
MAX_ROOT_MODULES = 8
LONG_FILE = 450


# ------------------------------------------------------------------------------------------------
# The checker (also run on a small synthetic package below, so that it is known to find what it should)
# ------------------------------------------------------------------------------------------------
def module_files(package_dir):
    """{dotted module name: path} of every ``.py`` file under ``package_dir`` (a package's is its
    ``__init__.py``)."""
    package_dir = Path(package_dir)
    root = package_dir.parent
    out = {}
    for path in sorted(package_dir.rglob('*.py')):
        parts = list(path.relative_to(root).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts = parts[:-1]
        out['.'.join(parts)] = path
    return out


def _known_prefix(name, modules):
    """Longest prefix of dotted ``name`` that is a module in ``modules``, or None."""
    while name and name not in modules:
        name = name.rpartition('.')[0]
    return name or None


def _from_base(current, node, modules):
    """Absolute module named by an ``ImportFrom`` node in module ``current`` (relative imports resolved)."""
    if not node.level:
        return node.module or ''
    is_package = modules[current].name == '__init__.py'
    base = current if is_package else current.rpartition('.')[0]
    for _ in range(node.level - 1):
        base = base.rpartition('.')[0]
    return f'{base}.{node.module}' if node.module else base


def imports_of(current, tree, modules):
    """Every package-internal import in ``tree``, at any depth: list of (target module, name, lineno, bound).

    ``name`` is the imported attribute for ``from target import name`` when ``name`` is not itself a
    module, else None. ``bound`` is the local name the statement binds to a module (or None).
    """
    top = current.split('.')[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                target = _known_prefix(a.name, modules)
                if target:
                    # `import a.b.c` binds `a` to the top package, `import a.b.c as x` binds x to a.b.c
                    found.append((target, None, node.lineno,
                                  (a.asname, target) if a.asname else (a.name.split('.')[0], a.name.split('.')[0])))
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(current, node, modules)
            if base != top and not base.startswith(top + '.'):
                continue
            for a in node.names:
                sub = f'{base}.{a.name}'
                if sub in modules:
                    found.append((sub, None, node.lineno, (a.asname or a.name, sub)))
                else:
                    target = _known_prefix(base, modules)
                    if target:
                        found.append((target, a.name, node.lineno, None))
    return found


def import_graph(package_dir):
    """(modules, edges): edges[a] = set of modules that module a imports (self-imports dropped)."""
    modules = module_files(package_dir)
    edges = {m: set() for m in modules}
    for m, path in modules.items():
        for target, _, _, _ in imports_of(m, ast.parse(path.read_text(), str(path)), modules):
            if target != m:
                edges[m].add(target)
    return modules, edges


def cycles(edges):
    """Strongly connected components with more than one module (each a sorted tuple), sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):  # Tarjan's algorithm; the graph is ~100 modules, recursion depth is no issue
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(tuple(sorted(comp)))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def cycle_path(component, edges):
    """One closed path through ``component`` (for the failure message), e.g. 'a -> b -> a'."""
    comp = set(component)
    start = component[0]
    path, seen, v = [start], {start}, start
    while True:
        v = min(w for w in edges[v] if w in comp)
        path.append(v)
        if v in seen:
            return ' -> '.join(path[path.index(v):])
        seen.add(v)


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _private(name):
    return name.startswith('_') and not name.startswith('__')


def private_uses(package_dir):
    """Sorted set of (module, owner, name, lineno) where ``module`` uses ``owner``'s private ``name``."""
    modules = module_files(package_dir)
    out = set()
    for m, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        found = imports_of(m, tree, modules)
        aliases = {}
        for target, name, lineno, bound in found:
            if name and _private(name) and target != m:
                out.add((m, target, name, lineno))
            if bound:
                aliases[bound[0]] = bound[1]
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            parts = _dotted(node.value)
            if not parts or parts[0] not in aliases:
                continue
            owner = aliases[parts[0]]
            for p in parts[1:]:  # `iqa_plugin.x.y._z`: walk down submodules
                if f'{owner}.{p}' not in modules:
                    owner = None
                    break
                owner = f'{owner}.{p}'
            if owner and owner != m:
                out.add((m, owner, node.attr, node.lineno))
    return sorted(out)


def library_imports_of_applications(edges, top):
    """Sorted (importer, imported) for every import of an application module (``<top>.apps``/``<top>.cli`` and
    below) by a library module (any module outside them, the package's ``__init__`` included)."""
    apps = tuple(f'{top}.{name}' for name in APPLICATION_PACKAGES)

    def is_app(m):
        return any(m == a or m.startswith(a + '.') for a in apps)

    return sorted((a, b) for a, targets in edges.items() if not is_app(a) for b in targets if is_app(b))


def _allowed_by(component):
    for key, patterns in ALLOWED_CYCLES.items():
        if all(any(fnmatch.fnmatchcase(m, p) for p in patterns) for m in component):
            return key
    return None


# ------------------------------------------------------------------------------------------------
# The rules on iqa_plugin
# ------------------------------------------------------------------------------------------------
def test_no_import_cycles():
    modules, edges = import_graph(PACKAGE_DIR)
    assert len(modules) > 40 and 'iqa_plugin.labels.distortions.engine' in modules  # the scan sees the package
    found = cycles(edges)
    bad, allowed = [], {}
    for comp in found:
        key = _allowed_by(comp)
        if key is None:
            bad.append(f'{", ".join(comp)}: {cycle_path(comp, edges)}')
        else:
            allowed.setdefault(key, []).append(comp)
    for key, comps in allowed.items():
        print(f'allowed import cycle [{key}]: ' + '; '.join(cycle_path(c, edges) for c in comps))
    for key in sorted(set(ALLOWED_CYCLES) - set(allowed)):
        print(f'ALLOWED_CYCLES[{key!r}] matches no cycle any more: delete it')
    assert not bad, 'import cycles (function-level imports included):\n' + '\n'.join(bad)


def test_no_private_names_across_modules():
    uses = private_uses(PACKAGE_DIR)
    bad = [u for u in uses if u[:3] not in ALLOWED_PRIVATE]
    for m, owner, name, line in uses:
        if (m, owner, name) in ALLOWED_PRIVATE:
            print(f'allowed private use: {m}:{line} uses {owner}.{name}')
    for entry in sorted(ALLOWED_PRIVATE - {u[:3] for u in uses}):
        print(f'ALLOWED_PRIVATE entry {entry} matches nothing any more: delete it')
    assert not bad, 'underscore-private names used across modules (make them public where they are defined):\n' \
        + '\n'.join(f'{m}:{line} uses {owner}.{name}' for m, owner, name, line in bad)


def test_library_never_imports_applications():
    modules, edges = import_graph(PACKAGE_DIR)
    assert 'iqa_plugin.apps.demo' in modules and 'iqa_plugin.apps.bench.lora_bench' in modules
    bad = library_imports_of_applications(edges, 'iqa_plugin')
    assert not bad, 'library modules importing apps/ or cli/ (move the shared code into the library):\n' + \
        '\n'.join(f'{a} -> {b}' for a, b in bad)


def test_package_root_and_long_files():
    root = sorted(p.stem for p in PACKAGE_DIR.glob('*.py'))
    assert len(root) <= MAX_ROOT_MODULES, root
    long = []
    for m, path in module_files(PACKAGE_DIR).items():
        text = path.read_text(encoding='utf-8')
        doc = ast.get_docstring(ast.parse(text)) or ''
        if len(text.splitlines()) > LONG_FILE and '\nWhy one file' not in '\n' + doc:
            long.append(f'{path.relative_to(PACKAGE_DIR.parent)}: {len(text.splitlines())} lines')
    assert not long, f'modules over {LONG_FILE} lines without a "Why one file" paragraph (split them or say why):\n' \
        + '\n'.join(long)


def test_layout_of_the_reworked_modules():
    """The module splits that are done: the distortion package, the pseudo-MOS layers."""
    modules, edges = import_graph(PACKAGE_DIR)
    for sub in ('ops', 'masks', 'engine', 'cli'):
        assert f'iqa_plugin.labels.distortions.{sub}' in modules
    # the ensemble and the cache I/O sit below the dataset, which sits below the builder / command line
    low = {'iqa_plugin.labels.pseudomos_ensemble', 'iqa_plugin.labels.pseudomos_cache'}
    assert low <= edges['iqa_plugin.data.pseudomos_dataset']
    assert 'iqa_plugin.data.pseudomos_dataset' in edges['iqa_plugin.labels.pseudomos']
    for low in ('iqa_plugin.labels.pseudomos_ensemble', 'iqa_plugin.labels.pseudomos_cache'):
        assert not {m for m in edges[low] if 'pseudomos' in m}, low


# ------------------------------------------------------------------------------------------------
# The checker itself, on a synthetic package
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def toy_package(tmp_path):
    pkg = tmp_path / 'toy'
    (pkg / 'sub').mkdir(parents=True)
    files = {
        '__init__.py': 'from toy.a import public\n',
        'a.py': 'import os\n\ndef public():\n    from toy.sub import b  # hidden: toy.a -> toy.sub.b\n    return b\n',
        'sub/__init__.py': '',
        'sub/b.py': 'from ..a import public  # relative: toy.sub.b -> toy.a\nfrom toy import c\n\n'
                    'def f():\n    return c._secret + c.ok\n',
        'c.py': '_secret = 1\nok = 2\n',
        'd.py': 'import toy.sub.b as bb\nfrom toy.c import _secret\nfrom toy.c import ok\n\n'
                'def g():\n    import toy.c\n    return bb._x, toy.c._other, toy.c.__name__\n',
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    return pkg


def test_checker_finds_hidden_cycles(toy_package):
    modules, edges = import_graph(toy_package)
    assert set(modules) == {'toy', 'toy.a', 'toy.sub', 'toy.sub.b', 'toy.c', 'toy.d'}
    assert edges['toy.a'] == {'toy.sub.b'} and edges['toy.sub.b'] == {'toy.a', 'toy.c'}
    assert edges['toy.d'] == {'toy.sub.b', 'toy.c'}
    assert cycles(edges) == [('toy.a', 'toy.sub.b')]
    assert cycle_path(('toy.a', 'toy.sub.b'), edges) == 'toy.a -> toy.sub.b -> toy.a'


def test_checker_finds_library_imports_of_applications(tmp_path):
    pkg = tmp_path / 'toy2'
    (pkg / 'apps').mkdir(parents=True)
    (pkg / 'cli').mkdir()
    files = {
        '__init__.py': '',
        'lib.py': 'def f():\n    from toy2.apps import tool  # in a function: still a violation\n    return tool\n',
        'core.py': 'X = 1\n',
        'apps/__init__.py': '',
        'apps/tool.py': 'from toy2 import core\n',
        'cli/__init__.py': 'from toy2.apps import tool\n',  # the command line may import the applications
        'cli/run.py': 'import toy2.lib\n',
        'helper.py': 'import toy2.cli.run as r\n',  # nor may the library import the command line
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    _, edges = import_graph(pkg)
    assert library_imports_of_applications(edges, 'toy2') == [('toy2.helper', 'toy2.cli.run'),
                                                             ('toy2.lib', 'toy2.apps.tool')]


def test_checker_finds_private_uses(toy_package):
    uses = {u[:3] for u in private_uses(toy_package)}
    assert uses == {('toy.sub.b', 'toy.c', '_secret'), ('toy.d', 'toy.c', '_secret'),
                    ('toy.d', 'toy.sub.b', '_x'), ('toy.d', 'toy.c', '_other')}


def test_conftest_is_loaded_once():
    """pytest imports tests/conftest.py as the module ``conftest`` (tests/ is on the path); test files import its
    helpers the same way (``from conftest import ...``): ``tests.conftest`` would execute a second copy."""
    import sys

    tests_dir = Path(__file__).resolve().parent
    for path in sorted(tests_dir.glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            names = ([node.module] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert 'tests.conftest' not in names and 'tests' not in names, f'{path.name}:{node.lineno}'
    conftest = (tests_dir / 'conftest.py').resolve()
    copies = [name for name, m in list(sys.modules.items())
              if getattr(m, '__file__', None) and Path(m.__file__).resolve() == conftest]
    assert copies == ['conftest'], copies


def test_no_issue_tracker_references():
    """Code, docs and tests say what a thing is, not which tracker entry asked for it (a tracker number, with or
    without '#', or 'the' tracker entry's goals): a reader of the repository cannot see the tracker."""
    import re

    word = 'iss' + 'ue'  # spelled apart so that this test does not match itself
    pattern = re.compile(rf'\b{word}s?\s*#?\d|\({word}\b|\bthe {word}\b|{word}-\d|#\d+ item', re.IGNORECASE)
    root = PACKAGE_DIR.parent
    files = [root / 'README.md', *root.joinpath('docs').rglob('*.md'), *root.joinpath('docs').rglob('*.py')]
    for folder in ('iqa_plugin', 'tests', 'scripts', 'integrations', 'options'):
        files += [p for p in root.joinpath(folder).rglob('*') if p.suffix in ('.py', '.md', '.sh', '.yml', '.yaml')]
    hits = [f'{p.relative_to(root)}:{i}: {line.strip()}' for p in files
            for i, line in enumerate(p.read_text(encoding='utf-8', errors='replace').splitlines(), 1)
            if pattern.search(line)]
    assert len(files) > 100 and not hits, '\n'.join(hits)
