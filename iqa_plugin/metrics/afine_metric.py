"""A-FINE validators for BasicSR: ``calculate_afine`` (``calculate_iqa`` with the A-FINE row of ``model_type``,
kept so existing option files run; set nothing for ``better``: it defaults from the table in the plugin's
models) and the pairwise (2AFC) validators of ``AFINEModel``."""
import torch
from basicsr.utils.registry import METRIC_REGISTRY

from iqa_plugin.metrics.iqa_metric import calculate_iqa


def _afine_metric_of(model_type='afine_all_scale', **opts):
    from iqa_plugin.losses.afine_loss import AFINELoss

    name, factory_opts = AFINELoss.metric_of(model_type=model_type, **opts)
    return name, {k: v for k, v in factory_opts.items() if k in opts or k == 'model_type'}


@METRIC_REGISTRY.register()
def calculate_afine(img, img2=None, model_type='afine_all_scale', crop_border=0, ref_cache_mib=256, device=None,
                    **kwargs):
    """A-FINE (lower is better): ``calculate_iqa`` with the table row of ``model_type`` ('afine_all_scale',
    'afine_all', 'afine_fr', 'afine_nr'); other keys (weights, weights_path, clip_weights, clip_weights_path,
    size_mode) go to the A-FINE factory."""
    kwargs.pop('better', None)
    name, opts = _afine_metric_of(model_type, **kwargs)
    return calculate_iqa(img, img2, metric=name, crop_border=crop_border, device=device, ref_cache_mib=ref_cache_mib,
                         **opts)


calculate_afine.metric_of = _afine_metric_of


# ------------------------------------------------------------------------------------------------
# pairwise (2AFC) validators of AFINEModel: called with the scores of a whole validation set

def _as_tensor(x):
    return x.detach().float().flatten().cpu() if torch.is_tensor(x) else torch.as_tensor(x, dtype=torch.float32).flatten()


@METRIC_REGISTRY.register()
def calculate_2afc_accuracy(d1, d2, label, **kwargs):
    """2AFC accuracy of lower-is-better scores ``d1``, ``d2`` (N,) against labels P(first better) (N,).

    Pairs labelled 0.5 (ties) are skipped; a predicted tie counts as half correct. NaN when no pair
    is left. ``**kwargs`` (``better``) are ignored. Higher is better.
    """
    d1, d2, label = _as_tensor(d1), _as_tensor(d2), _as_tensor(label)
    keep = label != 0.5
    if not bool(keep.any()):
        return float('nan')
    d1, d2, label = d1[keep], d2[keep], label[keep]
    pred_first = (d1 < d2).float() + 0.5 * (d1 == d2).float()
    truth_first = (label > 0.5).float()
    return float((pred_first * truth_first + (1 - pred_first) * (1 - truth_first)).mean())


@METRIC_REGISTRY.register()
def calculate_pairwise_fidelity(d1, d2, label, **kwargs):
    """Mean fidelity loss of the Thurstone probabilities Phi((d2 - d1)/sqrt 2) against ``label``; lower is better."""
    from iqa_plugin.archs.afine_arch import fidelity_loss, thurstone_prob

    d1, d2, label = _as_tensor(d1), _as_tensor(d2), _as_tensor(label)
    return float(fidelity_loss(thurstone_prob(d1, d2), label).mean())
