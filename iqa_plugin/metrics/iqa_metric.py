"""``calculate_iqa``: one BasicSR validator for every metric of the scoring table.

    val:
      metrics:
        milo: {type: calculate_iqa, metric: milo}                   # better: defaults from the table
        musiq: {type: calculate_iqa, metric: musiq, crop_border: 4}

BasicSR calls ``calculate_iqa(img=restored, img2=gt, **options)`` with uint8 BGR HWC arrays, so it works
in any BasicSR model. Inside the plugin's models (``IQASRModel`` and the other IQA models) the output and
ground-truth tensors in [0, 1] are scored directly instead (``iqa_plugin.utils.val_tensors``). The
network is the frozen one of ``scoring.get_cached_metric``, shared with the losses; it scores in float32
outside autocast (``scoring.float32_scoring``), with the full input checks (NaN/Inf, range).

Options: ``metric`` (a ``scoring.METRICS`` name), ``crop_border``, ``output`` (an output name of the
metric; default its primary score), ``device`` (default CUDA when available), ``better`` (read by
BasicSR; defaults from the table in the plugin's models), and the metric factory's own options
(``weights``, ``weights_path``, ``pretrained``, ...). ``calculate_milo``, ``calculate_relational``,
``calculate_afine`` and ``calculate_nriqa`` are the earlier names, kept so existing option files run.

Each of these functions has a ``metric_of(**options) -> (name, factory options)`` attribute, which the
option pre-flight check uses to resolve the weights before anything is written.
"""
import torch
from basicsr.utils.registry import METRIC_REGISTRY

from iqa_plugin import scoring
from iqa_plugin.utils import val_tensors
from iqa_plugin.utils.image import bgr_uint8_to_tensor

# validator options that are not options of the metric's factory
VALIDATOR_KEYS = ('crop_border', 'output', 'device', 'input_order', 'ref_cache_mib', 'better')


def table_metric_of(metric=None, **opts):
    if metric is None:
        raise ValueError("calculate_iqa needs metric: NAME (one of iqa-plugin score --help's metrics)")
    scoring.get_spec(metric)
    return metric, {k: v for k, v in opts.items() if k not in VALIDATOR_KEYS and k not in ('img', 'img2')}


def _crop(x, border):
    return x[..., border:-border, border:-border] if border and border > 0 else x


@METRIC_REGISTRY.register()
def calculate_iqa(img, img2=None, metric=None, crop_border=0, output=None, device=None, input_order='HWC',
                  ref_cache_mib=None, better=None, **opts):
    """Score ``img`` (against ``img2`` for full-reference metrics) with table metric ``metric``.

    Args:
        img (ndarray): restored image, HWC BGR uint8 (BasicSR's convention).
        img2 (ndarray | None): ground truth, same shape; ignored by no-reference metrics.
        metric (str): scoring-table name.
        crop_border (int): pixels cropped from each side first.
        output (str | None): one of the metric's outputs (default: its primary score).
        device (str | None): default CUDA when available, else CPU.
        input_order (str): only 'HWC'.
        ref_cache_mib (float | None): A-FINE's cache of reference encodings (default 256 MiB).
        better: read by BasicSR, ignored here.
        **opts: options of the metric's factory.
    Returns:
        float: the chosen output, in the metric's own scale and direction.
    """
    name, opts = table_metric_of(metric, **opts)
    spec = scoring.get_spec(name)
    if input_order != 'HWC':
        raise ValueError(f"calculate_iqa: input_order must be 'HWC', got {input_order!r}")
    if spec.kind == 'fr':
        if img2 is None:
            raise ValueError(f'calculate_iqa: {name} is full-reference and needs the ground truth img2 (dataroot_gt)')
        if img.shape != img2.shape:
            raise ValueError(f'calculate_iqa: image shapes differ: img {img.shape} vs img2 {img2.shape}')
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    scorer = scoring.get_cached_metric(name, device, **opts)
    if hasattr(scorer, 'ref_cache'):
        scorer.ref_cache.ensure(256 if ref_cache_mib is None else ref_cache_mib)
    tensors = val_tensors.lookup(img)
    if tensors is not None:  # the model's own output tensors: no uint8 rounding
        dist = tensors[0].clamp(0, 1).to(device)
        ref = tensors[1].to(device) if tensors[1] is not None else None
    else:
        dist = bgr_uint8_to_tensor(img, device)
        ref = bgr_uint8_to_tensor(img2, device) if img2 is not None else None
    dist, ref = _crop(dist, crop_border), _crop(ref, crop_border) if ref is not None else None
    with torch.no_grad(), scoring.float32_scoring(dist.device.type):  # float32 outside any autocast
        out = scorer(scoring.as_float32(dist), scoring.as_float32(ref) if spec.kind == 'fr' else None)
    key = output or next(iter(out))
    if key not in out:
        raise ValueError(f"calculate_iqa: {name} has no output '{key}'; available: {', '.join(out)}")
    return float(out[key].reshape(-1)[0])


calculate_iqa.metric_of = table_metric_of
