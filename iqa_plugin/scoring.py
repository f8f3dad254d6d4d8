"""The one scoring API: every metric is created by name from the single table ``METRICS``.

The table is the only place a metric's kind ('fr' needs a reference, 'nr' does not), direction
(``lower_better``), score range (for range normalisation in losses), input needs (``min_size``),
whether it may be optimised (``loss``), the weight files it loads and its factory live. Everything
else looks it up here: the losses (``iqa_plugin.losses.frozen_iqa.FrozenIQALoss``), the validator
``calculate_iqa`` (and its aliases), the SR models' tensor validators and checkpoint selection
(``better`` defaults from ``lower_better``), the option pre-flight check (weights resolved before
anything is written), ``iqa-plugin score`` and its ``--help`` listing.

Every factory returns a frozen ``torch.nn.Module`` in eval mode with attributes ``kind``,
``lower_better`` and ``output_names`` (tuple, primary first), whose ``forward(dist, ref=None)`` takes
(B, 3, H, W) RGB tensors in [0, 1] and returns an ordered dict of (B,) tensors. ``forward`` is
differentiable with respect to ``dist`` where the metric allows it (validators wrap it in
``torch.no_grad()``). Factories take ``device`` plus keyword arguments; ``weights_path`` always means
an explicit weights file.

Frozen networks are built once per (name, device, options) by ``get_cached_metric``: the one cache
of frozen networks, shared by losses and validators. ``device_key`` gives every device one spelling
(``'cuda'``, ``'cuda:0'`` and the current CUDA device are one entry); ``preflight_metric`` builds a
CPU copy that fails early on missing weights and is released once the scorer is built on another
device. ``float32_scoring`` is the one precision rule: frozen scorers run in float32 outside autocast.

This module imports torch lazily, so listing the table (the CLI's help) stays fast.
"""
import contextlib
import importlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class MetricSpec:
    """One row of the table.

    Attributes:
        factory: ``'module:function'`` building the frozen scorer.
        kind: 'fr' (needs a reference) or 'nr'.
        lower_better: direction of the primary output.
        defaults: factory keyword arguments of this row.
        description: one line for listings.
        score_range: (lo, hi) of the primary output, the scale used to normalise it into a loss
            (approximate for metrics without hard bounds; values outside are not clipped).
        min_size: smallest image side accepted.
        loss: '' when the metric may be optimised, else why it is refused as a loss.
        weight_options: pairs (entry option, explicit-path option) naming weights-manager entries
            (``iqa_plugin.weights``) that the factory loads, e.g. ('weights', 'weights_path').
        pyiqa: the metric's files are pyiqa's published files (``iqa_plugin.nriqa``).
        resolver: for weights the weights manager does not hold as files (a Stable Diffusion folder), a
            ``'module:function'`` that resolves them (``allow_download`` and the factory options as keywords).
    """
    factory: str
    kind: str
    lower_better: bool
    defaults: dict = field(default_factory=dict)
    description: str = ''
    score_range: tuple = (0.0, 1.0)
    min_size: int = 16
    loss: str = ''
    weight_options: tuple = (('weights', 'weights_path'),)
    pyiqa: bool = False
    resolver: str = ''  # 'module:function(allow_download=..., **options) -> [paths]' for weights that are not files

    @property
    def better(self):
        """'lower' or 'higher': BasicSR's ``better`` key for this metric."""
        return 'lower' if self.lower_better else 'higher'

    @property
    def loss_capable(self):
        return not self.loss


_MILO = 'iqa_plugin.archs.milo_arch:build_milo_scorer'
_AFINE = 'iqa_plugin.archs.afine_arch:build_afine_scorer'
_AFINE_WEIGHTS = (('weights', 'weights_path'), ('clip_weights', 'clip_weights_path'))
_AFINE_FILES = {'weights': 'afine', 'clip_weights': 'clip-vit-b-32'}  # the factory's defaults: what a row loads
_PYIQA_NR = 'iqa_plugin.nriqa:build_pyiqa_scorer'
_NSS = 'hand-crafted natural-scene statistics: optimising them games the statistics'

