"""The frozen scorer wrappers of no-reference and full-reference networks, and batched candidate scoring.

``NRScorer`` / ``FRScorer`` wrap a quality network as a frozen, eval-mode module with the scorer contract of
``iqa_plugin.scoring`` (``forward(dist, ref=None)`` -> ``{name: (B,) scores}``, ``normalize``, ``min_size``,
``score_range``, ``lower_better``); every network of the table uses them: the pyiqa adapter
(``scoring.pyiqa_adapter``) and the plugin's own networks (``archs/nr_lite_arch.py``, ``niqe_fitted_arch.py``,
``lgdm_arch.py``). ``score_candidates(metric, candidates)`` scores (B, N, 3, H, W) candidate images in one
no-grad batched pass and returns (B, N) scores oriented higher = better (the multi-GT strategies use it).

Precision: the networks score in float32 outside autocast (``scoring.float32_scoring``), so a score or
a GT choice does not depend on the device or on a training step's autocast.
"""
from collections import OrderedDict

import torch
from torch import nn

from iqa_plugin.scoring import METRICS, as_float32, float32_scoring, freeze, get_cached_metric, normalise_score
from iqa_plugin.utils.image import prepare_image, prepare_pair

# --------------------------------------------------------------------------------------------
# the scorers
# --------------------------------------------------------------------------------------------


