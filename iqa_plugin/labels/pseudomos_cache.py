"""Pseudo-MOS cache files: what they hold, writing and checked reading (plain tensors, ``weights_only``).

A cache (written by ``python -m iqa_plugin.labels.pseudomos build``, read by ``PseudoMOSDataset(cache_file=...)``)
is a dict saved with ``torch.save``:

* 'ref' uint8 (G, 3, P, P) and 'dist' uint8 (G, N, 3, P, P): RGB patches, ``round(255 x)``;
* 'raw' float32 (G, N, M): oriented member scores (higher = worse, 0 = identical), not normalised;
* 'tier', 'chain' int64 (G, N): tier within the chain (0 = mildest) and chain index, -1 in random mode;
* optional 'maps' float16 (G, N, K, P, P): signed intensities on ``distortions.AXES``;
* 'members' (M names), 'lower_better' (M bools), 'axes' (K names), 'ref_paths' (G source paths),
  'meta' (the build options), 'format' = ``CACHE_FORMAT``.

Only torch is imported here, so both the dataset (reading) and the builder (writing) sit above it.
"""
import os
from pathlib import Path

import torch

CACHE_FORMAT = 'iqa_plugin.labels.pseudomos/1'
"""Value of a cache's 'format' key; a change of layout gets a new number."""

REQUIRED_KEYS = ('ref', 'dist', 'raw', 'tier', 'chain', 'members', 'axes')


def to_uint8(x):
    """Float tensor in [0, 1] -> uint8 ``round(255 x)`` (values outside [0, 1] are clamped)."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def check_cache(data, path):
    """Raise ValueError naming ``path`` unless ``data`` has a cache's format, keys and consistent shapes."""
    if not isinstance(data, dict) or data.get('format') != CACHE_FORMAT:
        raise ValueError(f'{path} is not a pseudo-MOS cache (format {CACHE_FORMAT})')
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f'pseudo-MOS cache {path} lacks keys: {", ".join(missing)}')
    g, n = data['dist'].shape[:2]
    if data['ref'].shape[0] != g or data['raw'].shape != (g, n, len(data['members'])) or data['tier'].shape != (g, n):
        raise ValueError(f'pseudo-MOS cache {path} has inconsistent shapes: ref {tuple(data["ref"].shape)}, '
                         f'dist {tuple(data["dist"].shape)}, raw {tuple(data["raw"].shape)}')


def save_cache(data, out):
    """Write ``data`` (the keys above, without 'format') to ``out`` atomically; returns the Path.

    The file is written to ``out.part`` and renamed, so a reader never sees half a cache.
    """
    out = Path(out)
    data = dict(data, format=CACHE_FORMAT)
    check_cache(data, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.part')
    torch.save(data, tmp)
    os.replace(tmp, out)
    return out


def load_cache(path):
    """Read a cache file written by ``save_cache`` (``torch.load(weights_only=True)``) and check it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'pseudo-MOS cache not found: {path}')
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise ValueError(f'cannot read pseudo-MOS cache {path}: {e.__class__.__name__}: {str(e).splitlines()[0]}') from e
    check_cache(data, path)
    return data