METRICS = {
    'milo': MetricSpec(_MILO, 'fr', True, {'weights': 'milo'},
                       'MILO (official weights): quality score, 0 = identical', (0.0, 1.0), 16),
    'milo-pseudomos': MetricSpec(_MILO, 'fr', True, {'weights': 'milo-pseudomos'},
                                 'MILO trained label-free by this project (ships with the package)', (0.0, 1.0), 16),
    'relational': MetricSpec('iqa_plugin.archs.relational_arch:build_relational_scorer', 'fr', False,
                             {'weights': 'relational'}, 'relational score s(dist | ref) <= 0, 0 = identical',
                             (-1.0, 0.0), 16),
    'afine': MetricSpec(_AFINE, 'fr', True, {'model_type': 'afine_all_scale', **_AFINE_FILES},
                        'A-FINE, scaled score (afine_all_scale)', (0.0, 100.0), 32, weight_options=_AFINE_WEIGHTS),
    'afine_fr': MetricSpec(_AFINE, 'fr', True, {'model_type': 'afine_fr', **_AFINE_FILES}, 'A-FINE fidelity term',
                           (-2.0, 2.0), 32, weight_options=_AFINE_WEIGHTS),
    'afine_all': MetricSpec(_AFINE, 'fr', True, {'model_type': 'afine_all', **_AFINE_FILES},
                            'A-FINE before the final scaling (D)', (-2.0, 2.0), 32, weight_options=_AFINE_WEIGHTS),
    'afine_nr': MetricSpec(_AFINE, 'nr', True, {'model_type': 'afine_nr', **_AFINE_FILES}, 'A-FINE naturalness term',
                           (-2.0, 2.0), 32, weight_options=_AFINE_WEIGHTS),
    'nr-lite': MetricSpec('iqa_plugin.archs.nr_lite_arch:build_nr_lite_scorer', 'nr', False, {'weights': 'nr-lite'},
                          'small offline NR model trained by this project (ships with the package)', (0.0, 1.0), 32),
    'niqe-fitted': MetricSpec('iqa_plugin.archs.niqe_fitted_arch:build_niqe_fitted_scorer', 'nr', True,
                              {'weights': 'niqe-fitted'}, 'NIQE fitted on this project\'s pristine photos; flat '
                              'images score 100 (ships with the package)', (0.0, 100.0), 96, _NSS),
    'lgdm': MetricSpec('iqa_plugin.archs.lgdm_arch:build_lgdm_scorer', 'nr', False, {},
                       'LGDM-style hyperfeatures of frozen Stable Diffusion 1.x + trained regressor (needs diffusers, '
                       'SD weights, a regressor file)', (0.0, 1.0), 64,
                       'guided diffusion passes per call, not differentiable w.r.t. the image', weight_options=(),
                       resolver='iqa_plugin.archs.lgdm_arch:resolve_lgdm_weights'),
}
# pyiqa no-reference metrics (weights through pyiqa's cache or weights_path); direction and range as
# pyiqa's DEFAULT_CONFIGS give them (checked against pyiqa in tests/test_scoring.py).
for _name, _lower, _range, _min, _loss in [
        ('musiq', False, (0.0, 100.0), 32, ''), ('nima', False, (0.0, 10.0), 32, ''),
        ('topiq_nr', False, (0.0, 1.0), 32, ''),
        ('qalign', False, (1.0, 5.0), 16, 'its input goes through PIL (no gradient)'),
        ('liqe', False, (1.0, 5.0), 224, ''), ('paq2piq', False, (0.0, 100.0), 32, ''),
        ('arniqa', False, (0.0, 1.0), 32, ''), ('clipiqa', False, (0.0, 1.0), 32, ''),
        ('niqe', True, (0.0, 100.0), 96, _NSS), ('brisque', True, (0.0, 150.0), 32, _NSS)]:
    METRICS[_name] = MetricSpec(_PYIQA_NR, 'nr', _lower, {'metric_name': _name}, f'pyiqa {_name}', _range, _min, _loss,
                                weight_options=(), pyiqa=True)


def get_spec(name):
    """The ``MetricSpec`` of ``name``; ValueError naming the known metrics otherwise."""
    if name not in METRICS:
        raise ValueError(f"unknown metric '{name}'; known: {', '.join(sorted(METRICS))}")
    return METRICS[name]


def import_factory(path):
    """``'module:function'`` -> the function."""
    module, func = path.split(':')
    return getattr(importlib.import_module(module), func)


def factory_options(name):
    """Keyword names the metric's factory accepts (besides ``device``): for option checks."""
    import inspect

    spec = get_spec(name)
    params = inspect.signature(import_factory(spec.factory)).parameters
    return (set(spec.defaults) | {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}) \
        - {'device'}


_defaults_memo = {}


