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

The package: ``table`` (``METRICS``, ``MetricSpec``, ``create_metric``, ``normalise_score``, the weights a row
loads), ``cache`` (``get_cached_metric``, ``device_key``, ``preflight_metric``, ``float32_scoring``, ``freeze``),
both re-exported here and torch-free at import; ``scorer`` (``NRScorer``, ``FRScorer``, ``score_candidates``),
``pyiqa_adapter`` (pyiqa's metrics without pyiqa's downloads), ``pyiqa_offline`` and ``axes`` (the relational
network's per-axis comparisons) import torch and are imported by name.
"""
from iqa_plugin.scoring.table import (  # noqa: F401
    METRICS,
    MetricSpec,
    available_offline,
    create_metric,
    factory_defaults,
    factory_options,
    get_spec,
    import_factory,
    metric_options,
    normalise_score,
    resolve_weights,
    table_rows,
    weight_requirements,
)
from iqa_plugin.scoring.cache import (  # noqa: F401
    as_float32,
    cached_devices,
    clear_cache,
    device_key,
    float32_scoring,
    freeze,
    get_cached_metric,
    preflight_metric,
)
