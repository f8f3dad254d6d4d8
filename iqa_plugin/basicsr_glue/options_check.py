"""Pre-flight check of a BasicSR option file, before any folder or log is written.

Why one file over 450 lines: one pass over one option file, whose checks (types, keys, data folders, directions,
weights) share the walk of the file and its error wording; the per-block checks that belong to a feature live with
it (``gt_sampling.check_options``, ``selection``).

``iqa_plugin.train.run`` calls ``check_option_file`` before BasicSR's ``train_pipeline``, which creates
(and on a second start archives) ``experiments/<name>``. The check catches what would otherwise fail
later with a long traceback, or after the previous run's folder has been archived, or after hours of
training at the first validation:

* a missing file, a YAML error, a dataset folder or pretrained file that does not exist;
* an unknown ``type`` (model, network, dataset, loss, validator), with the closest known names; names
  are looked up without BasicSR's ``Registry.get`` (it prints a misleading "use name: X_basicsr!");
* an unknown keyword in a block handled by this plugin: plugin losses and networks, the table
  validators (``calculate_iqa``, its aliases ``calculate_milo``/``_relational``/``_afine``/``_nriqa`` and
  ``type: <table name>``), checked against the metric factory's options plus the validator keys;
* blocks that only the plugin's IQA models read (``train.iqa_opt``, ``type: <table name>`` validators,
  ``val.select_by``, ``val.axis_report``) under a model that ignores them (a model supports them when its class
  has a truthy ``iqa_options`` attribute), naming the model to use instead;
* a ``better`` that contradicts the metric's direction (``better: higher`` on ``milo``), or a
  ``val.select_by`` on a lower-is-better metric whose block leaves ``better`` at BasicSR's 'higher': either
  would make checkpoint selection keep the worst checkpoint;
* weights: every file that the losses, validators, ``scorer:`` blocks under ``train`` (GT selection) and
  the plugin's networks will load is resolved (``scoring.resolve_weights``; downloaded when online and
  allowed), so a missing file fails now, with the weights manager's one line naming the file, its URL and
  the folders searched.

Every problem raises ``OptionError`` with one line naming it.
"""
import difflib
import inspect
from pathlib import Path

import yaml

from iqa_plugin.basicsr_glue.dist import validation_timeout_minutes
from iqa_plugin.basicsr_glue.option_base import OptionBaseError, load_with_bases

# keys every metric block may carry for BasicSR itself
_METRIC_COMMON = {'type', 'better'}
# option blocks under ``train`` whose ``type`` names something other than a loss
_TRAIN_NON_LOSS = {'optim_g', 'optim_d', 'scheduler'}
# directions of BasicSR's own validators (for ``better`` checks)
_BASICSR_DIRECTIONS = {'calculate_psnr': 'higher', 'calculate_ssim': 'higher', 'calculate_psnr_pt': 'higher',
                       'calculate_ssim_pt': 'higher', 'calculate_niqe': 'lower'}
# (entry option, explicit-path option) pairs of the plugin's networks that load weights-manager entries
_NETWORK_WEIGHT_OPTIONS = (('weights', 'weights_path'), ('clip_weights', 'clip_weights_path'))
_BETTER = ('higher', 'lower')


class OptionError(ValueError):
    """An option file problem; the message is one line."""


def load_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise OptionError(f'option file not found: {path}')
    try:
        opt = load_with_bases(path)  # base: files merged in (iqa_plugin/basicsr_glue/option_base.py)
    except yaml.YAMLError as e:
        first = ' '.join(str(e).split())
        raise OptionError(f'cannot parse option file {path}: {first}') from e
    except OptionBaseError as e:
        raise OptionError(str(e)) from e
    if not isinstance(opt, dict):
        raise OptionError(f'option file {path} does not hold a mapping of options')
    return opt


def _one_line(e):
    return ' '.join(str(e).split()) or e.__class__.__name__


def _is_plugin(obj):
    return getattr(obj, '__module__', '').startswith('iqa_plugin')


