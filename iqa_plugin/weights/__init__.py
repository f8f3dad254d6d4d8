"""The one weights manager: every pretrained file the plugin can use is a named entry here.

Resolution order for ``resolve(name, path=None)``:

1. ``path`` (a file given in the option YAML or on the command line);
2. ``$IQA_PLUGIN_WEIGHTS_DIR/<filename>``;
3. package data (``iqa_plugin/weights/<filename>``) for weights the project trained and ships;
4. the cache ``<torch hub>/iqa_plugin/<filename>`` (``torch_hub_dir()``: ``torch.hub.get_dir()``);
5. a download into that cache with the sha256 checked, unless offline
   (``IQA_PLUGIN_OFFLINE=1``, or the download fails), where the one-line error names the file,
   its URL and the paths searched.

``locate(name)`` answers "is it here now" (no download, no hash); ``check_available(name)`` is
``resolve`` for the pre-flight check. ``download_file`` is the only downloader of the package
(``iqa_plugin.scoring.pyiqa_adapter`` fetches pyiqa's files through it): it writes ``<name>.*.part`` beside the
target and renames it into place (``os.replace``), so an interrupted or failed download never
leaves a file at the final path, and checks the sha256 when one is known.

A file whose sha256 is known and differs (corrupt, truncated, or another release) raises
``WeightsError``; nothing ever falls back to random weights. ``load_state_dict`` reads
files with ``torch.load(..., weights_only=True)`` so no pickled code from a checkpoint runs.

Packaged entries take their sha256 from ``weights/manifest.json``, whose schema is
``MANIFEST_SCHEMA`` (checked by ``validate_manifest``); ``iqa_plugin.weights.export`` writes it.

This module imports neither torch nor numpy at import time (``iqa-plugin weights list`` stays
fast); ``load_state_dict`` imports torch when it runs.
"""
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parent / 'files'  # the shipped files (package data)
MANIFEST = PACKAGE_WEIGHTS_DIR / 'manifest.json'


class WeightsError(RuntimeError):
    """A weights file is unknown, missing, unreadable or fails its hash check."""


@dataclass(frozen=True)
class WeightEntry:
    """One weights file.

    ``sha256`` is empty only where no verified hash is known; ``unverified`` then says why
    (an entry with a URL has one or the other, see tests/test_weights.py).
    """
    name: str
    filename: str
    url: str = ''  # empty for weights that only ship in the package
    sha256: str = ''  # empty where no hash is published
    license: str = ''
    source: str = ''
    description: str = ''
    packaged: bool = False
    unverified: str = ''  # why a downloadable entry has no sha256
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
        license='CC-BY-NC-SA-4.0 (the chaofengc/IQA-PyTorch-Weights repository); code: github.com/ChrisDud0257/AFINE',
        source='Chen et al., A-FINE, CVPR 2025; distributed by pyiqa',
        description='A-FINE heads and fine-tuned CLIP (keys finetuned_clip, natural, fidelity, ...)',
        unverified='pyiqa and the A-FINE authors publish no hash and no revision of afine.pth could be '
                   'verified, so the URL follows the repository head; check the file with '
                   '`iqa-plugin weights verify` after pinning a sha256 here'),
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
        description="small no-reference quality model (scene statistics + MLP)"),
    WeightEntry(
        name='relational',
        filename='relational.pth',
        packaged=True,
        license='Apache-2.0 (this project)',
        source='trained by this project, label-free: options/metrics/train_relational.yml',
        description='relational distortion and score networks'),
    WeightEntry(
        name='niqe-fitted',
        filename='niqe_fitted.pth',
        packaged=True,
        license='Apache-2.0 (this project)',
        source='fitted by this project: python -m iqa_plugin.archs.niqe_fitted_arch fit (docs/nriqa.md)',
        description='NIQE pristine multivariate Gaussian (mu_pris_param, cov_pris_param) of ../shared training photos'),
]
WEIGHTS = {e.name: e for e in _ENTRIES}


