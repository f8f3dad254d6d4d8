"""The one weights manager: every pretrained file the plugin can use is a named entry here.

Resolution order for ``resolve(name, path=None)``:

1. ``path`` (a file given in the option YAML or on the command line);
2. ``$IQA_PLUGIN_WEIGHTS_DIR/<filename>``;
3. package data (``iqa_plugin/weights/<filename>``) for weights the project trained and ships;
4. the cache ``$TORCH_HOME/hub/iqa_plugin/<filename>`` (``torch.hub.get_dir()``);
5. a download into that cache with the sha256 checked, unless offline
   (``IQA_PLUGIN_OFFLINE=1``, or the download fails), where the error names the file,
   its URL and the folders it may be put in.

A file whose sha256 is known and differs (corrupt, truncated, or another release) raises
``WeightsError``; nothing ever falls back to random weights. ``load_state_dict`` reads
files with ``torch.load(..., weights_only=True)`` so no pickled code from a checkpoint runs.
"""
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import torch

PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parent / 'weights'
MANIFEST = PACKAGE_WEIGHTS_DIR / 'manifest.json'


class WeightsError(RuntimeError):
    """A weights file is unknown, missing, unreadable or fails its hash check."""


@dataclass(frozen=True)
class WeightEntry:
    name: str
    filename: str
    url: str = ''  # empty for weights that only ship in the package
    sha256: str = ''  # empty where no hash is published
    license: str = ''
    source: str = ''
    description: str = ''
    packaged: bool = False
    extra: dict = field(default_factory=dict, compare=False, hash=False)


_ENTRIES = [
    WeightEntry(
        name='milo',
        filename='MILO.pth',
        url='https://github.com/ugurcogalan06/MILO/raw/main/weights/MILO.pth',
        sha256='a1d66a7e0ebe0f839564ad70160ffdec709708f0b9a7dd03b19c0bee90d31f79',
        license='Apache-2.0',
        source='Cogalan et al., MILO, ACM TOG 2025; github.com/ugurcogalan06/MILO',
        description='official MILO weights, RGB image space'),
    WeightEntry(
        name='milo-latent',
        filename='MILO_latent.pth',
        url='https://github.com/ugurcogalan06/MILO/raw/main/weights/MILO_latent.pth',
        sha256='639448793a4e2a41614cd1ed7fb97234533ba2d02fa2c18f94909ca44fc169b3',
        license='Apache-2.0',
        source='Cogalan et al., MILO, ACM TOG 2025; github.com/ugurcogalan06/MILO',
        description='official MILO weights, Stable Diffusion VAE latent space (4 channels)'),
    WeightEntry(
        name='afine',
        filename='afine.pth',
        url='https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/afine.pth',
        license='see github.com/ChrisDud0257/AFINE',
        source='Chen et al., A-FINE, CVPR 2025; distributed by pyiqa',
        description='A-FINE heads and fine-tuned CLIP (keys finetuned_clip, natural, fidelity, ...)'),
    WeightEntry(
        name='clip-vit-b-32',
        filename='ViT-B-32.pt',
        url='https://openaipublic.azureedge.net/clip/models/'
        '40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt',
        sha256='40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af',
        license='MIT (OpenAI CLIP)',
        source='Radford et al., CLIP, 2021',
        description='OpenAI CLIP ViT-B/32, the backbone A-FINE fine-tunes'),
    WeightEntry(
        name='milo-pseudomos',
        filename='milo_pseudomos.pth',
        packaged=True,
        license='Apache-2.0 (this project)',
        source='trained by this project, label-free: options/metrics/train_milo_pseudomos.yml',
        description='MILO architecture trained on pseudo-MOS from the distortion engine'),
    WeightEntry(
        name='nr-lite',
        filename='nr_lite.pth',
        packaged=True,
        license='Apache-2.0 (this project)',
        source='trained by this project, label-free: options/metrics/train_nr_lite.yml',
        description='small no-reference quality CNN'),
    WeightEntry(
        name='relational',
        filename='relational.pth',
        packaged=True,
        license='Apache-2.0 (this project)',
        source='trained by this project, label-free: options/metrics/train_relational.yml',
        description='relational distortion and score networks'),
]
WEIGHTS = {e.name: e for e in _ENTRIES}


def _manifest():
    if MANIFEST.is_file():
        with open(MANIFEST, encoding='utf-8') as f:
            return json.load(f)
    return {}


def get_entry(name):
    """The entry called ``name``; packaged entries take their sha256 from the manifest."""
    if name not in WEIGHTS:
        raise WeightsError(f"unknown weights '{name}'; known: {', '.join(sorted(WEIGHTS))}")
    entry = WEIGHTS[name]
    if entry.packaged and not entry.sha256:
        sha = _manifest().get(entry.filename, {}).get('sha256', '')
        if sha:
            entry = WeightEntry(**{**entry.__dict__, 'sha256': sha})
    return entry