def _takes_any_keyword(fn):
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def _named_params(fn):
    sig = inspect.signature(fn)
    return [n for n, p in sig.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != 'self']


def _validator_keys():
    from iqa_plugin.metrics.iqa_metric import VALIDATOR_KEYS

    return set(VALIDATOR_KEYS)


# ------------------------------------------------------------------------------------------ registries
_SUFFIX = '_basicsr'  # BasicSR registers some classes as '<name>_basicsr' and Registry.get falls back to it


def lookup(registry, name):
    """``registry.get(name)`` without its print: the object registered as ``name`` (or, as BasicSR's
    fallback, ``name_basicsr``), else None."""
    if not isinstance(name, str):
        return None
    found = registry._obj_map.get(name)
    return found if found is not None else registry._obj_map.get(name + _SUFFIX)


def _names(registry):
    """Names a user writes for the registry's entries ('RealESRGANModel', not 'RealESRGANModel_basicsr')."""
    return sorted({k.removesuffix(_SUFFIX) for k, _ in registry})


def _did_you_mean(name, candidates):
    close = difflib.get_close_matches(str(name), list(candidates), n=3, cutoff=0.7)
    return f"did you mean {' or '.join(close)}? " if close else ''


def _get(registry, kind, name, where):
    found = lookup(registry, name)
    if found is None:
        known = _names(registry)
        raise OptionError(f"unknown {kind} type '{name}' in {where}; {_did_you_mean(name, known)}"
                          f"known: {', '.join(known)}")
    return found


def _check_keys(block, allowed, where, type_name):
    extra = sorted(set(block) - set(allowed) - {'type'})
    if extra:
        raise OptionError(f"unknown key{'s' if len(extra) > 1 else ''} {', '.join(repr(k) for k in extra)} in "
                          f"{where} ({type_name}); allowed: {', '.join(sorted(set(allowed) - {'type'}))}")


# ------------------------------------------------------------------------------------------ models
def supports_iqa_options(model_cls):
    """True when ``model_cls`` reads ``train.iqa_opt``, table-name validators and ``val.select_by``
    (a truthy class attribute ``iqa_options``, set by the IQA model mixin)."""
    return bool(getattr(model_cls, 'iqa_options', model_cls.__name__.startswith('IQA')))


def iqa_model_for(model_cls):
    """Name of the registered IQA model to use instead of ``model_cls`` (one built on it, else IQASRModel)."""
    from basicsr.utils.registry import MODEL_REGISTRY

    if model_cls is None:
        return 'IQASRModel'
    built_on = sorted(n for n, c in MODEL_REGISTRY if isinstance(c, type) and issubclass(c, model_cls)
                      and c is not model_cls and supports_iqa_options(c))
    preferred = f'IQA{model_cls.__name__}'
    if preferred in built_on:
        return preferred
    return built_on[0] if built_on else 'IQASRModel'


class _Context:
    """What the checks of one option file share: the model class and the weights to resolve."""

    def __init__(self, opt, is_train):
        from basicsr.utils.registry import MODEL_REGISTRY

        self.opt = opt
        self.is_train = is_train
        self.model_type = opt.get('model_type')
        self.model_cls = None
        if self.model_type is not None:
            self.model_cls = _get(MODEL_REGISTRY, 'model', self.model_type, 'model_type')
        # IQA blocks are accepted when the model is unknown here (no model_type: BasicSR will fail on it)
        self.iqa = self.model_cls is None or supports_iqa_options(self.model_cls)
        self.weights = []  # (where, label, table name or None, options or callable)

    def not_read(self, what, consequence='ignores it'):
        """OptionError: ``what`` is read only by the IQA models; name the model to use."""
        use = iqa_model_for(self.model_cls)
        return OptionError(f"{what} is read only by the plugin's IQA models; use model_type: {use} "
                           f"({self.model_type} {consequence})")

    def need_table_weights(self, where, label, name, opts):
        self.weights.append((where, label, name, opts))

    def need_callable(self, where, label, fn):
        self.weights.append((where, label, None, fn))

    def resolve(self, allow_download=True):
        """Resolve every recorded weights need, each (metric, options) once."""
        from iqa_plugin import scoring

        done = set()
        for where, label, name, opts in self.weights:
            try:
                if name is None:
                    opts()
                    continue
                key = (name, tuple(scoring.weight_requirements(name, **opts)))  # the files, not how they are named
                if key in done:
                    continue
                scoring.resolve_weights(name, allow_download=allow_download, **opts)
                done.add(key)
            except OptionError:
                raise
            except (OSError, RuntimeError, ValueError, ImportError) as e:  # WeightsError is a RuntimeError
                raise OptionError(f'{where} ({label}): {_one_line(e)}') from e


