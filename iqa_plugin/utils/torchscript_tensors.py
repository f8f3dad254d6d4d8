"""Read the tensors of a TorchScript archive without running any of its code.

Some published IQA weights are TorchScript archives (OpenAI's CLIP ``.pt`` files, ARNIQA's
regressors). ``torch.jit.load`` compiles the archive's code and runs its ``__setstate__``
methods, and ``torch.load(weights_only=True)`` refuses such archives, so this module reads
``<archive>/data.pkl`` with a restricted unpickler instead: the only callables it resolves are
``torch._utils._rebuild_tensor_v2``, ``collections.OrderedDict``, the storage types and
torch.jit's typed-list helpers (replaced by ``list`` / ``dict``); every
``__torch__.*`` class becomes an inert attribute holder; any other global is refused.
The result is a flat ``{dotted.name: tensor}`` dict of every tensor attribute of the module
tree, a superset of its ``state_dict`` (TorchScript keeps non-persistent tensors too).
"""
import collections
import io
import pickle
import zipfile
from pathlib import Path

import torch

_STORAGE_DTYPES = {
    'FloatStorage': torch.float32,
    'DoubleStorage': torch.float64,
    'HalfStorage': torch.float16,
    'BFloat16Storage': torch.bfloat16,
    'LongStorage': torch.int64,
    'IntStorage': torch.int32,
    'ShortStorage': torch.int16,
    'CharStorage': torch.int8,
    'ByteStorage': torch.uint8,
    'BoolStorage': torch.bool,
}


class _ScriptObject:
    """Stands in for a ``__torch__.*`` class: keeps the pickled attribute dict, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {'_state': state}


# torch.jit's helpers for typed containers in TorchScript pickles, replaced by inert equivalents.
_JIT_PICKLE_HELPERS = {
    'build_intlist': list,
    'build_doublelist': list,
    'build_boollist': list,
    'build_tensorlist': list,
    'build_empty_list': list,
    'build_empty_dict': dict,
    'restore_type_tag': lambda value, type_str: value,
}


def _rebuild_tensor(storage, offset, size, stride, *unused):
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


class _Storage(str):
    """Marker for a storage type named in a persistent id."""


def is_torchscript_archive(path):
    """True if ``path`` is a zip archive written by ``torch.jit.save``."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith('constants.pkl') for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_torchscript_tensors(path):
    """All tensors of the TorchScript archive ``path`` as ``{name: tensor}`` (CPU).

    Raises:
        ValueError: not a TorchScript archive, or it refers to something other than tensors.
    """
    path = Path(path)
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f'not a TorchScript archive: {path} ({e})') from e
    with z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith('/data.pkl') and n.count('/') == 1]
        if not pkl or not any(n.endswith('constants.pkl') for n in names):
            raise ValueError(f'not a TorchScript archive: {path}')
        prefix = pkl[0][:-len('data.pkl')]

        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if module == 'torch._utils' and name == '_rebuild_tensor_v2':
                    return _rebuild_tensor
                if module == 'collections' and name == 'OrderedDict':
                    return collections.OrderedDict
                if module == 'torch.jit._pickle' and name in _JIT_PICKLE_HELPERS:
                    return _JIT_PICKLE_HELPERS[name]
                if module == 'torch' and name in _STORAGE_DTYPES:
                    return _Storage(name)
                if module.startswith('__torch__'):
                    return type(name, (_ScriptObject,), {})
                raise ValueError(f'{path}: refusing to load {module}.{name} from a TorchScript archive')

            def persistent_load(self, pid):
                if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'):
                    raise ValueError(f'{path}: unexpected persistent id {pid!r}')
                _, storage_type, key, _location, numel = pid
                dtype = _STORAGE_DTYPES[str(storage_type)]
                raw = bytearray(z.read(f'{prefix}data/{key}'))
                flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
                return flat[:numel]

        root = Unpickler(io.BytesIO(z.read(pkl[0]))).load()

    out = {}

    def walk(obj, name):
        if torch.is_tensor(obj):
            out[name] = obj
        elif isinstance(obj, _ScriptObject):
            for k, v in obj.state.items():
                walk(v, f'{name}.{k}' if name else str(k))
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f'{name}.{k}' if name else str(k))

    walk(root, '')
    return out