def _factory_defaults(factory):
    """The keyword defaults of a factory (besides ``device``), memoised."""
    if factory not in _defaults_memo:
        import inspect

        params = inspect.signature(import_factory(factory)).parameters.values()
        _defaults_memo[factory] = {p.name: p.default for p in params
                                   if p.default is not p.empty and p.default is not None and p.name != 'device'}
    return _defaults_memo[factory]


def _options(name, kwargs):
    spec = get_spec(name)
    return {**spec.defaults, **{k: v for k, v in kwargs.items() if v is not None}}


def create_metric(name, device=None, **kwargs):
    """Build metric ``name`` (see ``METRICS``) with its defaults overridden by ``kwargs``."""
    import torch

    spec = get_spec(name)
    device = torch.device(device) if device is not None else torch.device('cpu')
    return import_factory(spec.factory)(device=device, **_options(name, kwargs))


def device_key(device=None):
    """The one ``torch.device`` a frozen network is cached (and built) on for ``device``.

    None and any CPU spelling -> ``cpu``; a ``cuda`` device without an index -> the current CUDA device
    (``cuda:<torch.cuda.current_device()>``) when CUDA is available, which is where torch would put it,
    so ``'cuda'``, ``'cuda:0'`` (on device 0) and a tensor's ``cuda:0`` are one cache entry. Anything else
    is returned as ``torch.device(device)``.
    """
    import torch

    if device is None:
        return torch.device('cpu')
    device = torch.device(device)
    if device.type == 'cpu':
        return torch.device('cpu')
    if device.type == 'cuda' and device.index is None and torch.cuda.is_available():
        return torch.device('cuda', torch.cuda.current_device())
    return device


_cache = {}
_preflight_only = set()  # CPU keys built by preflight_metric and not asked for since
_cache_lock = threading.RLock()


def _cache_key(name, device, opts):
    # Keyed by factory and its options with the factory's own defaults filled in, so rows and callers
    # that differ only in what they leave to a default ('milo' with weights='milo-pseudomos' and
    # 'milo-pseudomos'; a loss and a validator) share one network.
    factory = get_spec(name).factory
    full = {**_factory_defaults(factory), **opts}
    return (factory, str(device), tuple(sorted((k, repr(v)) for k, v in full.items())))


def _lookup(name, device, kwargs, preflight):
    device = device_key(device)
    opts = _options(name, kwargs)
    key = _cache_key(name, device, opts)
    with _cache_lock:
        scorer = _cache.get(key)
        if scorer is None:
            scorer = _cache[key] = create_metric(name, device=device, **opts)
            if preflight:
                _preflight_only.add(key)
        elif not preflight:
            _preflight_only.discard(key)  # asked for on the CPU for use: kept from now on
        if device.type != 'cpu':
            cpu_key = (key[0], 'cpu', key[2])
            if cpu_key in _preflight_only:  # the pre-flight copy served its purpose: release it
                _preflight_only.discard(cpu_key)
                _cache.pop(cpu_key, None)
        return scorer


def get_cached_metric(name, device=None, **kwargs):
    """The frozen metric ``name`` for these options on ``device``, built once per process.

    The one cache of frozen IQA networks: losses, validators and GT selection share it. The key uses
    the options after the table's defaults are applied, so ``('milo', weights='milo')`` and ``'milo'``
    are the same network, and the device after ``device_key``, so ``'cuda'`` and ``'cuda:0'`` are too.
    Asking for it on a non-CPU device releases the CPU copy that ``preflight_metric`` built, unless that
    copy was asked for here since. Do not move or modify the returned module.
    """
    return _lookup(name, device, kwargs, preflight=False)


def preflight_metric(name, **kwargs):
    """Build (or find) metric ``name`` on the CPU now, so missing or unreadable weights fail early.

    For objects that build their scorer at construction but use it later on the training device (the
    losses). The CPU copy stays cached until the same scorer is asked for on another device; then it is
    released, unless something asked for it on the CPU (``get_cached_metric``) in between. Returns None:
    callers that use the scorer ask ``get_cached_metric`` for it on their device.
    """
    _lookup(name, 'cpu', kwargs, preflight=True)


def cached_devices(name, **kwargs):
    """Sorted device strings on which metric ``name`` with these options is cached now (introspection)."""
    key = _cache_key(name, 'cpu', _options(name, kwargs))
    with _cache_lock:
        return sorted(k[1] for k in _cache if k[0] == key[0] and k[2] == key[2])