def cache_dir():
    """``$TORCH_HOME/hub/iqa_plugin`` (torch.hub's cache folder)."""
    return Path(torch.hub.get_dir()) / 'iqa_plugin'


def sha256sum(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def is_offline():
    return os.environ.get('IQA_PLUGIN_OFFLINE', '').strip().lower() in ('1', 'true', 'yes', 'on')


def candidate_paths(name):
    """Where ``name`` is looked for, in order (explicit paths aside)."""
    entry = get_entry(name)
    paths = []
    env_dir = os.environ.get('IQA_PLUGIN_WEIGHTS_DIR')
    if env_dir:
        paths.append(Path(env_dir) / entry.filename)
    if entry.packaged:
        paths.append(PACKAGE_WEIGHTS_DIR / entry.filename)
    paths.append(cache_dir() / entry.filename)
    return paths


def check_file(path, sha256=''):
    """Raise ``WeightsError`` unless ``path`` is a non-empty file with the expected hash."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'weights file not found: {path}')
    if path.stat().st_size == 0:
        raise WeightsError(f'weights file is empty: {path}')
    if sha256:
        got = sha256sum(path)
        if got != sha256:
            raise WeightsError(f'sha256 mismatch for {path}: expected {sha256}, got {got} '
                               '(corrupt, truncated or a different release; delete it and fetch again)')
    return path


def _offline_message(entry, reason):
    where = [str(p.parent) for p in candidate_paths(entry.name)]
    url = entry.url or '(no download: it ships with the package; reinstall iqa-plugin)'
    return (f"weights '{entry.name}' ({entry.filename}) not available {reason}; download {url} "
            f"and put it in one of: {', '.join(where)} (or give its path explicitly)")


def download(name, dest_dir=None, progress=False):
    """Download ``name`` into ``dest_dir`` (default: the cache) and check its hash."""
    entry = get_entry(name)
    if not entry.url:
        raise WeightsError(_offline_message(entry, 'locally'))
    if is_offline():
        raise WeightsError(_offline_message(entry, 'offline (IQA_PLUGIN_OFFLINE=1)'))
    dest_dir = Path(dest_dir) if dest_dir else cache_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / entry.filename
    # Download to a temporary name in the same folder, then rename: a failed or interrupted
    # download never leaves a truncated file at the final path.
    fd, tmp = tempfile.mkstemp(prefix=entry.filename + '.', suffix='.part', dir=dest_dir)
    os.close(fd)
    try:
        try:
            with urllib.request.urlopen(entry.url, timeout=60) as r, open(tmp, 'wb') as f:
                shutil.copyfileobj(r, f)
        except Exception as e:  # network errors of every kind mean the same to the user
            raise WeightsError(_offline_message(entry, f'(download failed: {e.__class__.__name__}: {e})')) from e
        check_file(tmp, entry.sha256)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def resolve(name, path=None, allow_download=True):
    """Path of the weights file for ``name``; see the module docstring for the order.

    Args:
        name (str): entry name (``iqa-plugin weights list``).
        path (str | Path | None): explicit file. Checked against a published hash (official
            releases); not for packaged entries, so a user's own retrained file can be given.
        allow_download (bool): download into the cache when no local copy exists.
    """
    entry = get_entry(name)
    if path:
        path = Path(os.path.expanduser(str(path)))
        if not path.is_file():
            raise WeightsError(f"weights file for '{name}' not found: {path}")
        return check_file(path, '' if entry.packaged else entry.sha256)
    for p in candidate_paths(name):
        if p.is_file():
            return check_file(p, entry.sha256)
    if not allow_download:
        raise WeightsError(_offline_message(entry, 'locally'))
    return download(name)


def load_state_dict(path, key=None):
    """Load a weights file safely (``weights_only=True``); optionally return ``sd[key]``."""
    path = Path(path)
    try:
        sd = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise WeightsError(f'cannot read weights file {path}: {e.__class__.__name__}: {str(e).splitlines()[0]}') from e
    if key is not None:
        if not isinstance(sd, dict) or key not in sd:
            raise WeightsError(f"weights file {path} has no key '{key}'")
        sd = sd[key]
    return sd


def status(name):
    """(entry, path or None, state) with state in {'ok', 'missing', 'hash mismatch'}."""
    entry = get_entry(name)
    for p in candidate_paths(name):
        if p.is_file():
            try:
                check_file(p, entry.sha256)
                return entry, p, 'ok'
            except WeightsError:
                return entry, p, 'hash mismatch'
    return entry, None, 'missing'
