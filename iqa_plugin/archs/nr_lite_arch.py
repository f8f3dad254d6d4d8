"""NR-lite: a small differentiable no-reference quality network.

Input (B, 3, H, W) RGB in [0, 1], H and W >= 32; output (B,) quality in (0, 1), higher = better.
Two branches feed a two-layer MLP with a sigmoid, either or both:

* ``cnn`` (default on): a full-resolution stem, four stride-2 residual stages, then mean and
  standard-deviation pooling of the last three stages (the spread of activations carries
  noise/blur/blocking cues that a plain average hides); no normalisation layers, as contrast and
  noise level are quality cues that batch/group normalisation would remove (0.15 M parameters);
* ``nss``: the hand-crafted, differentiable scene statistics of ``nss_stats.NSSStats``, standardised
  with estimates from the first training batches.

The shipped ``nr-lite`` 0.2.0 is ``nss=True, cnn=False`` (2,433 parameters; why: docs/nriqa.md,
"Method choice"), trained label-free by this project (``options/metrics/train_nr_lite.yml``); it
reaches the scoring table as ``nr-lite`` through ``build_nr_lite_scorer``.
"""
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from iqa_plugin import weights as wm
from iqa_plugin.archs.nss_stats import NSSStats, RunningStandardise
from iqa_plugin.scoring.scorer import NRScorer
from iqa_plugin.utils.image import check_batch_shape

MIN_SIZE = 32


class _Stage(nn.Module):
    """conv3x3 stride 2 -> act -> conv3x3, plus a strided 1x1 shortcut; (B, cin, H, W) -> (B, cout, H/2, W/2)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 2, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.skip = nn.Conv2d(cin, cout, 1, 2, 0, bias=False)
        self.act = nn.LeakyReLU(0.2, inplace=False)

    def forward(self, x):
        return self.act(self.conv2(self.act(self.conv1(x))) + self.skip(x))


@ARCH_REGISTRY.register()
class NRLite(nn.Module):
    """Small no-reference IQA CNN.

    Args:
        channels (sequence of 5 ints): stem width, then the widths of the four stride-2 stages.
        hidden (int): width of the MLP head.
        pooled_stages (int): how many of the last stages are mean/std pooled into the head.
        nss (bool): add the hand-crafted branch ``NSSStats`` (MSCN moments and neighbour correlations at
            three scales, local contrast, colourfulness, high-frequency energy, 8x8 blockiness), standardised
            by ``RunningStandardise``, to the head's input (``nr-lite`` 0.2.0).
        cnn (bool): the convolutional branch (False: the head sees only the NSS statistics).
    Forward:
        x (Tensor): (B, 3, H, W) RGB in [0, 1], min(H, W) >= 32.
        returns (B,) quality in (0, 1), higher = better.
    """

    def __init__(self, channels=(16, 24, 32, 48, 64), hidden=64, pooled_stages=3, nss=False, cnn=True):
        super().__init__()
        if not (nss or cnn):
            raise ValueError('NRLite: needs the CNN branch (cnn=True), the NSS branch (nss=True) or both')
        channels = tuple(int(c) for c in channels)
        if len(channels) != 5:
            raise ValueError(f'NRLite: channels needs 5 widths (stem + 4 stages), got {channels}')
        if not 1 <= pooled_stages <= 4:
            raise ValueError(f'NRLite: pooled_stages must be in 1..4, got {pooled_stages}')
        self.channels, self.hidden, self.pooled_stages = channels, int(hidden), int(pooled_stages)
        self.cnn = bool(cnn)
        pooled = 0
        if self.cnn:
            self.stem = nn.Sequential(nn.Conv2d(3, channels[0], 3, 1, 1), nn.LeakyReLU(0.2))
            self.stages = nn.ModuleList(_Stage(channels[i], channels[i + 1]) for i in range(4))
            pooled = 2 * sum(channels[5 - pooled_stages:])
        self.nss = NSSStats() if nss else None
        if nss:
            # hand-crafted statistics, standardised with estimates from the first training batches
            self.nss_norm = RunningStandardise(NSSStats.num_features)
            pooled += NSSStats.num_features
        self.head = nn.Sequential(nn.Linear(pooled, self.hidden), nn.LeakyReLU(0.2), nn.Linear(self.hidden, 1))
        self.register_buffer('mean', torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1), persistent=False)

    def config(self):
        """Constructor arguments (saved next to the weights so a scorer can rebuild the net)."""
        cfg = {'channels': list(self.channels), 'hidden': self.hidden, 'pooled_stages': self.pooled_stages}
        if self.nss is not None:  # absent for nss=False, so files of 0.1.0 keep their exact config
            cfg['nss'] = True
        if not self.cnn:
            cfg['cnn'] = False
        return cfg

    @staticmethod
    def _mean_std(f):
        f = f.flatten(2).float()
        mean = f.mean(dim=2)
        std = (f.var(dim=2, unbiased=False) + 1e-6).sqrt()
        return torch.cat([mean, std], dim=1)

    def features(self, x):
        """The head's input (B, F): mean/std of the pooled CNN stages (2 * their widths, with ``cnn``) then the
        standardised NSS statistics (``NSSStats.num_features``, with ``nss``)."""
        check_batch_shape(x, 'NRLite', MIN_SIZE)
        pooled = []
        if self.cnn:
            h = self.stem((x - self.mean) / self.std)
            for i, stage in enumerate(self.stages):
                h = stage(h)
                if i >= 4 - self.pooled_stages:
                    pooled.append(self._mean_std(h))
        if self.nss is not None:
            pooled.append(self.nss_norm(self.nss(x)))
        return torch.cat(pooled, dim=1)

    def forward(self, x):
        return torch.sigmoid(self.head(self.features(x)).squeeze(1))


def _state_dict_from_file(path):
    sd = wm.load_state_dict(path)
    if not isinstance(sd, dict):
        raise wm.WeightsError(f'weights file {path} does not hold a state dict')
    config = sd.get('config') if isinstance(sd.get('config'), dict) else {}
    for key in ('params_ema', 'params', 'state_dict'):  # BasicSR checkpoints keep the EMA copy first
        if key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    return {k[7:] if k.startswith('module.') else k: v for k, v in sd.items() if k != 'config'}, config


def build_nr_lite_scorer(device=None, weights='nr-lite', weights_path=None, pretrained=True, as_loss=False):
    """Scoring-table factory for ``nr-lite``: a frozen ``NRScorer`` around ``NRLite``.

    Args:
        device: torch device (default CPU).
        weights (str): weights-manager entry (``iqa_plugin.weights``), default ``'nr-lite'``.
        weights_path (str | None): explicit file (a state dict, optionally under ``params`` /
            ``params_ema`` as BasicSR saves it, plus an optional ``config`` dict of NRLite args).
        pretrained (bool): False builds random weights (structure only) when no
            ``weights_path`` is given.
        as_loss (bool): accepted for the common factory signature (NR-lite is differentiable).
    Raises:
        iqa_plugin.weights.WeightsError: the weights manager's error when the file is missing.
    """
    config = {}
    sd = None
    if weights_path or pretrained:
        path = wm.resolve(weights, weights_path)
        sd, config = _state_dict_from_file(path)
    net = NRLite(**config)
    if sd is not None:
        missing, unexpected = net.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise wm.WeightsError(f'weights file {path} does not fit NRLite{tuple(config.items()) or ""}: '
                                  f'missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}')
    scorer = NRScorer.for_row('nr-lite', net)  # direction, range, minimum side: the table's
    scorer.pretrained = sd is not None
    return scorer.to(torch.device(device) if device is not None else torch.device('cpu'))
