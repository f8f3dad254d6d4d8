"""No-reference IQA metrics from pyiqa, built without pyiqa's downloads, and batched scoring.

``build_pyiqa_scorer(device, metric_name, ...)`` is the scoring-table factory for the pyiqa
metrics (``musiq``, ``nima``, ``topiq_nr``, ``qalign``, ``liqe``, ``paq2piq``, ``arniqa``,
``clipiqa``, ``niqe``, ``brisque``). It builds the pyiqa network structure with random
weights and with every backbone download switched off (``pretrained=False`` stops there),
then, for ``pretrained=True``, loads the metric's published weights itself:

* from ``weights_path`` when given (a state dict of ``scorer.net``, optionally under
  ``'params'``; see ``WEIGHTS_PATH_FORMAT`` for the per-metric format), else
* from the file pyiqa would use, found in ``$IQA_PLUGIN_WEIGHTS_DIR`` or in pyiqa's cache
  (``$TORCH_HOME/hub/pyiqa``; CLIP files in ``$TORCH_HOME/hub/clip``, ARNIQA's encoder in
  ``$TORCH_HOME/hub/checkpoints``), else
* downloaded into that cache (unless ``IQA_PLUGIN_OFFLINE=1``); when that is impossible the
  error is one line naming the file, the path where it is expected and its URL.

Files are read with ``torch.load(weights_only=True)`` (``iqa_plugin.weights.load_state_dict``),
TorchScript archives with ``iqa_plugin.torchscript_tensors`` and MATLAB files with scipy:
no pickled code runs. A file that cannot be read or does not fit the network (missing tensors,
wrong shapes) raises ``WeightsError`` naming it; nothing falls back to random weights. (pyiqa
publishes no hashes: the hex suffix in some of its file names is not verified by pyiqa either,
so it is not treated as a checksum here.)

Scorer contract (see ``iqa_plugin.scoring``): ``forward(dist, ref=None)`` takes (B, 3, H, W)
RGB in [0, 1] and returns ``{metric_name: (B,) scores}`` in the metric's own scale and
direction (``lower_better``); ``normalize(scores)`` maps them to quality in ~[0, 1],
higher = better, using the metric's ``score_range``.

``score_candidates(metric, candidates)`` scores (B, N, 3, H, W) candidate images in one
no-grad batched pass and returns (B, N) scores oriented higher = better.

Precision: the networks score in float32 outside autocast (``scoring.float32_scoring``), so a score or
a GT choice does not depend on the device or on a training step's autocast.
"""
import contextlib
import os
import threading
import types
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from iqa_plugin import weights as wm
from iqa_plugin.scoring import as_float32, float32_scoring, freeze, get_cached_metric
from iqa_plugin.torchscript_tensors import is_torchscript_archive, read_torchscript_tensors
from iqa_plugin.utils.image import prepare_image

# --------------------------------------------------------------------------------------------
# weight files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightFile:
    """One published file a metric needs: where pyiqa (or torch.hub / CLIP) caches it."""
    url: str
    subdir: str = 'pyiqa'  # folder under the torch hub folder (iqa_plugin.weights.torch_hub_dir)

    @property
    def filename(self):
        return os.path.basename(urlparse(self.url).path)

    def expected_path(self):
        """``<torch hub>/<subdir>/<filename>``, evaluated now (follows TORCH_HOME)."""
        return wm.torch_hub_dir() / self.subdir / self.filename

    def search_paths(self):
        """Where it is looked for, in order: ``$IQA_PLUGIN_WEIGHTS_DIR``, then pyiqa's cache."""
        return wm.search_paths(self.filename, self.expected_path().parent)


_MISSING_HINT = 'pretrained=False builds the network with random weights'


def resolve_file(metric, wf, allow_download=True):
    """Local path of ``wf`` (``WeightFile.search_paths``), else downloaded into pyiqa's cache by
    ``iqa_plugin.weights.download_file`` (pyiqa publishes no hashes, so none is checked).

    Raises ``WeightsError`` (one line: file, URL, paths searched) when it is missing and cannot be
    downloaded (``allow_download=False``, ``IQA_PLUGIN_OFFLINE=1`` or a failed download)."""
    searched = wf.search_paths()
    found = wm.first_file(searched)
    if found is not None:
        return wm.check_file(found)
    what = f"weights for '{metric}'"
    if not allow_download:
        raise wm.WeightsError(wm.missing_message(what, wf.filename, wf.url, searched, 'locally', _MISSING_HINT))
    return wm.download_file(wf.url, wf.expected_path(), what=what, searched=searched, hint=_MISSING_HINT)


