"""``base:`` in an option file: inherit from other option files instead of copying them.

    # options/train/multigt/amo_rrdb.yml
    base: [_data.yml, _rrdb.yml]          # paths relative to this file, merged in order
    name: multigt_amo_rrdb
    train:
      gt_sampling: {type: amo, scorer: {type: nr-lite}}

The bases are merged in order, then the file itself: mappings merge key by key (recursively), any other
value (lists included) replaces the inherited one, and ``~`` (null) replaces it too, which is how a child
switches an inherited block off (``perceptual_opt: ~``). Bases may have bases; a cycle is an error.

``iqa-plugin train`` resolves the bases before BasicSR reads the file and hands BasicSR the merged file
(which BasicSR then copies into the experiment folder, so a run records every option it used).
"""
import os
import tempfile
from pathlib import Path

import yaml


class OptionBaseError(ValueError):
    """A ``base:`` problem (missing file, cycle, not a mapping); the message is one line."""


def deep_merge(parent, child):
    """``child`` over ``parent`` (see the module docstring); returns a new dict."""
    out = dict(parent)
    for k, v in child.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read(path):
    with open(path, encoding='utf-8') as f:
        opt = yaml.safe_load(f)
    if not isinstance(opt, dict):
        raise OptionBaseError(f'option file {path} does not hold a mapping of options')
    return opt


def load_with_bases(path, _seen=()):
    """The option dict of ``path`` with its ``base:`` files merged in (YAML errors propagate)."""
    path = Path(path).resolve()
    if path in _seen:
        raise OptionBaseError(f"base: cycle through {path} ({' -> '.join(p.name for p in _seen + (path,))})")
    if not path.is_file():
        raise OptionBaseError(f'option file not found: {path}')
    opt = _read(path)
    bases = opt.pop('base', None)
    if bases is None:
        return opt
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise OptionBaseError(f'{path}: base must be a file name or a list of them, got {bases!r}')
    merged = {}
    for b in bases:
        base_path = (path.parent / os.path.expanduser(b))
        if not base_path.is_file():
            raise OptionBaseError(f'{path}: base file not found: {base_path}')
        merged = deep_merge(merged, load_with_bases(base_path, _seen + (path,)))
    return deep_merge(merged, opt)


def has_bases(path):
    """True when the option file at ``path`` names ``base:`` files."""
    try:
        return 'base' in _read(path)
    except (OSError, yaml.YAMLError, OptionBaseError):
        return False


def write_resolved(path, folder=None):
    """Write the merged options of ``path`` as ``<folder>/<same file name>``; returns the new path."""
    folder = Path(folder or tempfile.mkdtemp(prefix='iqa_plugin_opt_'))
    out = folder / Path(path).name
    with open(out, 'w', encoding='utf-8') as f:
        yaml.safe_dump(load_with_bases(path), f, sort_keys=False)
    return out