# ------------------------------------------------------------------------------------------ table metrics
def _table_metrics():
    from iqa_plugin import scoring
    return scoring.METRICS


def _check_better(block, name, where, label):
    """``better`` of a block scored by table metric ``name``: 'higher'/'lower', and the table's direction."""
    better = block.get('better')
    if better is None:
        return
    if better not in _BETTER:
        raise OptionError(f"{where} ({label}): better must be 'higher' or 'lower', got {better!r}")
    if block.get('output') is not None:
        return  # another output of the metric may have another direction
    expected = _table_metrics()[name].better
    if better != expected:
        raise OptionError(f"{where} ({label}): better: {better} contradicts metric '{name}', which is "
                          f"{expected}-is-better; write better: {expected} or leave it out (it defaults from the "
                          f"scoring table)")


def _table_loss_check(name, where, label):
    spec = _table_metrics()[name]
    if not spec.loss_capable:
        raise OptionError(f"{where} ({label}): metric '{name}' cannot be a loss ({spec.loss}); use it as a "
                          f"validator ({{type: calculate_iqa, metric: {name}}})")


def _metric_of(fn, block, where, label):
    """``fn.metric_of`` of a loss class or validator for this block -> (table name, factory options)."""
    opts = {k: v for k, v in block.items() if k != 'type'}
    try:
        name, factory_opts = fn.metric_of(**opts)
    except (ValueError, TypeError, KeyError) as e:
        raise OptionError(f'{where} ({label}): {_one_line(e)}') from e
    return name, {k: v for k, v in factory_opts.items() if v is not None}


def check_scorer_block(block, where, ctx=None):
    """A ``scorer:`` block naming a table metric (GT selection strategies): ``{type: NAME, <factory options>}``
    or just ``NAME``. Returns (name, factory options)."""
    from iqa_plugin import scoring

    if isinstance(block, str):
        block = {'type': block}
    if not isinstance(block, dict) or 'type' not in block:
        raise OptionError(f'{where} must be a table metric name or a mapping with a type: key')
    name = block['type']
    metrics = _table_metrics()
    if name not in metrics:
        raise OptionError(f"unknown scorer type '{name}' in {where}; {_did_you_mean(name, metrics)}"
                          f"known (scoring-table metrics): {', '.join(sorted(metrics))}")
    _check_keys(block, scoring.factory_options(name) | _validator_keys(), where, name)
    opts = {k: v for k, v in block.items() if k != 'type' and k not in _validator_keys() and v is not None}
    if ctx is not None:
        ctx.need_table_weights(where, name, name, opts)
    return name, opts


# ------------------------------------------------------------------------------------------ losses
def check_loss_block(block, where, ctx=None):
    from basicsr.utils.registry import LOSS_REGISTRY

    if not isinstance(block, dict) or 'type' not in block:
        raise OptionError(f'{where} must be a mapping with a type: key')
    cls = _get(LOSS_REGISTRY, 'loss', block['type'], where)
    if _is_plugin(cls) or not _takes_any_keyword(cls.__init__):
        _check_keys(block, _named_params(cls.__init__), where, block['type'])
    if hasattr(cls, 'metric_of'):  # a FrozenIQALoss: the table metric it optimises
        name, opts = _metric_of(cls, block, where, block['type'])
        if name is not None:
            _table_loss_check(name, where, block['type'])
            if ctx is not None:
                ctx.need_table_weights(where, block['type'], name, opts)
    return cls


