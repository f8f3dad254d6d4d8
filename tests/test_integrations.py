"""integrations/: pyiqa names and the Real-ESRGAN/HAT-style train script."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_tiny_options

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@pytest.mark.parametrize('name', ['milo-pseudomos', 'milo'])
def test_pyiqa_create_metric_gives_plugin_metric(name, request):
    """Through pyiqa's create_metric: the shipped milo-pseudomos (any clone) and the official MILO (its weights
    only in ../shared: skipped without it)."""
    import pyiqa

    from integrations import pyiqa_metrics
    from iqa_plugin import scoring

    added = pyiqa_metrics.register()
    assert 'milo' in added and pyiqa_metrics.register() == added  # idempotent
    assert 'afine' not in added  # pyiqa's own names are never shadowed
    assert 'milo' in pyiqa.list_models()
    kw = {}
    if name == 'milo':
        kw['weights_path'] = str(request.getfixturevalue('shared_dir') / 'weights' / 'milo' / 'MILO.pth')
    m = pyiqa.create_metric(name, device='cpu', **kw)
    assert m.lower_better
    torch.manual_seed(0)
    ref = torch.rand(2, 3, 40, 48)
    dist = (ref + 0.1 * torch.randn_like(ref)).clamp(0, 1)
    ours = scoring.create_metric(name, **kw)(dist, ref)
    got = m(dist, ref)
    assert torch.allclose(got.flatten(), next(iter(ours.values())).flatten(), atol=1e-6)
    loss = pyiqa.create_metric(name, as_loss=True, device='cpu', **kw)
    d = dist.clone().requires_grad_(True)
    loss(d, ref).backward()
    assert torch.isfinite(d.grad).all() and d.grad.abs().sum() > 0


def test_optional_import_broken_package_warns(tmp_path, monkeypatch):
    """Absent: skipped quietly. Installed but broken: skipped with a warning naming it and the reason."""
    from integrations.train_realesrgan_style import import_optional

    pkg = tmp_path / 'broken_optional_pkg_xyz'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('import missing_dependency_of_optional_xyz\n')
    (tmp_path / 'raising_optional_pkg_xyz.py').write_text("raise AttributeError('module has no attribute foo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(RuntimeWarning) as rec:
        found = import_optional(('json', 'no_such_package_xyz', 'broken_optional_pkg_xyz', 'raising_optional_pkg_xyz'))
    assert found == ['json']
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 2, msgs
    assert 'broken_optional_pkg_xyz' in msgs[0] and 'ModuleNotFoundError' in msgs[0]
    assert 'missing_dependency_of_optional_xyz' in msgs[0]  # the reason: the dependency that failed
    assert 'raising_optional_pkg_xyz' in msgs[1] and 'AttributeError: module has no attribute foo' in msgs[1]
    assert not any('no_such_package_xyz' in m for m in msgs)  # not installed: no warning


def test_realesrgan_style_train_script(tmp_path, tiny_sr):
    from integrations.train_realesrgan_style import import_optional
    assert set(import_optional(('json', 'no_such_package_xyz'))) == {'json'}
    opt = write_tiny_options(tmp_path / 'o.yml', tiny_sr, name='integration_test', iters=2, val_freq=2)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, str(REPO / 'integrations' / 'train_realesrgan_style.py'), '-opt', str(opt)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    try:
        assert r.returncode == 0, r.stderr[-3000:]
        assert (REPO / 'experiments' / 'integration_test' / 'models' / 'net_g_2.pth').is_file()
    finally:
        import shutil
        shutil.rmtree(REPO / 'experiments' / 'integration_test', ignore_errors=True)
        for p in (REPO / 'experiments').glob('integration_test_archived_*'):
            shutil.rmtree(p, ignore_errors=True)
