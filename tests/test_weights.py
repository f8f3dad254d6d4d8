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


def test_packaged_weights_match_manifest():
    """Every weights file shipped in the package is listed in the manifest with its sha256."""
    manifest = weights._manifest()
    for f in weights.PACKAGE_WEIGHTS_DIR.glob('*.pth'):
        assert f.name in manifest, f'{f.name} missing from manifest.json'
        assert weights.sha256sum(f) == manifest[f.name]['sha256']