# ------------------------------------------------------------------------------------------ validators
def _unknown_metric(name, where, ctx):
    from basicsr.utils.registry import METRIC_REGISTRY

    validators = _names(METRIC_REGISTRY)
    tables = sorted(_table_metrics())
    candidates = validators + (tables if ctx is None or ctx.iqa else [])
    how = ('type: NAME or {type: calculate_iqa, metric: NAME}' if ctx is None or ctx.iqa
           else '{type: calculate_iqa, metric: NAME}')
    return OptionError(f"unknown metric type '{name}' in {where}; {_did_you_mean(name, candidates)}"
                       f"validators: {', '.join(validators)}; scoring-table metrics ({how}): {', '.join(tables)}")


def check_metric_block(block, where, ctx=None):
    """One ``val.metrics`` block; returns the validator function, or None for a table-name type."""
    from basicsr.utils.registry import METRIC_REGISTRY

    from iqa_plugin import scoring

    if not isinstance(block, dict) or 'type' not in block:
        raise OptionError(f'{where} must be a mapping with a type: key')
    name = block['type']
    vkeys = _validator_keys()
    if name in _table_metrics():  # tensor validator of the plugin's IQA models
        if ctx is not None and not ctx.iqa:
            raise OptionError(f"{where}: type '{name}' (a scoring-table metric) is read only by the plugin's IQA "
                              f"models; write {{type: calculate_iqa, metric: {name}}} or use model_type: "
                              f"{iqa_model_for(ctx.model_cls)} ({ctx.model_type} would fail at the first "
                              f"validation)")
        _check_keys(block, scoring.factory_options(name) | vkeys | _METRIC_COMMON, where, name)
        _check_better(block, name, where, name)
        if ctx is not None:
            opts = {k: v for k, v in block.items() if k != 'type' and k not in vkeys and v is not None}
            ctx.need_table_weights(where, name, name, opts)
        return None
    fn = lookup(METRIC_REGISTRY, name)
    if fn is None:
        raise _unknown_metric(name, where, ctx)
    if hasattr(fn, 'metric_of'):  # calculate_iqa and its aliases: a table metric
        table, opts = _metric_of(fn, block, where, name)
        own = set(_named_params(fn)) - {'img', 'img2'}
        _check_keys(block, scoring.factory_options(table) | own | vkeys | _METRIC_COMMON, where, name)
        _check_better(block, table, where, name)
        if ctx is not None:
            ctx.need_table_weights(where, name, table, opts)
    elif _is_plugin(fn):
        _check_keys(block, set(_named_params(fn)) - {'img', 'img2'} | _METRIC_COMMON, where, name)
    else:
        better = block.get('better')
        if better is not None and better not in _BETTER:
            raise OptionError(f"{where} ({name}): better must be 'higher' or 'lower', got {better!r}")
        expected = _BASICSR_DIRECTIONS.get(name)
        if better is not None and expected is not None and better != expected:
            raise OptionError(f'{where} ({name}): better: {better} contradicts {name}, which is '
                              f'{expected}-is-better')
    return fn