# ------------------------------------------------------------------------------------------ manifest
# Every record of manifest.json: key -> (type, required). Written by iqa_plugin.weights.export.
MANIFEST_SCHEMA = {
    'sha256': (str, True),  # 64 lowercase hex digits of the file
    'size': (int, True),  # bytes
    'command': (str, True),  # the training command(s), one shell line
    'export_command': (str, True),  # the exact `python -m iqa_plugin.weights.export ...` that wrote the file
    'log': (str, True),  # training log shipped beside the weights (file name in the weights folder)
    'version': (str, True),  # the file's version (export --version; default the exporting iqa-plugin version)
    'trained': (str, True),  # export date, YYYY-MM-DD
    'source_checkpoint': (str, True),  # the checkpoint the file was exported from
    'data_command': (str, False),  # the command that built the training data, when there is one
}
_SHA256 = re.compile(r'[0-9a-f]{64}')
_DATE = re.compile(r'\d{4}-\d{2}-\d{2}')


def validate_manifest(data, where='manifest.json'):
    """Check ``data`` (the parsed manifest) against ``MANIFEST_SCHEMA``; returns it unchanged.

    Raises ``WeightsError`` with one line naming the entry and the key at fault (missing,
    unknown, wrong type or malformed value).
    """
    if not isinstance(data, dict):
        raise WeightsError(f'{where}: expected an object of filename -> record, got {type(data).__name__}')
    for fname, rec in data.items():
        at = f"{where}: entry '{fname}'"
        if not fname.endswith('.pth') or '/' in fname or '\\' in fname:
            raise WeightsError(f'{at}: the key must be a plain .pth file name')
        if not isinstance(rec, dict):
            raise WeightsError(f'{at}: expected an object, got {type(rec).__name__}')
        for key, (typ, required) in MANIFEST_SCHEMA.items():
            if key not in rec:
                if required:
                    raise WeightsError(f"{at}: missing key '{key}'")
                continue
            value = rec[key]
            if not isinstance(value, typ) or isinstance(value, bool):
                raise WeightsError(f"{at}: key '{key}' must be {typ.__name__}, got {type(value).__name__}")
            if typ is str and not value.strip():
                raise WeightsError(f"{at}: key '{key}' is empty")
        unknown = sorted(set(rec) - set(MANIFEST_SCHEMA))
        if unknown:
            raise WeightsError(f"{at}: unknown key '{unknown[0]}' (known: {', '.join(MANIFEST_SCHEMA)})")
        if not _SHA256.fullmatch(rec['sha256']):
            raise WeightsError(f"{at}: key 'sha256' must be 64 lowercase hex digits, got {rec['sha256']!r}")
        if rec['size'] <= 0:
            raise WeightsError(f"{at}: key 'size' must be positive, got {rec['size']}")
        if not _DATE.fullmatch(rec['trained']):
            raise WeightsError(f"{at}: key 'trained' must be a date YYYY-MM-DD, got {rec['trained']!r}")
    return data


