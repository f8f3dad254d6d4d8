"""Pre-flight check of a BasicSR option file, before any folder or log is written.

It catches what would otherwise fail later with a long traceback, or worse, after the previous
run's experiment folder has been archived: a missing file, a YAML error, an unknown ``type``,
an unknown keyword in a block handled by this plugin, a dataset folder that does not exist.
Every problem raises ``OptionError`` with one line naming it.
"""
import inspect
from pathlib import Path

import yaml

# keys every metric block may carry for BasicSR itself
_METRIC_COMMON = {'type', 'better'}
# option blocks under ``train`` whose ``type`` names something other than a loss
_TRAIN_NON_LOSS = {'optim_g', 'optim_d', 'scheduler'}


class OptionError(ValueError):
    """An option file problem; the message is one line."""


def load_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise OptionError(f'option file not found: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.safe_load(f)
    except yaml.YAMLError as e:
        first = ' '.join(str(e).split())
        raise OptionError(f'cannot parse option file {path}: {first}') from e
    if not isinstance(opt, dict):
        raise OptionError(f'option file {path} does not hold a mapping of options')
    return opt


def _is_plugin(obj):
    return getattr(obj, '__module__', '').startswith('iqa_plugin')


def _takes_any_keyword(fn):
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def _named_params(fn):
    sig = inspect.signature(fn)
    return [n for n, p in sig.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != 'self']


def _get(registry, kind, name, where):
    try:
        return registry.get(name)
    except KeyError:
        known = sorted(k for k, _ in registry)
        raise OptionError(f"unknown {kind} type '{name}' in {where}; known: {', '.join(known)}") from None


def _check_keys(block, allowed, where, type_name):
    extra = sorted(set(block) - set(allowed) - {'type'})
    if extra:
        raise OptionError(f"unknown key{'s' if len(extra) > 1 else ''} {', '.join(repr(k) for k in extra)} in "
                          f"{where} ({type_name}); allowed: {', '.join(sorted(set(allowed) - {'type'}))}")


def check_loss_block(block, where):
    from basicsr.utils.registry import LOSS_REGISTRY

    if not isinstance(block, dict) or 'type' not in block:
        raise OptionError(f'{where} must be a mapping with a type: key')
    cls = _get(LOSS_REGISTRY, 'loss', block['type'], where)
    if _is_plugin(cls) or not _takes_any_keyword(cls.__init__):
        _check_keys(block, _named_params(cls.__init__), where, block['type'])
    return cls


def check_metric_block(block, where):
    from basicsr.utils.registry import METRIC_REGISTRY

    from iqa_plugin import scoring

    if not isinstance(block, dict) or 'type' not in block:
        raise OptionError(f'{where} must be a mapping with a type: key')
    name = block['type']
    if name in scoring.METRICS:  # batched tensor validator of the plugin's SR models
        spec = scoring.METRICS[name]
        factory = scoring.import_factory(spec.factory)
        allowed = (set(spec.defaults) | set(_named_params(factory)) | _METRIC_COMMON
                   | {'weights_path', 'crop_border', 'output'}) - {'device'}
        _check_keys(block, allowed, where, name)
        return None
    fn = _get(METRIC_REGISTRY, 'metric', name, where)
    if _is_plugin(fn):
        _check_keys(block, set(_named_params(fn)) - {'img', 'img2'} | _METRIC_COMMON, where, name)
    return fn


def check_options(opt, is_train=True):
    """Check an option dict; raises OptionError."""
    from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, MODEL_REGISTRY

    if 'model_type' in opt:
        _get(MODEL_REGISTRY, 'model', opt['model_type'], 'model_type')
    for key in ('network_g', 'network_d'):
        if isinstance(opt.get(key), dict):
            block = opt[key]
            if 'type' not in block:
                raise OptionError(f'{key} has no type: key')
            cls = _get(ARCH_REGISTRY, 'arch', block['type'], key)
            if _is_plugin(cls) or not _takes_any_keyword(cls.__init__):
                _check_keys(block, _named_params(cls.__init__), key, block['type'])
    for phase, dopt in (opt.get('datasets') or {}).items():
        if not isinstance(dopt, dict):
            continue
        where = f'datasets.{phase}'
        if 'type' in dopt:
            _get(DATASET_REGISTRY, 'dataset', dopt['type'], where)
        for k, v in dopt.items():
            if k.startswith('dataroot') or k == 'meta_info_file':
                for p in (v if isinstance(v, list) else [v]):
                    if isinstance(p, str) and p and not Path(p).expanduser().exists():
                        raise OptionError(f'{where}.{k}: path not found: {p}')
    train = opt.get('train') or {}
    if is_train:
        for k, v in train.items():
            if k == 'iqa_opt':
                if v is None:
                    continue
                if not isinstance(v, dict):
                    raise OptionError('train.iqa_opt must map loss names to loss blocks')
                for name, block in v.items():
                    check_loss_block(block, f'train.iqa_opt.{name}')
            elif k.endswith('_opt') and k not in _TRAIN_NON_LOSS and isinstance(v, dict) and 'type' in v:
                check_loss_block(v, f'train.{k}')
    val = opt.get('val') or {}
    for name, block in (val.get('metrics') or {}).items():
        check_metric_block(block, f'val.metrics.{name}')
    path = opt.get('path') or {}
    for k in ('pretrain_network_g', 'pretrain_network_d', 'resume_state'):
        p = path.get(k)
        if isinstance(p, str) and p and not Path(p).expanduser().is_file():
            raise OptionError(f'path.{k}: file not found: {p}')
    return opt


def check_option_file(path, is_train=True):
    """Load and check an option file; returns the option dict."""
    return check_options(load_yaml(path), is_train=is_train)
