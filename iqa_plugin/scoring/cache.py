"""The one cache of frozen networks and the one precision rule (see ``iqa_plugin.scoring``).

``get_cached_metric`` builds a frozen network once per (factory, options with defaults filled in, device):
losses, validators and GT selection share it. ``device_key`` gives every device one spelling;
``preflight_metric`` builds a CPU copy that fails early on missing weights and is released once the scorer is
built on another device. ``float32_scoring`` / ``as_float32``: frozen scorers run in float32 outside
autocast; ``freeze``: eval mode, no trainable parameters. Imports torch lazily.
"""
import contextlib
import threading

from iqa_plugin.scoring.table import create_metric, factory_defaults, get_spec, metric_options


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
    full = {**factory_defaults(factory), **opts}
    return (factory, str(device), tuple(sorted((k, repr(v)) for k, v in full.items())))


def _lookup(name, device, kwargs, preflight):
    device = device_key(device)
    opts = metric_options(name, kwargs)
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
    key = _cache_key(name, 'cpu', metric_options(name, kwargs))
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
    and ``scorer.score_candidates``.
    """
    import torch

    with contextlib.ExitStack() as stack:
        for kind in dict.fromkeys(('cpu', str(device_type))):
            if torch.amp.is_autocast_available(kind):
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