def read_manifest(path=MANIFEST):
    """The validated manifest at ``path`` ({} when there is none)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise WeightsError(f'{path}: not valid JSON ({e})') from e
    return validate_manifest(data, str(path))


def get_entry(name):
    """The entry called ``name``; packaged entries take their sha256 from the manifest."""
    if name not in WEIGHTS:
        raise WeightsError(f"unknown weights '{name}'; known: {', '.join(sorted(WEIGHTS))}")
    entry = WEIGHTS[name]
    if entry.packaged and not entry.sha256:
        sha = read_manifest().get(entry.filename, {}).get('sha256', '')
        if sha:
            entry = replace(entry, sha256=sha)
    return entry


# ------------------------------------------------------------------------------------------ places
def torch_hub_dir():
    """``torch.hub.get_dir()`` without importing torch.

    When torch is already imported its answer is used (it honours ``torch.hub.set_dir``);
    otherwise ``$TORCH_HOME/hub``, or ``${XDG_CACHE_HOME:-~/.cache}/torch/hub``, as torch computes it.
    """
    torch = sys.modules.get('torch')
    if torch is not None and hasattr(torch, 'hub'):
        return Path(torch.hub.get_dir())
    home = os.environ.get('TORCH_HOME') or os.path.join(os.environ.get('XDG_CACHE_HOME') or '~/.cache', 'torch')
    return Path(os.path.expanduser(home)) / 'hub'


def cache_dir():
    """``<torch hub>/iqa_plugin``: where downloaded entries are kept."""
    return torch_hub_dir() / 'iqa_plugin'


def search_paths(filename, cache_folder, packaged=False):
    """Where a weights file is looked for, in order: ``$IQA_PLUGIN_WEIGHTS_DIR``, the package
    folder (``packaged`` entries only), then ``cache_folder``."""
    paths = []
    env_dir = os.environ.get('IQA_PLUGIN_WEIGHTS_DIR')
    if env_dir:
        paths.append(Path(os.path.expanduser(env_dir)) / filename)
    if packaged:
        paths.append(PACKAGE_WEIGHTS_DIR / filename)
    paths.append(Path(cache_folder) / filename)
    return paths


def first_file(paths):
    """The first of ``paths`` that is a file, else None (no hash check, no download)."""
    return next((Path(p) for p in paths if Path(p).is_file()), None)


def candidate_paths(name):
    """Where entry ``name`` is looked for, in order (explicit paths aside)."""
    entry = get_entry(name)
    return search_paths(entry.filename, cache_dir(), entry.packaged)


# ------------------------------------------------------------------------------------------ checks
def sha256sum(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


_VERIFIED = {}  # (path, size, mtime_ns) -> sha256: a file is hashed once per process while unchanged


def _file_sha256(path):
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256sum(path)
    return _VERIFIED[key]


def is_offline():
    return os.environ.get('IQA_PLUGIN_OFFLINE', '').strip().lower() in ('1', 'true', 'yes', 'on')


def check_file(path, sha256=''):
    """Raise ``WeightsError`` unless ``path`` is a non-empty file with the expected hash."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'weights file not found: {path}')
    if path.stat().st_size == 0:
        raise WeightsError(f'weights file is empty: {path}')
    if sha256:
        got = _file_sha256(path)
        if got != sha256:
            raise WeightsError(f'sha256 mismatch for {path}: expected {sha256}, got {got} '
                               '(corrupt, truncated or a different release; delete it and fetch again)')
    return path


def missing_message(what, filename, url, searched, reason, hint=''):
    """One line: ``what`` (``filename``) is not available for ``reason``; the paths searched; the URL."""
    where = ', '.join(str(p) for p in searched) or '(nowhere)'
    get = f'download {url} into one of those folders' if url else 'no download exists'
    return (f'{what} ({filename}) not available {reason}; searched {where}; {get}, '
            f"or give the file's path explicitly{'; ' + hint if hint else ''}")


# ------------------------------------------------------------------------------------------ download
def download_file(url, dest, sha256='', what='weights', searched=(), hint=''):
    """The package's one downloader: ``url`` -> ``dest``, atomically, hash-checked when ``sha256``.

    The bytes go to ``<dest>.*.part`` in the same folder and are renamed into place with
    ``os.replace`` only when complete and (with ``sha256``) matching; nothing is left behind on
    failure. Offline (``IQA_PLUGIN_OFFLINE=1``) or a failed download raises ``WeightsError`` with
    ``missing_message`` (``what``, the file, ``searched`` paths and the URL; ``hint`` appended).
    """
    dest = Path(dest)
    searched = list(searched) or [dest]
    if is_offline():
        raise WeightsError(missing_message(what, dest.name, url, searched, 'offline (IQA_PLUGIN_OFFLINE=1)', hint))
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + '.', suffix='.part', dir=dest.parent)
    os.close(fd)
    try:
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, 'wb') as f:
                shutil.copyfileobj(r, f)
        except Exception as e:  # network errors of every kind mean the same to the user
            reason = f'(download failed: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ""})'
            raise WeightsError(missing_message(what, dest.name, url, searched, reason, hint)) from e
        if os.path.getsize(tmp) == 0:
            raise WeightsError(f'download of {url} gave an empty file; nothing was written to {dest}')
        if sha256:
            got = sha256sum(tmp)
            if got != sha256:
                raise WeightsError(f'sha256 mismatch for the download of {url}: expected {sha256}, got {got} '
                                   f'(corrupt transfer or a different release); nothing was written to {dest}')
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


