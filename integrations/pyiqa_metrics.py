"""Make the plugin's metrics available through ``pyiqa.create_metric``.

    import integrations.pyiqa_metrics as bridge   # from a clone (or copy this file next to your code)
    bridge.register()
    m = pyiqa.create_metric('milo', weights_path='MILO.pth')
    score = m(dist, ref)                          # (B,) tensor; as_loss=True gives a differentiable loss

Only names pyiqa does not already define are added (pyiqa has its own A-FINE and NR metrics).
One pyiqa arch, ``IQAPluginMetric``, wraps ``iqa_plugin.scoring.create_metric``; pyiqa's own options
(``as_loss``, ``loss_weight``, ``device``) keep working.
"""
import torch

import iqa_plugin  # noqa: F401  (shim, registries)
from iqa_plugin import scoring

PLUGIN_NAMES = ('milo', 'milo-pseudomos', 'relational', 'nr-lite')


class IQAPluginMetric(torch.nn.Module):
    """pyiqa arch: the primary output of an iqa-plugin metric, shape (B,)."""

    def __init__(self, metric, **kwargs):
        super().__init__()
        self.metric_name = metric
        self.scorer = scoring.create_metric(metric, **kwargs)

    def forward(self, target, ref=None):
        out = self.scorer(target, ref if self.scorer.kind == 'fr' else None)
        return next(iter(out.values()))


def register(names=PLUGIN_NAMES):
    """Add ``names`` to pyiqa's metric table; returns the names added. Idempotent."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    from pyiqa.utils.registry import ARCH_REGISTRY

    if 'IQAPluginMetric' not in ARCH_REGISTRY:
        ARCH_REGISTRY.register(IQAPluginMetric)
    added = []
    for name in names:
        spec = scoring.get_spec(name)
        if name in DEFAULT_CONFIGS and DEFAULT_CONFIGS[name]['metric_opts'].get('type') != 'IQAPluginMetric':
            continue  # never shadow one of pyiqa's own metrics
        DEFAULT_CONFIGS[name] = {
            'metric_opts': {'type': 'IQAPluginMetric', 'metric': name},
            'metric_mode': spec.kind.upper(),
            'lower_better': spec.lower_better,
        }
        added.append(name)
    return added