def check_select_by(val, ctx):
    """``val.select_by``: an IQA model, a metric of ``val.metrics``, and a direction selection can trust."""
    select = val.get('select_by')
    if not select:
        return
    if not ctx.iqa:
        raise ctx.not_read('val.select_by')
    if isinstance(select, dict):
        _check_keys(select, {'metric', 'strategy'}, 'val.select_by', 'selection')
        metric, strategy = select.get('metric'), select.get('strategy')
    elif isinstance(select, str):
        metric, strategy = select, None
    else:
        raise OptionError(f'val.select_by must be a metric name or {{metric: NAME, strategy: NAME}}, got {select!r}')
    metrics = val.get('metrics') or {}
    if metric not in metrics:
        raise OptionError(f"val.select_by: '{metric}' is not one of val.metrics: {', '.join(metrics) or '(none)'}")
    if strategy is not None:
        from iqa_plugin.models.selection import STRATEGIES

        if strategy not in STRATEGIES:
            raise OptionError(f"val.select_by: unknown strategy '{strategy}'; known: {', '.join(STRATEGIES)}")
    block = metrics[metric]
    # table metrics, calculate_iqa and its aliases default better from the table in the IQA models;
    # BasicSR's own validators are 'higher' unless told
    if isinstance(block, dict) and block.get('better') is None \
            and _BASICSR_DIRECTIONS.get(block.get('type')) == 'lower':
        raise OptionError(f"val.select_by: {metric} ({block['type']}) is lower-is-better; add better: lower to "
                          f"val.metrics.{metric}, or selection keeps the worst checkpoint")


def check_axis_report(val, ctx):
    """``val.axis_report``: an IQA model, known keys, ``against`` previous|best (best needs ``val.select_by``)."""
    if not (val or {}).get('axis_report'):
        return
    if not ctx.iqa:
        raise ctx.not_read('val.axis_report')
    from iqa_plugin.models.axis_report import check_options as check_axis_options

    try:
        check_axis_options(val)
    except ValueError as e:
        raise OptionError(_one_line(e)) from e


# ------------------------------------------------------------------------------------------ networks
def _check_network_weights(block, cls, where, ctx):
    """Weights-manager entries and explicit files that a plugin network loads at construction."""
    from iqa_plugin import weights as wm

    params = inspect.signature(cls.__init__).parameters
    for entry_key, path_key in _NETWORK_WEIGHT_OPTIONS:
        if entry_key not in params:
            continue
        path = block.get(path_key)
        if isinstance(path, str) and path and path.lower() != 'none':
            p = Path(path).expanduser()
            if not p.is_file():
                raise OptionError(f'{where}.{path_key}: file not found: {p}')
            continue
        default = params[entry_key].default
        entry = block.get(entry_key, None if default is inspect.Parameter.empty else default)
        if isinstance(entry, str) and entry in wm.WEIGHTS:
            ctx.need_callable(where, block['type'], lambda e=entry: wm.resolve(e))