# ------------------------------------------------------------------------------------------ resolution
def locate(name):
    """Path of a local copy of entry ``name`` (first of ``candidate_paths``), or None.

    Never downloads and does not hash the file: "is it here now" (``status`` also checks it)."""
    return first_file(candidate_paths(name))


def resolve(name, path=None, allow_download=True):
    """Path of the weights file for ``name``; see the module docstring for the order.

    Args:
        name (str): entry name (``iqa-plugin weights list``).
        path (str | Path | None): explicit file. Checked against a published hash (official
            releases); not for packaged entries, so a user's own retrained file can be given.
        allow_download (bool): download into the cache when no local copy exists (never when
            ``IQA_PLUGIN_OFFLINE=1``).
    Raises:
        WeightsError: unknown entry, missing file (one line: file, URL, paths searched), hash mismatch.
    """
    entry = get_entry(name)
    if path:
        path = Path(os.path.expanduser(str(path)))
        if not path.is_file():
            raise WeightsError(f"weights file for '{name}' not found: {path}")
        return check_file(path, '' if entry.packaged else entry.sha256)
    found = locate(name)
    if found is not None:
        return check_file(found, entry.sha256)
    what, searched = f"weights '{name}'", candidate_paths(name)
    if not entry.url:
        raise WeightsError(missing_message(what, entry.filename, '', searched, 'locally',
                                           'it ships with the package: reinstall iqa-plugin'))
    if not allow_download:
        raise WeightsError(missing_message(what, entry.filename, entry.url, searched, 'locally'))
    return download_file(entry.url, cache_dir() / entry.filename, entry.sha256, what, searched)


def check_available(name, weights_path=None):
    """Pre-flight form of ``resolve``: the checked path of ``name`` (or of ``weights_path``).

    Downloads a missing file unless offline; offline (``IQA_PLUGIN_OFFLINE=1``) a missing file
    raises ``WeightsError`` with one line naming the file, its URL and the paths searched.
    """
    return resolve(name, weights_path)


def status(name, verify=True):
    """(entry, path or None, state); state is 'ok', 'missing', 'hash mismatch', or with
    ``verify=False`` (no hashing: fast) 'present' for a file found but not checked."""
    entry = get_entry(name)
    path = locate(name)
    if path is None:
        return entry, None, 'missing'
    if not verify:
        return entry, path, 'present'
    try:
        check_file(path, entry.sha256)
        return entry, path, 'ok'
    except WeightsError:
        return entry, path, 'hash mismatch'


# ------------------------------------------------------------------------------------------ reading
def load_state_dict(path, key=None):
    """Load a weights file safely (``weights_only=True``); optionally return ``sd[key]``."""
    import torch

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


def unwrap_state_dict(sd, path, wrappers=('params_ema', 'params', 'state_dict')):
    """A checkpoint's plain state dict and its ``config`` entry: ``(OrderedDict, dict | None)``.

    The first of ``wrappers`` holding a dict is taken (BasicSR checkpoints keep the EMA copy
    first), a DataParallel ``module.`` prefix is removed and a top-level ``config`` dict (the
    network's constructor arguments, as nr-lite files carry) is returned separately.
    """
    if not isinstance(sd, dict):
        raise WeightsError(f'weights file {path} does not hold a state dict (got {type(sd).__name__})')
    config = sd.get('config') if isinstance(sd.get('config'), dict) else None
    for key in wrappers:
        if isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    return OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in sd.items() if k != 'config'), config