def locate_files(metric_name):
    """Which of ``metric_name``'s published files are here now; never downloads.

    Returns ``(found, missing)``: ``found`` a list of paths, ``missing`` a list of
    ``(WeightFile, [paths searched])``.
    """
    found, missing = [], []
    for wf in metric_info(metric_name).files():
        searched = wf.search_paths()
        path = wm.first_file(searched)
        if path is None:
            missing.append((wf, searched))
        else:
            found.append(path)
    return found, missing


def read_weights(path):
    """A weights file as a flat dict of tensors (or whatever a weights-only load gives).

    TorchScript archives are read with ``read_torchscript_tensors``; everything else with
    ``torch.load(weights_only=True)``. A top-level ``'params'`` or ``'state_dict'`` entry is
    unwrapped and a ``'module.'`` prefix (DataParallel) removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'weights file not found: {path}')
    if is_torchscript_archive(path):
        try:
            sd = read_torchscript_tensors(path)
        except ValueError as e:
            raise wm.WeightsError(str(e)) from e
    else:
        sd = wm.load_state_dict(path)
    if isinstance(sd, dict):
        sd, _ = wm.unwrap_state_dict(sd, path, wrappers=('params', 'state_dict'))
    return sd


def load_into(module, sd, path, strip_prefix=''):
    """Copy tensors from ``sd`` into ``module``: every key of the module must be present.

    Keys the module does not have are ignored (TorchScript archives list non-persistent
    tensors too); missing keys or shape mismatches raise ``WeightsError`` naming ``path``.
    """
    if not isinstance(sd, dict):
        raise wm.WeightsError(f'weights file {path} does not hold a state dict (got {type(sd).__name__})')
    if strip_prefix:
        sd = {k[len(strip_prefix):]: v for k, v in sd.items() if k.startswith(strip_prefix)}
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise wm.WeightsError(f'weights file {path} lacks {len(missing)} of {len(own)} tensors of '
                              f'{module.__class__.__name__} (first: {missing[0]}); wrong file for this metric?')
    bad = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise wm.WeightsError(f'weights file {path}: {k} has shape {tuple(sd[k].shape)}, '
                              f'expected {tuple(own[k].shape)}')
    module.load_state_dict({k: sd[k] for k in own}, strict=True)


# --------------------------------------------------------------------------------------------
# network builders (random weights, no downloads)
# --------------------------------------------------------------------------------------------

_build_lock = threading.Lock()  # the builders patch module attributes of pyiqa for a moment


@contextlib.contextmanager
def patched_attribute(module, name, value):
    """Within the block, ``module.name`` is ``value`` (how pyiqa's constructors are kept from downloading)."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


class _TimmNoDownload:
    """Stand-in for the ``timm`` module inside a pyiqa arch: ``create_model`` never downloads."""

    def __getattr__(self, name):
        import timm
        return getattr(timm, name)

    @staticmethod
    def create_model(*args, **kwargs):
        import timm
        kwargs['pretrained'] = False
        return timm.create_model(*args, **kwargs)


def _torchvision_no_download():
    import torchvision
    models = types.SimpleNamespace(
        resnet18=lambda *a, **k: torchvision.models.resnet18(weights=None),
        resnet50=lambda *a, **k: torchvision.models.resnet50(weights=None),
        ResNet50_Weights=torchvision.models.ResNet50_Weights)
    return types.SimpleNamespace(models=models)


def _import_clip():
    """Import the ``clip`` package (openai-clip), which pyiqa's CLIP metrics need.

    openai-clip does ``from pkg_resources import packaging``; setuptools >= 81 no longer ships
    ``pkg_resources``. Where it is missing, a stand-in exposing only ``packaging`` is put in
    ``sys.modules`` for the duration of the import and removed afterwards.
    """
    import importlib
    import sys
    if 'clip' in sys.modules:
        return sys.modules['clip']
    try:
        importlib.import_module('pkg_resources')
        return importlib.import_module('clip')
    except ModuleNotFoundError as e:
        if e.name != 'pkg_resources':
            raise
    import packaging.version
    shim = types.ModuleType('pkg_resources')
    shim.packaging = packaging
    sys.modules['pkg_resources'] = shim
    try:
        return importlib.import_module('clip')
    finally:
        if sys.modules.get('pkg_resources') is shim:
            del sys.modules['pkg_resources']


def _random_clip(backbone):
    """OpenAI CLIP structure (pyiqa's copy) with random weights, float32."""
    _import_clip()
    from pyiqa.archs.clip_model import CLIP
    text = dict(context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                transformer_layers=12)
    if backbone == 'RN50':
        model = CLIP(1024, 224, (3, 4, 6, 3), 64, None, **text)
    elif backbone == 'ViT-B/32':
        model = CLIP(512, 224, 12, 768, 32, **text)
    else:
        raise ValueError(f"no offline CLIP structure for backbone '{backbone}' (known: RN50, ViT-B/32)")
    return model.float().eval()


def _clip_file(backbone):
    from pyiqa.archs.clip_model import _MODELS
    return WeightFile(_MODELS[backbone], 'clip')


def _new(cls):
    """An instance of pyiqa's ``cls`` whose ``__init__`` (which downloads) is not run."""
    obj = cls.__new__(cls)
    nn.Module.__init__(obj)
    return obj


def _build_musiq():
    from pyiqa.archs.musiq_arch import MUSIQ
    return MUSIQ(pretrained=False, num_class=1)  # koniq10k head: one score


def _build_nima():
    from pyiqa.archs import nima_arch
    with patched_attribute(nima_arch, 'timm', _TimmNoDownload()):
        return nima_arch.NIMA(base_model_name='inception_resnet_v2', train_dataset='ava', num_classes=10,
                              pretrained=False)


def _build_topiq_nr():
    from pyiqa.archs.topiq_arch import CFANet
    return CFANet(semantic_model_name='resnet50', model_name='cfanet_nr_koniq_res50', use_ref=False,
                  backbone_pretrain=False, pretrained=False)


def _build_paq2piq():
    from pyiqa.archs import paq2piq_arch
    with patched_attribute(paq2piq_arch, 'tv', _torchvision_no_download()):
        return paq2piq_arch.PAQ2PIQ(pretrained=False)


def _build_arniqa():
    import torchvision
    from pyiqa.archs.arniqa_arch import ARNIQA
    from pyiqa.archs.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    net = _new(ARNIQA)
    net.regressor_dataset = 'koniq'
    encoder = torchvision.models.resnet50(weights=None)
    net.feat_dim = encoder.fc.in_features
    net.encoder = nn.Sequential(*list(encoder.children())[:-1])
    net.regressor = nn.Linear(2 * net.feat_dim, 1)  # ARNIQA's regressor: linear on both scales' features
    net.default_mean = torch.Tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    net.default_std = torch.Tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return net


def _liqe_text_features(net):
    clip = _import_clip()
    from pyiqa.archs.liqe_arch import qualitys
    tokens = torch.cat([clip.tokenize(f'a photo with {c} quality') for c in qualitys])
    with torch.no_grad():
        feats = net.clip_model.encode_text(tokens.to(net.clip_model.logit_scale.device))
    return feats / feats.norm(dim=1, keepdim=True)


def _build_liqe():
    _import_clip()
    from pyiqa.archs.constants import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from pyiqa.archs.liqe_arch import LIQE
    net = _new(LIQE)
    net.backbone = 'ViT-B/32'
    net.clip_model = _random_clip('ViT-B/32')
    net.model_type = 'liqe'
    net.default_mean = torch.Tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    net.default_std = torch.Tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    net.clip_model.logit_scale.requires_grad = False
    net.step, net.num_patch, net.mtl = 32, 15, False
    net.text_features = _liqe_text_features(net)
    return net


def _build_clipiqa():
    _import_clip()
    from pyiqa.archs import clipiqa_arch
    with patched_attribute(clipiqa_arch, 'load', lambda backbone, device='cpu': _random_clip(backbone)):
        net = clipiqa_arch.CLIPIQA(model_type='clipiqa', backbone='RN50', pretrained=False)
    net.clip_backbone = net.clip_model[0]  # registered too, so .to(device) and state_dict see it
    return net


def _build_niqe():
    from pyiqa.archs.niqe_arch import NIQE
    net = _new(NIQE)
    net.channels, net.test_y_channel, net.color_space, net.crop_border = 1, True, 'yiq', 0
    # Placeholder pristine model (standard normal features): structure only, not a NIQE score.
    net.mu_pris_param = torch.zeros(36, dtype=torch.float64)
    net.cov_pris_param = torch.eye(36, dtype=torch.float64)
    return net


def _build_brisque():
    from pyiqa.archs.brisque_arch import BRISQUE
    net = _new(BRISQUE)
    net.kernel_size, net.kernel_sigma, net.test_y_channel, net.version = 7, 7 / 6, True, 'original'
    net.gamma, net.rho, net.scale = 0.05, -153.591, 1  # BRISQUE 'original' SVM constants (as pyiqa)
    g = torch.Generator().manual_seed(0)
    net.sv = torch.rand(64, 36, generator=g, dtype=torch.float64) * 2 - 1  # random support vectors
    net.sv_coef = torch.randn(64, generator=g, dtype=torch.float64)
    return net


# --------------------------------------------------------------------------------------------
# loaders for the published files
# --------------------------------------------------------------------------------------------


def _load_whole(net, paths):
    load_into(net, read_weights(paths[0]), paths[0])


def _load_liqe(net, paths):
    load_into(net, read_weights(paths[0]), paths[0])
    net.text_features = _liqe_text_features(net)


def _load_clipiqa(net, paths):
    load_into(net.clip_model[0], read_weights(paths[0]), paths[0])


def _load_arniqa(net, paths):
    enc_path, reg_path = paths
    load_into(net.encoder, read_weights(enc_path), enc_path, strip_prefix='model.')
    tensors = read_weights(reg_path)
    n = 2 * net.feat_dim
    w = [v for v in tensors.values() if torch.is_tensor(v) and v.numel() == n and v.is_floating_point()]
    b = [v for v in tensors.values() if torch.is_tensor(v) and v.numel() == 1 and v.is_floating_point()]
    if len(w) != 1 or len(b) != 1:
        raise wm.WeightsError(f'{reg_path}: expected one linear regressor ({n} weights and a bias), '
                              f'found tensors {[tuple(v.shape) for v in tensors.values()]}')
    with torch.no_grad():
        net.regressor.weight.copy_(w[0].reshape(1, n))
        net.regressor.bias.copy_(b[0].reshape(1))


def _load_path_whole(net, path):
    load_into(net, read_weights(path), path)


def _load_path_liqe(net, path):
    _load_liqe(net, [path])


def _load_path_clipiqa(net, path):
    sd = read_weights(path)
    if isinstance(sd, dict) and any(k.startswith('clip_backbone.') for k in sd):
        load_into(net, sd, path)  # scorer.net.state_dict()
    else:
        load_into(net.clip_model[0], sd, path)  # OpenAI CLIP file or a CLIP state dict


def _load_niqe(net, paths):
    path = Path(paths[0])
    if path.suffix.lower() == '.mat':
        import numpy as np
        import scipy.io
        params = scipy.io.loadmat(str(path))
        if 'mu_prisparam' not in params or 'cov_prisparam' not in params:
            raise wm.WeightsError(f'{path} has no mu_prisparam / cov_prisparam (not a NIQE model file)')
        mu, cov = torch.from_numpy(np.ravel(params['mu_prisparam'])), torch.from_numpy(params['cov_prisparam'])
    else:
        sd = read_weights(path)
        if not isinstance(sd, dict) or 'mu_pris_param' not in sd or 'cov_pris_param' not in sd:
            raise wm.WeightsError(f'{path} has no mu_pris_param / cov_pris_param tensors')
        mu, cov = sd['mu_pris_param'], sd['cov_pris_param']
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise wm.WeightsError(f'{path}: NIQE model must be mu (36,) and cov (36, 36), got {tuple(mu.shape)} '
                              f'and {tuple(cov.shape)}')
    net.mu_pris_param, net.cov_pris_param = mu.double(), cov.double()


def _load_brisque(net, paths):
    path = paths[0]
    sd = read_weights(path)
    if isinstance(sd, (tuple, list)) and len(sd) == 2:
        sv_coef, sv = sd
    elif isinstance(sd, dict) and 'sv_coef' in sd and 'sv' in sd:
        sv_coef, sv = sd['sv_coef'], sd['sv']
    else:
        raise wm.WeightsError(f'{path}: expected (sv_coef, sv) tensors of a BRISQUE SVM')
    if sv.ndim != 2 or sv.shape[1] != 36 or sv_coef.numel() != sv.shape[0]:
        raise wm.WeightsError(f'{path}: BRISQUE SVM must be sv (n, 36) and sv_coef (n,), got '
                              f'{tuple(sv.shape)} and {tuple(sv_coef.shape)}')
    net.sv, net.sv_coef = sv.double() / net.scale, sv_coef.reshape(-1).double()


# --------------------------------------------------------------------------------------------
# the per-metric table
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NRMetricInfo:
    """How one pyiqa no-reference metric is built, loaded and fed.

    ``files`` returns the published files (``WeightFile``) for ``pretrained=True``;
    ``load`` reads those files into the network and ``load_path`` one explicit ``weights_path``;
    ``min_size`` is the smallest image side accepted; ``loss_refusal`` is empty for metrics
    usable as losses, else the reason they are refused; ``batch_one`` means the network
    scores one image per call (looped).
    """
    build: object  # () -> nn.Module with random weights
    files: object  # () -> tuple of WeightFile
    load: object  # (net, [paths]) -> None
    min_size: int
    loss_refusal: str = ''
    note: str = ''
    batch_one: bool = False
    load_path: object = None  # (net, path) -> None for weights_path; default: state dict of the net

    @property
    def loss_capable(self):
        return not self.loss_refusal


def _files(module, *keys, subdir='pyiqa'):
    def get():
        import importlib
        if module in ('liqe_arch', 'clipiqa_arch'):
            _import_clip()
        urls = importlib.import_module(f'pyiqa.archs.{module}').default_model_urls
        return tuple(WeightFile(urls[k], subdir) for k in keys)
    return get


def _arniqa_files():
    from pyiqa.archs.arniqa_arch import default_model_urls as urls
    return (WeightFile(urls['ARNIQA'], 'checkpoints'), WeightFile(urls['koniq'], 'pyiqa'))


_NSS_REFUSAL = ('hand-crafted natural-scene statistics: autograd passes through pyiqa\'s implementation but '
                'optimising them games the statistics instead of improving the image')

NR_METRICS = {
    'musiq': NRMetricInfo(_build_musiq, _files('musiq_arch', 'koniq10k'), _load_whole, 32,
                          note='MUSIQ (KonIQ-10k head); multi-scale patches of 32 px'),
    'nima': NRMetricInfo(_build_nima, _files('nima_arch', 'inception_resnet_v2-ava'), _load_whole, 32,
                         note='NIMA, Inception-ResNet-v2, AVA (aesthetics); input resized to 299'),
    'topiq_nr': NRMetricInfo(_build_topiq_nr, _files('topiq_arch', 'cfanet_nr_koniq_res50'), _load_whole, 32,
                             note='TOPIQ-NR, ResNet-50, KonIQ-10k'),
    'liqe': NRMetricInfo(_build_liqe, _files('liqe_arch', 'koniq'), _load_liqe, 224,
                         note='LIQE, CLIP ViT-B/32, KonIQ-10k; 224 px patches', load_path=_load_path_liqe),
    'paq2piq': NRMetricInfo(_build_paq2piq, _files('paq2piq_arch', 'url'), _load_whole, 32,
                            note='PaQ-2-PiQ, ResNet-18 RoI pooling'),
    'arniqa': NRMetricInfo(_build_arniqa, _arniqa_files, _load_arniqa, 32,
                           note='ARNIQA, ResNet-50 encoder + linear regressor (KonIQ-10k)'),
    'clipiqa': NRMetricInfo(_build_clipiqa, lambda: (_clip_file('RN50'),), _load_clipiqa, 32,
                            note='CLIP-IQA, OpenAI CLIP RN50 with antonym prompts', load_path=_load_path_clipiqa),
    'niqe': NRMetricInfo(_build_niqe, _files('niqe_arch', 'url'), _load_niqe, 96, _NSS_REFUSAL,
                         note='NIQE; pretrained=False uses a placeholder pristine model',
                         load_path=lambda net, path: _load_niqe(net, [path])),
    'brisque': NRMetricInfo(_build_brisque, _files('brisque_arch', 'url'), _load_brisque, 32, _NSS_REFUSAL,
                            note='BRISQUE; pretrained=False uses random support vectors',
                            load_path=lambda net, path: _load_brisque(net, [path])),
    'qalign': NRMetricInfo(None, lambda: (), None, 16, 'its input goes through PIL (no gradient)',
                           note='Q-Align, mPLUG-Owl2 (7B LLM) from HuggingFace q-future/one-align', batch_one=True),
}

# Formats accepted by ``weights_path`` (one file).
WEIGHTS_PATH_FORMAT = {
    'musiq': 'pyiqa musiq_koniq_ckpt-*.pth, or scorer.net.state_dict()',
    'nima': 'pyiqa NIMA_*.pth, or scorer.net.state_dict()',
    'topiq_nr': 'pyiqa cfanet_nr_*.pth, or scorer.net.state_dict()',
    'liqe': 'pyiqa liqe_koniq.pt, or scorer.net.state_dict()',
    'paq2piq': 'pyiqa P2P_RoIPoolModel-*.pth, or scorer.net.state_dict()',
    'arniqa': 'scorer.net.state_dict() (encoder.* and regressor.*): the published weights are two files',
    'clipiqa': 'OpenAI CLIP RN50.pt (TorchScript) or a CLIP state dict',
    'niqe': 'niqe_modelparameters.mat, or {mu_pris_param, cov_pris_param} tensors',
    'brisque': 'brisque_svm_weights.pth: (sv_coef, sv)',
    'qalign': 'not supported (HuggingFace snapshot q-future/one-align in the HF cache)',
}


def pyiqa_config(metric_name):
    """pyiqa's DEFAULT_CONFIGS entry of ``metric_name``."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS
    if metric_name not in DEFAULT_CONFIGS:
        raise ValueError(f"pyiqa has no metric '{metric_name}'")
    return DEFAULT_CONFIGS[metric_name]


def parse_score_range(text):
    """pyiqa's ``score_range`` string (``'~0, ~100'``) -> (0.0, 100.0); ``~`` means approximate."""
    parts = [p.strip().lstrip('~') for p in str(text).split(',')]
    if len(parts) != 2:
        raise ValueError(f"cannot parse score range '{text}'")
    return float(parts[0]), float(parts[1])


def weight_files(metric_name):
    """The published files ``metric_name`` loads with ``pretrained=True``: [(filename, expected path, url)]."""
    return [(wf.filename, wf.expected_path(), wf.url) for wf in metric_info(metric_name).files()]


def metric_info(metric_name):
    """``NRMetricInfo`` of ``metric_name`` (ValueError naming the known ones otherwise)."""
    if metric_name not in NR_METRICS:
        raise ValueError(f"unsupported pyiqa NR metric '{metric_name}'; supported: {', '.join(sorted(NR_METRICS))}")
    return NR_METRICS[metric_name]


# --------------------------------------------------------------------------------------------
# the scorer
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

    def train(self, mode=True):
        """Always eval: the wrapped network is a frozen metric."""
        return super().train(False)

    @property
    def device(self):
        return self._device_probe.device

    def prepare(self, dist):
        """Validate ``dist`` (see ``prepare_image``) with this metric's minimum side."""
        return prepare_image(dist, name='dist', min_size=self.min_size)

    def score(self, x):
        """(B,) float32 scores of a prepared batch ``x`` (B, 3, H, W) in [0, 1] (no validation); the network
        runs in float32 outside autocast (``scoring.float32_scoring``)."""
        x = as_float32(x.to(self.device))
        if self.batch_one and x.shape[0] > 1:
            return torch.cat([self.score(x[i:i + 1]) for i in range(x.shape[0])])
        with float32_scoring(x.device.type):
            out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(x.shape[0], -1)[:, 0].float()

    def forward(self, dist, ref=None):
        return OrderedDict([(self.name, self.score(self.prepare(dist)))])

    def normalize(self, scores):
        """Scores -> quality in ~[0, 1], higher = better, by ``score_range`` (not clipped)."""
        lo, hi = self.score_range
        q = (scores - lo) / (hi - lo)
        return 1.0 - q if self.lower_better else q

    def extra_repr(self):
        return f'name={self.name}, lower_better={self.lower_better}, score_range={self.score_range}'


def resolve_metric_files(metric_name, allow_download=True):
    """Paths of every published file pyiqa metric ``metric_name`` loads (see ``resolve_file``)."""
    return [resolve_file(metric_name, wf, allow_download) for wf in metric_info(metric_name).files()]


def check_qalign_snapshot():
    """Raise ``WeightsError`` unless the HuggingFace snapshot q-future/one-align is in the HF cache."""
    from huggingface_hub import constants as hf_constants
    from huggingface_hub import try_to_load_from_cache
    if not isinstance(try_to_load_from_cache('q-future/one-align', 'config.json'), str):
        raise wm.WeightsError(f"weights for 'qalign' not found: the HuggingFace snapshot q-future/one-align is "
                              f"expected in {hf_constants.HF_HUB_CACHE} (huggingface-cli download q-future/one-align)")


def _build_qalign(device, pretrained, weights_path):
    if not pretrained:
        raise ValueError("qalign cannot be built with pretrained=False: it is a 7B-parameter mPLUG-Owl2 LLM "
                         "(HuggingFace q-future/one-align) with no small offline structure")
    if weights_path:
        raise ValueError("qalign takes no weights_path: it loads the HuggingFace snapshot q-future/one-align "
                         "from the HF cache")
    check_qalign_snapshot()
    from pyiqa.archs.qalign_arch import QAlign
    old = os.environ.get('HF_HUB_OFFLINE')
    os.environ['HF_HUB_OFFLINE'] = '1'
    try:
        return QAlign()
    finally:
        if old is None:
            os.environ.pop('HF_HUB_OFFLINE', None)
        else:
            os.environ['HF_HUB_OFFLINE'] = old


def build_pyiqa_scorer(device=None, metric_name='musiq', weights_path=None, pretrained=True, as_loss=False,
                       allow_download=True):
    """Build pyiqa no-reference metric ``metric_name`` as an ``NRScorer`` (frozen, eval).

    Args:
        device: torch device (default CPU).
        metric_name (str): one of ``NR_METRICS``.
        weights_path (str | Path | None): explicit weights file (see ``WEIGHTS_PATH_FORMAT``).
        pretrained (bool): load published weights (cache, then download); False keeps the
            random initialisation (structure only: scores are meaningless).
        as_loss (bool): the caller optimises the score: metrics refused as losses (niqe,
            brisque, qalign; see ``NRMetricInfo.loss_refusal``) raise ValueError.
        allow_download (bool): try to download a missing file (never when IQA_PLUGIN_OFFLINE=1).
    Raises:
        ValueError: unknown metric, or one refused as a loss with ``as_loss``.
        iqa_plugin.weights.WeightsError: weights missing/unreadable/not matching.
    """
    info = metric_info(metric_name)
    cfg = pyiqa_config(metric_name)
    if as_loss and not info.loss_capable:
        raise ValueError(f"metric '{metric_name}' cannot be a loss ({info.loss_refusal}); use it as a "
                         'validator (calculate_nriqa) instead')
    device = torch.device(device) if device is not None else torch.device('cpu')
    if metric_name == 'qalign':
        net = _build_qalign(device, pretrained, weights_path)
    else:
        paths = None
        if weights_path:
            p = Path(os.path.expanduser(str(weights_path)))
            if not p.is_file():
                raise FileNotFoundError(f"weights file for '{metric_name}' not found: {p}")
        elif pretrained:  # resolve first: a missing file fails before any network is built
            paths = [resolve_file(metric_name, wf, allow_download) for wf in info.files()]
        with _build_lock:
            net = info.build()
        if weights_path:
            (info.load_path or _load_path_whole)(net, p)
        elif paths is not None:
            info.load(net, paths)
    scorer = NRScorer(metric_name, net, cfg.get('lower_better', False), parse_score_range(cfg['score_range']),
                      info.min_size, info.loss_capable, info.batch_one)
    scorer.pretrained = bool(pretrained or weights_path)
    return scorer.to(device)


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