# ------------------------------------------------------------------------------------------ train blocks
def _walk_scorers(node, where, ctx):
    """Every ``scorer:`` sub-block under ``train`` (e.g. ``train.gt_sampling.scorer``) names a table metric."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == 'scorer' and v is not None:
                check_scorer_block(v, f'{where}.{k}', ctx)
            else:
                _walk_scorers(v, f'{where}.{k}', ctx)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk_scorers(v, f'{where}[{i}]', ctx)


# what BasicSR 1.4.2's BaseModel builds (get_optimizer / setup_schedulers); models that override them (the
# plugin's metric trainings: any torch.optim class) are not limited to these
_BASICSR_OPTIMIZERS = ('Adam',)
_BASICSR_SCHEDULERS = ('MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR')


def _check_optim_and_scheduler(train, ctx):
    """``train.optim_*.type`` and ``train.scheduler.type`` against what the model builds: BasicSR's
    ``BaseModel`` only Adam and three schedulers (it fails later, at model construction, otherwise)."""
    from basicsr.models.base_model import BaseModel

    cls = ctx.model_cls
    if cls is None:
        return
    if getattr(cls, 'get_optimizer', None) is BaseModel.get_optimizer:
        for k, v in train.items():
            if k.startswith('optim_') and isinstance(v, dict) and v.get('type', 'Adam') not in _BASICSR_OPTIMIZERS:
                raise OptionError(f"train.{k}.type: {cls.__name__} builds its optimizers with BasicSR's "
                                  f"get_optimizer, which supports only {', '.join(_BASICSR_OPTIMIZERS)}; "
                                  f"got '{v['type']}'")
    sched = train.get('scheduler')
    if getattr(cls, 'setup_schedulers', None) is BaseModel.setup_schedulers and isinstance(sched, dict) \
            and 'type' in sched and sched['type'] not in _BASICSR_SCHEDULERS:
        raise OptionError(f"train.scheduler.type: {cls.__name__} supports {', '.join(_BASICSR_SCHEDULERS)} "
                          f"(BasicSR's setup_schedulers); got '{sched['type']}'")


def _check_train(train, ctx):
    if not isinstance(train, dict):
        raise OptionError('train must be a mapping of training options')
    _check_optim_and_scheduler(train, ctx)
    for k, v in train.items():
        if k == 'iqa_opt':
            if not v:
                continue
            if not isinstance(v, dict):
                raise OptionError('train.iqa_opt must map loss names to loss blocks')
            if not ctx.iqa:
                raise ctx.not_read('train.iqa_opt')
            for name, block in v.items():
                check_loss_block(block, f'train.iqa_opt.{name}', ctx)
        elif k.endswith('_opt') and k not in _TRAIN_NON_LOSS and isinstance(v, dict) and 'type' in v:
            check_loss_block(v, f'train.{k}', ctx)
    _walk_scorers(train, 'train', ctx)
    if train.get('gt_sampling') is not None:
        _check_gt_sampling(train['gt_sampling'])


def _check_gt_sampling(block):
    """``train.gt_sampling`` (multi-GT training): type, keys, tau > 0, score cache file."""
    from iqa_plugin.models import gt_sampling

    try:
        gt_sampling.check_options(block)
    except ValueError as e:
        msg = _one_line(e)
        raise OptionError(msg if msg.startswith('train.gt_sampling') else f'train.gt_sampling: {msg}') from e


# ------------------------------------------------------------------------------------------ entry points
def check_options(opt, is_train=True, resolve_weights=True):
    """Check an option dict; raises OptionError (one line). Returns ``opt`` unchanged.

    Args:
        opt (dict): options as read from the YAML file.
        is_train (bool): check the ``train`` section and ``val.select_by`` too.
        resolve_weights (bool): resolve (download when online) every weights file the option file will
            load; False checks only the structure (for option files whose weights are not on this machine).
    """
    from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY

    ctx = _Context(opt, is_train)
    for key, block in opt.items():
        if not key.startswith('network_') or not isinstance(block, dict):
            continue
        if 'type' not in block:
            raise OptionError(f'{key} has no type: key')
        cls = _get(ARCH_REGISTRY, 'arch', block['type'], key)
        if _is_plugin(cls) or not _takes_any_keyword(cls.__init__):
            _check_keys(block, _named_params(cls.__init__), key, block['type'])
        if _is_plugin(cls):
            _check_network_weights(block, cls, key, ctx)
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
    if is_train:
        _check_train(opt.get('train') or {}, ctx)
    val = opt.get('val') or {}
    metrics = val.get('metrics') or {}
    if not isinstance(metrics, dict):
        raise OptionError('val.metrics must map metric names to metric blocks')
    for name, block in metrics.items():
        check_metric_block(block, f'val.metrics.{name}', ctx)
    try:
        validation_timeout_minutes(opt)
    except ValueError as e:
        raise OptionError(str(e)) from e
    if is_train:
        check_select_by(val, ctx)
        check_axis_report(val, ctx)
    path = opt.get('path') or {}
    for k, p in path.items():
        if (k.startswith('pretrain_network_') or k == 'resume_state') and isinstance(p, str) and p \
                and not Path(p).expanduser().is_file():
            raise OptionError(f'path.{k}: file not found: {p}')
    model_check = getattr(ctx.model_cls, 'check_options', None)  # a model's own pre-flight (NRIQAFinetuneModel)
    if callable(model_check):
        try:
            model_check(opt, is_train)
        except ValueError as e:
            raise OptionError(_one_line(e)) from e
    if resolve_weights:
        ctx.resolve()
    return opt


def check_option_file(path, is_train=True, resolve_weights=True):
    """Load and check an option file; returns the option dict."""
    return check_options(load_yaml(path), is_train=is_train, resolve_weights=resolve_weights)