class NRScorer(nn.Module):
    """Common frozen wrapper of a no-reference quality network.

    Attributes:
        kind ('nr'), lower_better (bool), output_names ((name,)), min_size (int),
        score_range ((lo, hi) floats, the metric's documented scale), loss_capable (bool).
    Forward: ``dist`` (B, 3, H, W) or (3, H, W), RGB in [0, 1] (grayscale replicated, values
    outside [0, 1] clamped with a warning) -> ``{name: (B,) float tensor}``. ``score`` runs the network
    in float32 outside autocast.
    """
    kind = 'nr'

    def __init__(self, name, net, lower_better, score_range, min_size, loss_capable=True, batch_one=False):
        super().__init__()
        self.name = name
        self.net = freeze(net)
        self.lower_better = bool(lower_better)
        self.output_names = (name,)
        self.score_range = (float(score_range[0]), float(score_range[1]))
        self.min_size = int(min_size)
        self.loss_capable = bool(loss_capable)
        self.batch_one = batch_one
        # Follows .to(device) even for networks without parameters (niqe, brisque).
        self.register_buffer('_device_probe', torch.empty(0), persistent=False)
        self.eval()

    @classmethod
    def for_row(cls, name, net, **overrides):
        """The scorer of scoring-table row ``name`` around ``net``: direction, score range, minimum side and loss
        refusal are the row's (``overrides`` for options that change them, e.g. a score range)."""
        spec = METRICS[name]
        facts = {'lower_better': spec.lower_better, 'score_range': spec.score_range, 'min_size': spec.min_size,
                 'loss_capable': spec.loss_capable, **overrides}
        return cls(name, net, **facts)

    def train(self, mode=True):
        """Always eval: the wrapped network is a frozen metric."""
        return super().train(False)

    @property
    def device(self):
        return self._device_probe.device

    def prepare(self, dist):
        """Validate ``dist`` (see ``prepare_image``) with this metric's minimum side."""
        return prepare_image(dist, name='dist', min_size=self.min_size)

    def _run(self, *inputs):
        """(B,) float32 scores of the network on prepared inputs, in float32 outside autocast."""
        inputs = [as_float32(x.to(self.device)) for x in inputs]
        with float32_scoring(inputs[0].device.type):
            out = self.net(*inputs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(inputs[0].shape[0], -1)[:, 0].float()

    def score(self, x):
        """(B,) float32 scores of a prepared batch ``x`` (B, 3, H, W) in [0, 1] (no validation); the network
        runs in float32 outside autocast (``scoring.float32_scoring``)."""
        if self.batch_one and x.shape[0] > 1:
            return torch.cat([self.score(x[i:i + 1]) for i in range(x.shape[0])])
        return self._run(x)

    def forward(self, dist, ref=None):
        return OrderedDict([(self.name, self.score(self.prepare(dist)))])

    def normalize(self, scores):
        """Scores -> quality in ~[0, 1], higher = better, by ``score_range`` (``scoring.normalise_score``)."""
        return normalise_score(scores, self.score_range, self.lower_better)

    def extra_repr(self):
        return f'name={self.name}, lower_better={self.lower_better}, score_range={self.score_range}'


class FRScorer(NRScorer):
    """Frozen wrapper of a full-reference network: ``forward(dist, ref)`` -> ``{name: (B,) float tensor}``,
    both (B, 3, H, W) RGB in [0, 1] of the same shape; ``score(dist, ref)`` on prepared inputs."""
    kind = 'fr'

    def prepare(self, dist, ref):
        """Validate the pair (see ``prepare_pair``) with this metric's minimum side."""
        return prepare_pair(dist, ref, min_size=self.min_size)

    def score(self, dist, ref):
        return self._run(dist, ref)

    def forward(self, dist, ref=None):
        if ref is None:
            raise ValueError(f"'{self.name}' is a full-reference metric: it needs ref")
        return OrderedDict([(self.name, self.score(*self.prepare(dist, ref)))])


# --------------------------------------------------------------------------------------------
# batched candidate scoring
# --------------------------------------------------------------------------------------------


def score_candidates(metric, candidates, chunk_size=32, device=None, normalize=False, amp=None, **build_kwargs):
    """Score N candidate images per sample in one no-grad batched pass.

    Args:
        metric (str | NRScorer): a scoring-table name (built once via ``get_cached_metric`` with
            ``device`` and ``build_kwargs``) or an already built no-reference scorer.
        candidates (Tensor): (B, N, 3, H, W) RGB in [0, 1].
        chunk_size (int): images per forward; bounds memory (B*N images in ceil(B*N/chunk) calls).
        device: where to run (default: the scorer's device, else CUDA when available).
        normalize (bool): return ``scorer.normalize`` quality (~[0, 1]) instead of raw scores.
        amp: only None or False: the scorer always runs in float32 outside autocast (an enclosing autocast
            is switched off too), so scores and GT choices do not depend on the device; True is refused.
    Returns:
        Tensor (B, N) float32 on ``candidates.device``, **higher = better**: raw scores for
        higher-better metrics, negated raw scores for lower-better ones (niqe, brisque), or the
        normalised quality with ``normalize=True``.
    """
    if not torch.is_tensor(candidates) or candidates.ndim != 5:
        shape = tuple(candidates.shape) if torch.is_tensor(candidates) else type(candidates).__name__
        raise ValueError(f'candidates must be a (B, N, 3, H, W) tensor, got {shape}')
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
    if amp:
        raise ValueError('score_candidates: amp is no longer supported: frozen scorers run in float32 outside '
                         'autocast so GT choices do not depend on the device')
    if isinstance(metric, str):
        if device is None:
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        scorer = get_cached_metric(metric, device=device, **build_kwargs)
    else:
        scorer = metric
        if device is not None:
            scorer = scorer.to(device)
    if getattr(scorer, 'kind', 'nr') != 'nr':
        raise ValueError(f'score_candidates needs a no-reference metric, got a {scorer.kind} one')
    b, n = candidates.shape[:2]
    flat = candidates.reshape(b * n, *candidates.shape[2:])
    min_size = getattr(scorer, 'min_size', 16)
    flat = prepare_image(flat, name='candidates', min_size=min_size)
    run_device = scorer.device if hasattr(scorer, 'device') else flat.device
    out = []
    with torch.inference_mode(), float32_scoring(run_device.type):
        for i in range(0, flat.shape[0], chunk_size):
            x = flat[i:i + chunk_size].to(run_device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            x = as_float32(x)
            s = scorer.score(x) if hasattr(scorer, 'score') else scorer(x)[scorer.output_names[0]]
            out.append(s.float())
    scores = torch.cat(out).reshape(b, n)
    if normalize:
        scores = scorer.normalize(scores)
    elif getattr(scorer, 'lower_better', False):
        scores = -scores
    return scores.to(candidates.device)
