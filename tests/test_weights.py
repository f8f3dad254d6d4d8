"""The weights manager: resolution order, hash checks, offline errors, download with local files."""
import hashlib
import os
import pickle

import pytest
import torch

from iqa_plugin import weights
from iqa_plugin.weights import WeightEntry, WeightsError


@pytest.fixture
def fake_entry(tmp_path, monkeypatch):
    """A registered entry whose 'download' URL is a local file (file://)."""
    src = tmp_path / 'src' / 'fake.pth'
    src.parent.mkdir()
    torch.save({'w': torch.arange(6.0)}, src)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    entry = WeightEntry(name='fake', filename='fake.pth', url=src.as_uri(), sha256=sha, license='test')
    monkeypatch.setitem(weights.WEIGHTS, 'fake', entry)
    monkeypatch.delenv('IQA_PLUGIN_OFFLINE', raising=False)
    return entry, src


def test_explicit_path_wins_and_is_hash_checked(fake_entry, tmp_path):
    entry, src = fake_entry
    assert weights.resolve('fake', path=src) == src
    bad = tmp_path / 'bad.pth'
    torch.save({'w': torch.zeros(6)}, bad)
    with pytest.raises(WeightsError, match='sha256 mismatch'):
        weights.resolve('fake', path=bad)
    with pytest.raises(WeightsError, match='not found'):
        weights.resolve('fake', path=tmp_path / 'missing.pth')


def test_env_dir_before_cache(fake_entry, tmp_path, monkeypatch):
    entry, src = fake_entry
    d = tmp_path / 'envdir'
    d.mkdir()
    (d / 'fake.pth').write_bytes(src.read_bytes())
    monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(d))
    assert weights.resolve('fake') == d / 'fake.pth'


def test_download_to_cache_with_hash(fake_entry):
    entry, src = fake_entry
    got = weights.resolve('fake')
    assert got == weights.cache_dir() / 'fake.pth'
    assert got.read_bytes() == src.read_bytes()
    assert weights.load_state_dict(got)['w'].tolist() == list(range(6))
    # second call finds the cached copy
    assert weights.resolve('fake') == got


def test_corrupt_download_leaves_nothing(fake_entry, monkeypatch, tmp_path):
    entry, src = fake_entry
    truncated = tmp_path / 'trunc.pth'
    truncated.write_bytes(src.read_bytes()[:40])
    monkeypatch.setitem(weights.WEIGHTS, 'fake', WeightEntry(**{**entry.__dict__, 'url': truncated.as_uri()}))
    with pytest.raises(WeightsError, match='sha256 mismatch'):
        weights.resolve('fake')
    assert not list(weights.cache_dir().glob('fake.pth*'))


def test_truncated_cached_file_is_an_error_not_random_weights(fake_entry):
    entry, src = fake_entry
    weights.cache_dir().mkdir(parents=True, exist_ok=True)
    (weights.cache_dir() / 'fake.pth').write_bytes(src.read_bytes()[:10])
    with pytest.raises(WeightsError, match='sha256 mismatch'):
        weights.resolve('fake')


def test_offline_message_names_file_url_and_folder(fake_entry, monkeypatch):
    entry, src = fake_entry
    monkeypatch.setenv('IQA_PLUGIN_OFFLINE', '1')
    with pytest.raises(WeightsError) as e:
        weights.resolve('fake')
    msg = str(e.value)
    assert 'fake.pth' in msg and entry.url in msg and str(weights.cache_dir()) in msg
    assert '\n' not in msg


def test_failed_download_gives_offline_message(fake_entry, monkeypatch, tmp_path):
    entry, src = fake_entry
    monkeypatch.setitem(weights.WEIGHTS, 'fake',
                        WeightEntry(**{**entry.__dict__, 'url': (tmp_path / 'gone.pth').as_uri()}))
    with pytest.raises(WeightsError, match='download failed'):
        weights.resolve('fake')


def test_official_entries_have_urls_and_hashes():
    for name in ('milo', 'milo-latent', 'clip-vit-b-32'):
        e = weights.get_entry(name)
        assert e.url.startswith('https://') and len(e.sha256) == 64 and e.license
    with pytest.raises(WeightsError, match="unknown weights 'nope'"):
        weights.get_entry('nope')


def test_official_milo_file_matches_published_hash(shared_dir):
    p = shared_dir / 'weights' / 'milo' / 'MILO.pth'
    assert weights.resolve('milo', path=p) == p


