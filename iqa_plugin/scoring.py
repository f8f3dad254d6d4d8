"""The one scoring API: metrics are created by name from a single table of defaults.

Every factory in the table returns a frozen ``torch.nn.Module`` in eval mode with attributes
``kind`` ('fr' or 'nr'), ``lower_better`` (bool) and ``output_names`` (tuple), whose
``forward(dist, ref=None)`` takes (B, 3, H, W) RGB tensors in [0, 1] and returns an ordered
dict of (B,) tensors, the primary score first. ``forward`` is differentiable with respect to
``dist`` where the metric allows it (callers that only score wrap it in ``torch.no_grad()``), so the
same module serves pyiqa's ``as_loss`` and gradient checks. Factories take ``device`` plus the keyword
arguments listed in ``defaults``; ``weights_path`` always means an explicit weights file.
"""
import importlib
import threading
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class MetricSpec:
    factory: str  # 'module:function'
    kind: str  # 'fr' (needs a reference) or 'nr'
    lower_better: bool
    defaults: dict = field(default_factory=dict)
    description: str = ''


_PYIQA_NR = 'iqa_plugin.nriqa:build_pyiqa_scorer'

METRICS = {
    'milo': MetricSpec('iqa_plugin.archs.milo_arch:build_milo_scorer', 'fr', True, {'weights': 'milo'},
                       'MILO (official weights): raw error and quality score'),
    'milo-pseudomos': MetricSpec('iqa_plugin.archs.milo_arch:build_milo_scorer', 'fr', True,
                                 {'weights': 'milo-pseudomos'}, 'MILO trained label-free by this project'),
    'relational': MetricSpec('iqa_plugin.archs.relational_arch:build_relational_scorer', 'fr', False,
                             {'weights': 'relational'}, 'relational score s(dist | ref), 0 for identical'),
    'afine': MetricSpec('iqa_plugin.archs.afine_arch:build_afine_scorer', 'fr', True,
                        {'model_type': 'afine_all_scale'}, 'A-FINE, scaled score (afine_all_scale)'),
    'afine_fr': MetricSpec('iqa_plugin.archs.afine_arch:build_afine_scorer', 'fr', True,
                           {'model_type': 'afine_fr'}, 'A-FINE fidelity term'),
    'afine_nr': MetricSpec('iqa_plugin.archs.afine_arch:build_afine_scorer', 'nr', True,
                           {'model_type': 'afine_nr'}, 'A-FINE naturalness term'),
    'nr-lite': MetricSpec('iqa_plugin.archs.nr_lite_arch:build_nr_lite_scorer', 'nr', False,
                          {'weights': 'nr-lite'}, 'small offline NR model trained by this project'),
}
# pyiqa no-reference metrics (weights through pyiqa's cache or weights_path); direction from pyiqa.
for _name, _lower in [('musiq', False), ('nima', False), ('topiq_nr', False), ('qalign', False), ('liqe', False),
                      ('paq2piq', False), ('arniqa', False), ('clipiqa', False), ('niqe', True), ('brisque', True)]:
    METRICS[_name] = MetricSpec(_PYIQA_NR, 'nr', _lower, {'metric_name': _name}, f'pyiqa {_name}')


def get_spec(name):
    if name not in METRICS:
        raise ValueError(f"unknown metric '{name}'; known: {', '.join(sorted(METRICS))}")
    return METRICS[name]


def _import_factory(path):
    module, func = path.split(':')
    return getattr(importlib.import_module(module), func)


def create_metric(name, device=None, **kwargs):
    """Build metric ``name`` (see ``METRICS``) with its defaults overridden by ``kwargs``."""
    spec = get_spec(name)
    opts = {**spec.defaults, **{k: v for k, v in kwargs.items() if v is not None}}
    device = torch.device(device) if device is not None else torch.device('cpu')
    return _import_factory(spec.factory)(device=device, **opts)


_cache = {}
_cache_lock = threading.Lock()


def get_cached_metric(name, device=None, **kwargs):
    """``create_metric`` built once per (name, device, options) and reused: for per-image validators."""
    key = (name, str(device), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = create_metric(name, device=device, **kwargs)
        return _cache[key]


def clear_cache():
    with _cache_lock:
        _cache.clear()


def freeze(module):
    """Eval mode and no trainable parameters: for networks used as metrics or losses."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