def clear_cache():
    with _cache_lock:
        _cache.clear()
        _preflight_only.clear()


@contextlib.contextmanager
def float32_scoring(device_type='cpu'):
    """Context in which frozen scorers run: autocast off (for ``device_type`` and the CPU).

    The one precision rule of the plugin's frozen IQA networks: they score in float32 whatever autocast
    the training step runs under (``train.amp`` of ``NRIQAFinetuneModel``), so a loss value or a GT choice
    does not depend on the device or its autocast dtype. Callers also cast their inputs with
    ``as_float32``. Used by ``FrozenIQALoss.forward``, the validators (``calculate_iqa``), ``NRScorer.score``
    and ``nriqa.score_candidates``.
    """
    import torch

    available = getattr(torch.amp, 'is_autocast_available', lambda kind: kind in ('cpu', 'cuda'))  # torch < 2.4
    with contextlib.ExitStack() as stack:
        for kind in dict.fromkeys(('cpu', str(device_type))):
            if available(kind):
                stack.enter_context(torch.autocast(kind, enabled=False))
        yield


def as_float32(x):
    """A floating tensor as float32 (differentiable cast; the same tensor when already float32); anything
    else (None, integer tensors that input checks refuse) unchanged."""
    import torch

    if torch.is_tensor(x) and x.is_floating_point() and x.dtype != torch.float32:
        return x.float()
    return x


def freeze(module):
    """Eval mode and no trainable parameters: for networks used as metrics or losses."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


# ------------------------------------------------------------------------------------ weights
def weight_requirements(name, **kwargs):
    """What metric ``name`` with these options loads: a list of ``(kind, value)`` pairs.

    ``('path', p)`` for an explicit file, ``('entry', e)`` for a weights-manager entry,
    ``('pyiqa', metric_name)`` for pyiqa's published files. Empty for random-weight builds
    (``pretrained: false`` without ``weights_path``).
    """
    spec = get_spec(name)
    opts = _options(name, kwargs)
    if opts.get('pretrained') is False and not opts.get('weights_path'):
        return []
    needs = []
    for entry_key, path_key in spec.weight_options:
        if opts.get(path_key):
            needs.append(('path', str(opts[path_key])))
        elif opts.get(entry_key) and opts[entry_key] != 'none':
            needs.append(('entry', opts[entry_key]))
    if spec.pyiqa:
        if opts.get('weights_path'):
            needs.append(('path', str(opts['weights_path'])))
        elif opts['metric_name'] != 'qalign':
            needs.append(('pyiqa', opts['metric_name']))
        else:
            needs.append(('hf', 'q-future/one-align'))
    return needs


def resolve_weights(name, allow_download=True, **kwargs):
    """Resolve every file metric ``name`` will load (downloading where allowed and online).

    Raises ``iqa_plugin.weights.WeightsError`` (one line: the file, its URL and the folders searched) for
    the first file that cannot be had, ``FileNotFoundError`` for a missing explicit path. Returns the paths.
    """
    from iqa_plugin import weights as wm

    paths = []
    for kind, value in weight_requirements(name, **kwargs):
        if kind == 'path':
            p = Path(os.path.expanduser(value))
            if not p.is_file():
                raise FileNotFoundError(f"weights file for '{name}' not found: {p}")
            paths.append(p)
        elif kind == 'entry':
            paths.append(wm.resolve(value, allow_download=allow_download))
        elif kind == 'pyiqa':  # looked up by name like the factories: nriqa builds on this module
            paths.extend(import_factory('iqa_plugin.nriqa:resolve_metric_files')(value, allow_download))
        elif kind == 'hf':
            import_factory('iqa_plugin.nriqa:check_qalign_snapshot')()
    spec = get_spec(name)
    if spec.resolver:
        paths.extend(import_factory(spec.resolver)(allow_download=allow_download, **_options(name, kwargs)))
    return paths


def available_offline(name, **kwargs):
    """(True, '') when every file metric ``name`` loads is on this machine now, else (False, reason).

    Never downloads.
    """
    from iqa_plugin import weights as wm

    try:
        resolve_weights(name, allow_download=False, **kwargs)
    except (wm.WeightsError, FileNotFoundError, ImportError, ValueError) as e:
        return False, ' '.join(str(e).split())
    return True, ''


def table_rows():
    """(name, kind, direction, description) for every metric, sorted: for listings (no torch import)."""
    return [(n, s.kind, s.better, s.description) for n, s in sorted(METRICS.items())]