def test_load_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))

    p = tmp_path / 'evil.pth'
    with open(p, 'wb') as f:
        pickle.dump({'x': Evil()}, f)
    with pytest.raises(WeightsError, match='cannot read weights file'):
        weights.load_state_dict(p)


def test_official_entries_are_pinned():
    """Every downloadable entry has a sha256, or says why not; OpenAI's CLIP URL carries its own hash."""
    for e in weights.WEIGHTS.values():
        if e.url:
            assert len(e.sha256) == 64 or e.unverified, f'{e.name}: no sha256 and no reason given'
            assert not (e.sha256 and e.unverified), e.name
    clip = weights.get_entry('clip-vit-b-32')
    assert clip.url.split('/')[-2] == clip.sha256  # the path segment OpenAI's clip.load() checks


# ---------------------------------------------------------------------------------------- light import, places
def test_weights_module_needs_no_torch_and_finds_torchs_hub_dir(tmp_path):
    """The weights manager imports without torch/numpy and computes torch.hub.get_dir() like torch does."""
    script = (
        'import importlib.util, json, os, sys\n'
        f'spec = importlib.util.spec_from_file_location("w", {str(weights.__file__)!r})\n'
        'm = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n'
        'heavy = sorted(k for k in ("torch", "numpy", "basicsr") if k in sys.modules)\n'
        'out = {"heavy": heavy, "hub": [], "locate": str(m.locate("milo-pseudomos"))}\n'
        'for env in json.loads(sys.argv[1]):\n'
        '    for k in ("TORCH_HOME", "XDG_CACHE_HOME"):\n'
        '        os.environ.pop(k, None)\n'
        '    os.environ.update(env)\n'
        '    out["hub"].append(str(m.torch_hub_dir()))\n'
        'print(json.dumps(out))\n')
    envs = [{'TORCH_HOME': str(tmp_path / 'th')}, {'XDG_CACHE_HOME': str(tmp_path / 'xdg')}, {}]
    import json
    import subprocess
    import sys

    res = subprocess.run([sys.executable, '-c', script, json.dumps(envs)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out['heavy'] == []
    assert out['locate'] == str(weights.PACKAGE_WEIGHTS_DIR / 'milo_pseudomos.pth')
    saved = {k: os.environ.get(k) for k in ('TORCH_HOME', 'XDG_CACHE_HOME')}
    try:
        for env, got in zip(envs, out['hub']):
            for k in saved:
                os.environ.pop(k, None)
            os.environ.update(env)
            assert got == torch.hub.get_dir()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def test_locate_never_downloads_and_check_available(fake_entry, monkeypatch):
    entry, src = fake_entry  # online, with a file:// URL
    assert weights.locate('fake') is None
    assert not weights.cache_dir().exists() or not list(weights.cache_dir().iterdir())
    assert weights.status('fake')[2] == 'missing'
    monkeypatch.setenv('IQA_PLUGIN_OFFLINE', '1')
    with pytest.raises(WeightsError) as e:
        weights.check_available('fake')
    msg = str(e.value)
    assert '\n' not in msg and 'fake.pth' in msg and entry.url in msg
    assert str(weights.cache_dir() / 'fake.pth') in msg and 'offline' in msg
    monkeypatch.delenv('IQA_PLUGIN_OFFLINE')
    got = weights.check_available('fake')  # online: fetched and checked
    assert weights.locate('fake') == got == weights.cache_dir() / 'fake.pth'
    assert weights.status('fake')[2] == 'ok' and weights.status('fake', verify=False)[2] == 'present'
    got.write_bytes(b'x' * 10)
    assert weights.locate('fake') == got and weights.status('fake')[2] == 'hash mismatch'


def test_download_file_is_atomic_and_checks_hash(tmp_path, monkeypatch):
    monkeypatch.delenv('IQA_PLUGIN_OFFLINE')
    src = tmp_path / 'src.bin'
    src.write_bytes(b'abc' * 1000)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / 'out' / 'f.bin'
    assert weights.download_file(src.as_uri(), dest, sha) == dest and dest.read_bytes() == src.read_bytes()
    dest.unlink()
    with pytest.raises(WeightsError, match='sha256 mismatch') as e:
        weights.download_file(src.as_uri(), dest, '0' * 64)
    assert src.as_uri() in str(e.value) and list(dest.parent.iterdir()) == []
    with pytest.raises(WeightsError, match='download failed') as e:
        weights.download_file((tmp_path / 'gone').as_uri(), dest, what='weights for x', searched=[dest])
    assert str(dest) in str(e.value) and list(dest.parent.iterdir()) == []


def test_nriqa_files_go_through_the_same_downloader(tmp_path, monkeypatch):
    from iqa_plugin.scoring import pyiqa_adapter as nriqa

    src = tmp_path / 'musiq_koniq_ckpt-e95806b9.pth'
    src.write_bytes(b'weights')
    wf = nriqa.WeightFile(src.as_uri(), 'pyiqa')
    assert wf.expected_path() == weights.torch_hub_dir() / 'pyiqa' / src.name
    with pytest.raises(WeightsError, match='offline') as e:  # conftest: offline
        nriqa.resolve_file('musiq', wf)
    assert str(wf.expected_path()) in str(e.value) and src.as_uri() in str(e.value)
    monkeypatch.delenv('IQA_PLUGIN_OFFLINE')
    with pytest.raises(WeightsError, match='not available locally'):
        nriqa.resolve_file('musiq', wf, allow_download=False)
    assert nriqa.resolve_file('musiq', wf) == wf.expected_path()
    assert wf.expected_path().read_bytes() == b'weights'


def test_nriqa_locate_files_never_downloads(tmp_path, monkeypatch):
    from iqa_plugin.scoring import pyiqa_adapter as nriqa

    monkeypatch.delenv('IQA_PLUGIN_OFFLINE')  # online: still no download
    found, missing = nriqa.locate_files('musiq')
    assert found == [] and len(missing) == 1
    wf, searched = missing[0]
    assert searched == [wf.expected_path()] and not wf.expected_path().exists()
    env = tmp_path / 'env'
    env.mkdir()
    (env / wf.filename).write_bytes(b'w')
    monkeypatch.setenv('IQA_PLUGIN_WEIGHTS_DIR', str(env))
    assert nriqa.locate_files('musiq') == ([env / wf.filename], [])


# ---------------------------------------------------------------------------------------- manifest
def test_shipped_manifest_validates_and_matches_files():
    """The shipped manifest follows the schema, lists every packaged entry, and its sha256/size are the files'."""
    manifest = weights.read_manifest()
    packaged = {e.filename for e in weights.WEIGHTS.values() if e.packaged}
    assert set(manifest) == packaged == {f.name for f in weights.PACKAGE_WEIGHTS_DIR.glob('*.pth')}
    for fname, rec in manifest.items():
        f = weights.PACKAGE_WEIGHTS_DIR / fname
        assert f.is_file(), f'{f} is not shipped'
        assert weights.sha256sum(f) == rec['sha256'] and f.stat().st_size == rec['size'], fname
        assert (weights.PACKAGE_WEIGHTS_DIR / rec['log']).is_file()
        assert rec['export_command'].startswith('python -m iqa_plugin.weights.export --name ')
        # trained networks: a BasicSR training option file; niqe-fitted: the NIQE fit (not a training run)
        assert ('iqa-plugin train -opt options/metrics/' in rec['command']
                or 'python -m iqa_plugin.archs.niqe_fitted_arch fit --dataroot ' in rec['command']), rec['command']


def _valid_record():
    return {'sha256': 'a' * 64, 'size': 10, 'command': 'iqa-plugin train -opt x.yml',
            'export_command': 'python -m iqa_plugin.weights.export --name x', 'log': 'x_train.log',
            'version': '0.1.0', 'trained': '2026-01-02', 'source_checkpoint': 'c.pth'}


@pytest.mark.parametrize('change, key', [
    (lambda r: r.pop('sha256'), 'sha256'),
    (lambda r: r.pop('export_command'), 'export_command'),
    (lambda r: r.update(size='10'), 'size'),
    (lambda r: r.update(size=True), 'size'),
    (lambda r: r.update(size=0), 'size'),
    (lambda r: r.update(version=1), 'version'),
    (lambda r: r.update(sha256='A' * 64), 'sha256'),
    (lambda r: r.update(trained='yesterday'), 'trained'),
    (lambda r: r.update(command=' '), 'command'),
    (lambda r: r.update(extra='x'), 'extra'),
])
def test_invalid_manifest_is_rejected_naming_the_key(change, key):
    assert weights.validate_manifest({'x.pth': _valid_record()})
    rec = _valid_record()
    change(rec)
    with pytest.raises(WeightsError, match=f"entry 'x.pth': .*'{key}'"):
        weights.validate_manifest({'x.pth': rec})


def test_invalid_manifest_shapes():
    with pytest.raises(WeightsError, match='expected an object'):
        weights.validate_manifest([])
    with pytest.raises(WeightsError, match="entry 'x.pth': expected an object"):
        weights.validate_manifest({'x.pth': 'abc'})
    with pytest.raises(WeightsError, match='plain .pth file name'):
        weights.validate_manifest({'../x.pth': _valid_record()})


# ---------------------------------------------------------------------------------------- exporter
@pytest.mark.parametrize('name, opt', [('milo-pseudomos', 'options/metrics/train_milo_pseudomos.yml'),
                                       ('nr-lite', 'options/metrics/train_nr_lite.yml'),
                                       ('relational', 'options/metrics/train_relational_stage2.yml')])
def test_one_exporter_for_every_packaged_entry(name, opt, tmp_path):
    """Re-exporting a shipped file gives the same tensors, weights_only-loadable, with a valid manifest record."""
    from iqa_plugin.weights.export import main

    repo = weights.PACKAGE_WEIGHTS_DIR.parents[2]  # iqa_plugin/weights/files -> the repository
    entry = weights.get_entry(name)
    shipped = weights.PACKAGE_WEIGHTS_DIR / entry.filename
    for stage in (1, 2):
        (tmp_path / f'train_{stage}_x.log').write_text(f'stage {stage}\n')
    out = tmp_path / 'out'
    argv = ['--name', name, '--checkpoint', str(shipped), '--opt', str(repo / opt), '--log',
            str(tmp_path / 'train_1_*.log'), str(tmp_path / 'train_2_x.log'), '--command', 'iqa-plugin train -opt y.yml',
            '--out-dir', str(out)]
    assert main(argv) == 0
    dest = out / entry.filename
    got, ref = weights.load_state_dict(dest), weights.load_state_dict(shipped)
    assert list(got) == list(ref)
    for k in ref:
        assert (got[k] == ref[k]) if k == 'config' else torch.equal(got[k], ref[k]), k
    rec = weights.read_manifest(out / 'manifest.json')[entry.filename]
    assert rec['sha256'] == weights.sha256sum(dest) and rec['size'] == dest.stat().st_size
    assert (out / rec['log']).read_text() == 'stage 1\nstage 2\n'
    assert rec['export_command'].split()[:5] == ['python', '-m', 'iqa_plugin.weights.export', '--name', name]
    assert not list(out.glob('.export-*')) and not list(out.glob('*.part'))


def test_exporter_rejects_a_wrong_checkpoint_and_writes_nothing(tmp_path):
    from iqa_plugin.weights.export import export

    log = tmp_path / 'run.log'
    log.write_text('x')
    src = weights.PACKAGE_WEIGHTS_DIR / 'nr_lite.pth'
    with pytest.raises(WeightsError, match="do not fit the 'relational' network"):
        export('relational', src, log=log, command='c', out_dir=tmp_path / 'o')
    with pytest.raises(FileNotFoundError, match='training log not found'):
        export('nr-lite', src, log=tmp_path / 'none_*.log', command='c', out_dir=tmp_path / 'o')
    with pytest.raises(ValueError, match='training command'):
        export('nr-lite', src, log=log, command='', out_dir=tmp_path / 'o')
    with pytest.raises(ValueError, match="cannot export 'milo'"):
        export('milo', src, log=log, command='c', out_dir=tmp_path / 'o')
    assert not (tmp_path / 'o').exists()


def test_exporter_records_the_files_own_version(tmp_path):
    # a retrained file carries its own version (nr-lite 0.2.0 in a 0.1.0 package); default: the package version
    from iqa_plugin.weights.export import export
    from iqa_plugin.version import __version__

    log = tmp_path / 'run.log'
    log.write_text('x')
    src = weights.PACKAGE_WEIGHTS_DIR / 'nr_lite.pth'
    _, rec = export('nr-lite', src, log=log, command='c', out_dir=tmp_path / 'a', version='3.4.5')
    assert rec['version'] == '3.4.5' and rec['export_command'].endswith('--version 3.4.5')
    _, rec = export('nr-lite', src, log=log, command='c', out_dir=tmp_path / 'b')
    assert rec['version'] == __version__ and '--version' not in rec['export_command']
    with pytest.raises(ValueError, match="version must look like 1.2.3, got 'v2'"):
        export('nr-lite', src, log=log, command='c', out_dir=tmp_path / 'c', version='v2')
    assert not (tmp_path / 'c').exists()
