"""pyiqa's metrics built through pyiqa's own API without pyiqa's downloads, and batched scoring.

Why one file over 450 lines: it is the one place that knows how pyiqa's metrics are built from local files (which
files each metric loads, their formats, one builder per metric family); the scorer wrappers and batched scoring it
once also held are in ``scoring/scorer.py``, pyiqa's module internals in ``scoring/pyiqa_offline.py``.

``build_pyiqa_scorer(device, metric_name, ...)`` is the scoring-table factory of every row with
``pyiqa=True`` (``iqa_plugin.scoring.METRICS``): the no-reference ``musiq``, ``nima``, ``topiq_nr``,
``qalign``, ``liqe``, ``paq2piq``, ``arniqa``, ``clipiqa``, ``niqe``, ``brisque`` and the full-reference
``lpips``, ``dists`` and the weight-free members of the pseudo-MOS ensemble. It builds each with
``pyiqa.create_metric(name, pretrained_model_path=..., as_loss=...)`` from files resolved here, never by
pyiqa: where a constructor would download something else (a backbone, CLIP, ARNIQA's two files),
``iqa_plugin.scoring.pyiqa_offline`` gives it the local file or random weights instead. For ``pretrained=True``
the metric's published files (the row's ``files``) are taken

* from ``weights_path`` when given (see ``WEIGHTS_PATH_FORMAT`` for the per-metric format), else
* from the file pyiqa would use, found in ``$IQA_PLUGIN_WEIGHTS_DIR`` or in pyiqa's cache
  (``$TORCH_HOME/hub/pyiqa``; CLIP files in ``$TORCH_HOME/hub/clip``, torchvision's and ARNIQA's encoder in
  ``$TORCH_HOME/hub/checkpoints``; LPIPS's calibration also from the ``lpips`` package), else
* downloaded into that cache (unless ``IQA_PLUGIN_OFFLINE=1``); when that is impossible the
  error is one line naming the file, the path where it is expected and its URL.

``pretrained=False`` keeps pyiqa's random initialisation (NIQE a placeholder pristine model, BRISQUE
random support vectors): structure only, for tests.

Every file is first read with ``torch.load(weights_only=True)`` (``iqa_plugin.weights.load_state_dict``),
TorchScript archives with ``iqa_plugin.utils.torchscript_tensors`` and MATLAB files with scipy, so no pickled code
runs even where pyiqa then loads the same file with ``weights_only=False``; a file in another layout than
pyiqa's loader expects (a state dict under ``params``, or bare) is handed to it rewritten. A file that cannot
be read or does not fit the network (missing tensors, wrong shapes) raises ``WeightsError`` naming it;
nothing falls back to random weights. (pyiqa publishes no hashes: the hex suffix in some of its file names
is not verified by pyiqa either, so it is not treated as a checksum here.)

Scorer contract (see ``iqa_plugin.scoring``): ``forward(dist, ref=None)`` takes (B, 3, H, W)
RGB in [0, 1] and returns ``{metric_name: (B,) scores}`` in the metric's own scale and
direction (``lower_better``); ``normalize(scores)`` maps them to quality in ~[0, 1],
higher = better, using the metric's ``score_range``. The scorer runs the network pyiqa built (what
``InferenceModel.forward`` calls after its input checks) so that gradients reach the image when asked.

The scorer wrappers (``NRScorer``, ``FRScorer``) and batched candidate scoring (``score_candidates``) are in
``iqa_plugin.scoring.scorer``; they are imported here too, where the module of earlier releases
(``iqa_plugin.nriqa``) had them.

Precision: the networks score in float32 outside autocast (``scoring.float32_scoring``), so a score or
a GT choice does not depend on the device or on a training step's autocast.
"""
import contextlib
import importlib.util
import os
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from iqa_plugin import weights as wm
from iqa_plugin.scoring import pyiqa_offline
from iqa_plugin.scoring.pyiqa_offline import patched_attribute  # noqa: F401  (public name, used by tests and scripts)
from iqa_plugin.scoring import METRICS
from iqa_plugin.scoring.scorer import FRScorer, NRScorer, score_candidates  # noqa: F401  (the names of nriqa)
from iqa_plugin.utils.torchscript_tensors import is_torchscript_archive, read_torchscript_tensors
from iqa_plugin.utils.image import prepare_image, prepare_pair

# --------------------------------------------------------------------------------------------
# weight files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightFile:
    """One published file a metric needs: where pyiqa (or torch.hub / CLIP) caches it.

    ``fallback`` (``'package:relative/path'``) names a copy an installed package ships, looked at after
    the other places (LPIPS's calibration in the ``lpips`` package)."""
    url: str
    subdir: str = 'pyiqa'  # folder under the torch hub folder (iqa_plugin.weights.torch_hub_dir)
    fallback: str = ''

    @property
    def filename(self):
        return os.path.basename(urlparse(self.url).path)

    def expected_path(self):
        """``<torch hub>/<subdir>/<filename>``, evaluated now (follows TORCH_HOME)."""
        return wm.torch_hub_dir() / self.subdir / self.filename

    def search_paths(self):
        """Where it is looked for, in order: ``$IQA_PLUGIN_WEIGHTS_DIR``, pyiqa's cache, then ``fallback``."""
        paths = wm.search_paths(self.filename, self.expected_path().parent)
        if self.fallback:
            package, relative = self.fallback.split(':', 1)
            spec = importlib.util.find_spec(package)
            if spec is not None and spec.origin:
                paths.append(Path(spec.origin).parent / relative)
        return paths


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


def _read_raw(path):
    """A weights file as stored, read without running pickled code: TorchScript archives with
    ``read_torchscript_tensors``, everything else with ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'weights file not found: {path}')
    if is_torchscript_archive(path):
        try:
            return read_torchscript_tensors(path)
        except ValueError as e:
            raise wm.WeightsError(str(e)) from e
    return wm.load_state_dict(path)


def _unwrap(raw, path):
    return wm.unwrap_state_dict(raw, path, wrappers=('params', 'state_dict'))[0] if isinstance(raw, dict) else raw


def read_weights(path):
    """A weights file as a flat dict of tensors (or whatever a weights-only load gives).

    TorchScript archives are read with ``read_torchscript_tensors``; everything else with
    ``torch.load(weights_only=True)``. A top-level ``'params'`` or ``'state_dict'`` entry is
    unwrapped and a ``'module.'`` prefix (DataParallel) removed.
    """
    return _unwrap(_read_raw(path), path)


def load_into(module, sd, path, strip_prefix=''):
    """Copy tensors from ``sd`` into ``module``: every key of the module must be present.

    Keys the module does not have are ignored (TorchScript archives list non-persistent
    tensors too); missing keys or shape mismatches raise ``WeightsError`` naming ``path``.
    """
    if not isinstance(sd, dict):
        raise wm.WeightsError(f'weights file {path} does not hold a state dict (got {type(sd).__name__})')
    if strip_prefix:
        sd = {k[len(strip_prefix):]: v for k, v in sd.items() if k.startswith(strip_prefix)}
    _check_covers(module, sd, path, module.__class__.__name__)
    module.load_state_dict({k: sd[k] for k in module.state_dict()}, strict=True)


def _check_covers(module, sd, path, what):
    """Every tensor of ``module`` is in ``sd`` with its shape, else ``WeightsError`` naming ``path``."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise wm.WeightsError(f'weights file {path} lacks {len(missing)} of {len(own)} tensors of '
                              f'{what} (first: {missing[0]}); wrong file for this metric?')
    bad = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        raise wm.WeightsError(f'weights file {path}: {k} has shape {tuple(sd[k].shape)}, '
                              f'expected {tuple(own[k].shape)}')


# --------------------------------------------------------------------------------------------
# the pyiqa rows of the scoring table
# --------------------------------------------------------------------------------------------


def _file_url(source):
    """A row's file source -> its URL: a URL, ``'<pyiqa arch module>:<default_model_urls key>'`` or
    ``'torchvision:<weights enum>'``."""
    if source.startswith(('https://', 'http://')):
        return source
    module, key = source.split(':', 1)
    if module == 'torchvision':
        import torchvision
        obj = torchvision.models
        for part in key.split('.'):
            obj = getattr(obj, part)
        return obj.url
    return pyiqa_offline.arch_module(module).default_model_urls[key]


@dataclass(frozen=True)
class NRMetricInfo:
    """A pyiqa row of the scoring table seen from here (the facts are the row's, ``scoring.METRICS``)."""
    name: str

    @property
    def spec(self):
        return METRICS[self.name]

    @property
    def min_size(self):
        return self.spec.min_size

    @property
    def loss_refusal(self):
        return self.spec.loss

    @property
    def loss_capable(self):
        return self.spec.loss_capable

    @property
    def note(self):
        return self.spec.description

    def files(self):
        """The published files (``WeightFile``) the metric loads with ``pretrained=True``, in the row's order."""
        return tuple(WeightFile(_file_url(source), *rest) for source, *rest in self.spec.files)


PYIQA_METRICS = {name: NRMetricInfo(name) for name, spec in METRICS.items() if spec.pyiqa}
NR_METRICS = {name: info for name, info in PYIQA_METRICS.items() if info.spec.kind == 'nr'}

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
    'lpips': 'not supported (the calibration and AlexNet files are found where pyiqa, the lpips package and '
             'torchvision keep them, or in $IQA_PLUGIN_WEIGHTS_DIR)',
    'dists': 'not supported (the DISTS and VGG16 files are found where pyiqa and torchvision keep them, or in '
             '$IQA_PLUGIN_WEIGHTS_DIR)',
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
    """``NRMetricInfo`` of pyiqa row ``metric_name`` (ValueError naming the known ones otherwise)."""
    if metric_name not in PYIQA_METRICS:
        fr = sorted(set(PYIQA_METRICS) - set(NR_METRICS))
        raise ValueError(f"unsupported pyiqa NR metric '{metric_name}'; supported: {', '.join(sorted(NR_METRICS))} "
                         f"(full-reference: {', '.join(fr)})")
    return PYIQA_METRICS[metric_name]


# --------------------------------------------------------------------------------------------
# building with pyiqa.create_metric (downloads kept off by iqa_plugin.scoring.pyiqa_offline)
# --------------------------------------------------------------------------------------------

# How pyiqa's loader reads a metric's own file (``load_pretrained_network(..., weight_keys=...)``): the state
# dict under this key, or bare (None). Metrics built from one state-dict file.
_PARAMS_KEY = {'musiq': None, 'nima': 'params', 'topiq_nr': 'params', 'paq2piq': None, 'liqe': 'params'}
_CREATE_OPTIONS = {'topiq_nr': {'backbone_pretrain': False}}  # its backbone's weights are in its own file
_BACKBONE = {'lpips': 'alexnet', 'dists': 'vgg16'}  # torchvision backbones of the calibrated FR metrics


def _create(metric_name, as_loss, **options):
    """``pyiqa.create_metric(...).net`` on the CPU; pyiqa's prints go to stderr (stdout may carry JSON). Built
    without autograd: tensors a constructor computes (LIQE's prompt features) hold no graph to the weights."""
    import pyiqa

    with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        return pyiqa.create_metric(metric_name, as_loss=as_loss, device=torch.device('cpu'), **options).net


def _load_error(path, metric_name, error):
    text = ' '.join(str(error).split())
    what = ('lacks tensors of' if 'Missing key' in text else
            'has tensors of the wrong shape for' if 'size mismatch' in text else 'does not fit')
    return wm.WeightsError(f"weights file {path} {what} pyiqa's {metric_name} ({text[:300]}); wrong file for "
                           'this metric?')


def _in_pyiqa_layout(path, tmp, params_key):
    """``(file for pyiqa, its state dict)``: ``path`` read without running pickled code; the file itself when
    pyiqa's loader reads it as it stands (under ``params_key``, or bare), else its state dict written to ``tmp``
    in that layout."""
    raw = _read_raw(path)
    sd = _unwrap(raw, path)
    if not isinstance(sd, dict):
        raise wm.WeightsError(f'weights file {path} does not hold a state dict (got {type(sd).__name__})')
    if params_key:
        as_is = isinstance(raw, dict) and isinstance(raw.get(params_key), dict)
    else:
        as_is = isinstance(raw, dict) and not any(isinstance(raw.get(k), dict) for k in ('params', 'state_dict'))
    if as_is and not is_torchscript_archive(path):
        return Path(path), sd
    out = Path(tmp) / (Path(path).stem + '.pth')
    torch.save({params_key: sd} if params_key else sd, out)
    return out, sd


def _build_from_state_dict(metric_name, paths, tmp, as_loss, explicit):
    """musiq, nima, topiq_nr, paq2piq, liqe: one file, ``pretrained_model_path``."""
    options = dict(_CREATE_OPTIONS.get(metric_name, {}))
    sd = None
    if paths is None:
        options['pretrained'] = False
    else:
        path, sd = _in_pyiqa_layout(paths[0], tmp, _PARAMS_KEY[metric_name])
        options['pretrained_model_path'] = str(path)
    with pyiqa_offline.offline(metric_name, cache_dir=tmp):
        try:
            net = _create(metric_name, as_loss, **options)
        except (RuntimeError, KeyError) as e:
            if sd is None:
                raise
            raise _load_error(paths[0], metric_name, e) from e
    if sd is not None:  # pyiqa loads some of these files with strict=False
        _check_covers(net, sd, paths[0], f"pyiqa's {metric_name}")
    return net


def _arniqa_regressor(tensors, path, n):
    """ARNIQA's regressor (published as a TorchScript linear layer) as an ``nn.Linear(n, 1)``."""
    w = [v for v in tensors.values() if torch.is_tensor(v) and v.numel() == n and v.is_floating_point()]
    b = [v for v in tensors.values() if torch.is_tensor(v) and v.numel() == 1 and v.is_floating_point()]
    if len(w) != 1 or len(b) != 1:
        raise wm.WeightsError(f'{path}: expected one linear regressor ({n} weights and a bias), '
                              f'found tensors {[tuple(v.shape) for v in tensors.values()]}')
    regressor = nn.Linear(n, 1)
    with torch.no_grad():
        regressor.weight.copy_(w[0].reshape(1, n))
        regressor.bias.copy_(b[0].reshape(1))
    return regressor.eval()


def _build_arniqa(paths, tmp, as_loss, explicit):
    """ARNIQA: pyiqa's constructor fetches an encoder checkpoint and a TorchScript regressor itself; it gets
    them from the resolved files (or random weights) through ``pyiqa_offline``."""
    import torchvision

    encoder = nn.Sequential(*list(torchvision.models.resnet50(weights=None).children())[:-1])
    n = 2 * 2048  # the regressor reads the features of both scales
    if paths is None:
        enc, regressor, where = {'model.' + k: v for k, v in encoder.state_dict().items()}, nn.Linear(n, 1), None
    elif explicit:  # scorer.net.state_dict()
        sd, where = read_weights(paths[0]), paths[0]
        enc = {'model.' + k[len('encoder.'):]: v for k, v in sd.items() if k.startswith('encoder.')}
        regressor = _arniqa_regressor({k: v for k, v in sd.items() if k.startswith('regressor.')}, where, n)
    else:
        where, reg_path = paths
        enc = read_weights(where)
        regressor = _arniqa_regressor(read_weights(reg_path), reg_path, n)
    with pyiqa_offline.offline('arniqa', arniqa=(enc, regressor)):
        try:
            return _create('arniqa', as_loss)
        except (RuntimeError, KeyError) as e:
            if where is None:
                raise
            raise _load_error(where, 'arniqa', e) from e


def _build_clipiqa(paths, tmp, as_loss, explicit):
    """CLIP-IQA: its weights are the CLIP file, which pyiqa's constructor loads itself by name."""
    clip = None
    if paths is not None:
        path = paths[0]
        sd = read_weights(path)
        if isinstance(sd, dict) and any(k.startswith('clip_backbone.') for k in sd):  # scorer.net.state_dict()
            sd = {k[len('clip_backbone.'):]: v for k, v in sd.items() if k.startswith('clip_backbone.')}

        def clip(backbone, *args, **kwargs):
            model = pyiqa_offline.random_clip(backbone)
            load_into(model, sd, path)
            return model
    with pyiqa_offline.offline('clipiqa', clip=clip):
        net = _create('clipiqa', as_loss)
    net.clip_backbone = net.clip_model[0]  # registered too, so .to(device) and state_dict see it
    return net


def _niqe_model(paths):
    """NIQE's pristine model (mu (36,), cov (36, 36)) from a .mat file or a tensor file; placeholder without."""
    if paths is None:  # structure only, not a NIQE score
        return torch.zeros(36, dtype=torch.float64), torch.eye(36, dtype=torch.float64), None
    path = Path(paths[0])
    if path.suffix.lower() == '.mat':
        import numpy as np
        import scipy.io
        params = scipy.io.loadmat(str(path))
        if 'mu_prisparam' not in params or 'cov_prisparam' not in params:
            raise wm.WeightsError(f'{path} has no mu_prisparam / cov_prisparam (not a NIQE model file)')
        mu, cov = torch.from_numpy(np.ravel(params['mu_prisparam'])), torch.from_numpy(params['cov_prisparam'])
        mat = path
    else:
        sd = read_weights(path)
        if not isinstance(sd, dict) or 'mu_pris_param' not in sd or 'cov_pris_param' not in sd:
            raise wm.WeightsError(f'{path} has no mu_pris_param / cov_pris_param tensors')
        mu, cov, mat = sd['mu_pris_param'], sd['cov_pris_param'], None
    if mu.shape != (36,) or cov.shape != (36, 36):
        raise wm.WeightsError(f'{path}: NIQE model must be mu (36,) and cov (36, 36), got {tuple(mu.shape)} '
                              f'and {tuple(cov.shape)}')
    return mu, cov, mat


def _build_niqe(paths, tmp, as_loss, explicit):
    """NIQE: pyiqa reads its pristine model from a MATLAB file (``pretrained_model_path``)."""
    mu, cov, mat = _niqe_model(paths)
    if mat is None:
        import scipy.io
        mat = Path(tmp) / 'niqe_model.mat'
        scipy.io.savemat(str(mat), {'mu_prisparam': mu.double().numpy()[None], 'cov_prisparam': cov.double().numpy()})
    with pyiqa_offline.offline('niqe'):
        return _create('niqe', as_loss, pretrained_model_path=str(mat))


def _build_brisque(paths, tmp, as_loss, explicit):
    """BRISQUE: pyiqa reads its SVM from a ``(sv_coef, sv)`` file (``pretrained_model_path``)."""
    if paths is None:  # random support vectors: structure only
        g = torch.Generator().manual_seed(0)
        sv = torch.rand(64, 36, generator=g, dtype=torch.float64) * 2 - 1
        sv_coef, path, as_is = torch.randn(64, generator=g, dtype=torch.float64), None, False
    else:
        path = paths[0]
        sd = read_weights(path)
        as_is = isinstance(sd, tuple) and len(sd) == 2
        if isinstance(sd, (tuple, list)) and len(sd) == 2:
            sv_coef, sv = sd
        elif isinstance(sd, dict) and 'sv_coef' in sd and 'sv' in sd:
            sv_coef, sv = sd['sv_coef'], sd['sv']
        else:
            raise wm.WeightsError(f'{path}: expected (sv_coef, sv) tensors of a BRISQUE SVM')
        if sv.ndim != 2 or sv.shape[1] != 36 or sv_coef.numel() != sv.shape[0]:
            raise wm.WeightsError(f'{path}: BRISQUE SVM must be sv (n, 36) and sv_coef (n,), got '
                                  f'{tuple(sv.shape)} and {tuple(sv_coef.shape)}')
    if not as_is:
        path = Path(tmp) / 'brisque_svm.pth'
        torch.save((sv_coef.reshape(-1), sv), path)
    with pyiqa_offline.offline('brisque'):
        return _create('brisque', as_loss, pretrained_model_path=str(path))


def _build_calibrated_fr(metric_name, paths, tmp, as_loss, explicit):
    """LPIPS and DISTS: a calibration file (``pretrained_model_path``) on a torchvision backbone, which pyiqa's
    constructor would download; it gets the resolved file's backbone through ``pyiqa_offline``."""
    import torchvision

    if explicit:
        raise ValueError(f'{metric_name} takes no weights_path: {WEIGHTS_PATH_FORMAT[metric_name]}')
    if paths is None:
        with pyiqa_offline.offline(metric_name):
            return _create(metric_name, as_loss, pretrained=False)
    calibration, backbone_file = paths
    arch = _BACKBONE[metric_name]
    backbone = getattr(torchvision.models, arch)(weights=None)
    features = {k[len('features.'):]: v for k, v in read_weights(backbone_file).items() if k.startswith('features.')}
    load_into(backbone.features, features, backbone_file)  # the only part of the backbone these metrics use
    path, sd = _in_pyiqa_layout(calibration, tmp, None)
    with pyiqa_offline.offline(metric_name, backbones={arch: backbone}):
        net = _create(metric_name, as_loss, pretrained_model_path=str(path))
    # pyiqa loads these files with strict=False: the calibrated tensors must all be there
    calibrated = [k for k in net.state_dict() if (k[:3] == 'lin' and k[3:4].isdigit()) or k in ('alpha', 'beta')]
    missing = [k for k in calibrated if k not in sd]
    if missing:
        raise wm.WeightsError(f'weights file {calibration} lacks {missing[0]} of {metric_name}; wrong file?')
    return net


def _build_qalign(paths, tmp, as_loss, explicit):
    if explicit:
        raise ValueError("qalign takes no weights_path: it loads the HuggingFace snapshot q-future/one-align "
                         "from the HF cache")
    if paths is None:
        raise ValueError("qalign cannot be built with pretrained=False: it is a 7B-parameter mPLUG-Owl2 LLM "
                         "(HuggingFace q-future/one-align) with no small offline structure")
    check_qalign_snapshot()
    old = os.environ.get('HF_HUB_OFFLINE')
    os.environ['HF_HUB_OFFLINE'] = '1'
    try:
        return _create('qalign', as_loss)
    finally:
        if old is None:
            os.environ.pop('HF_HUB_OFFLINE', None)
        else:
            os.environ['HF_HUB_OFFLINE'] = old


def _builder(metric_name):
    """``(paths | None, tmp folder, as_loss, explicit) -> network`` for pyiqa row ``metric_name``."""
    special = {'arniqa': _build_arniqa, 'clipiqa': _build_clipiqa, 'niqe': _build_niqe, 'brisque': _build_brisque,
               'qalign': _build_qalign}
    if metric_name in special:
        return special[metric_name]
    if metric_name in _PARAMS_KEY:
        return lambda *args: _build_from_state_dict(metric_name, *args)
    if metric_name in _BACKBONE:
        return lambda *args: _build_calibrated_fr(metric_name, *args)

    def weight_free(paths, tmp, as_loss, explicit):  # the pyiqa metrics without files (nlpd, gmsd, ...)
        if explicit:
            raise ValueError(f'{metric_name} has no weights: it takes no weights_path')
        with pyiqa_offline.offline(metric_name):
            return _create(metric_name, as_loss)
    return weight_free


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


def build_pyiqa_scorer(device=None, metric_name='musiq', weights_path=None, pretrained=True, as_loss=False,
                       allow_download=True):
    """Build pyiqa metric ``metric_name`` as an ``NRScorer`` (or ``FRScorer``), frozen, eval.

    Args:
        device: torch device (default CPU).
        metric_name (str): a scoring-table row with ``pyiqa=True`` (``NR_METRICS`` and the full-reference ones).
        weights_path (str | Path | None): explicit weights file (see ``WEIGHTS_PATH_FORMAT``).
        pretrained (bool): load published weights (cache, then download); False keeps the
            random initialisation (structure only: scores are meaningless).
        as_loss (bool): the caller optimises the score (passed to ``pyiqa.create_metric``): metrics refused as
            losses (the row's ``loss``: niqe, brisque, qalign, ...) raise ValueError.
        allow_download (bool): try to download a missing file (never when IQA_PLUGIN_OFFLINE=1).
    Raises:
        ValueError: unknown metric, or one refused as a loss with ``as_loss``.
        iqa_plugin.weights.WeightsError: weights missing/unreadable/not matching.
    """
    info = metric_info(metric_name)
    spec = info.spec
    if as_loss and not spec.loss_capable:
        raise ValueError(f"metric '{metric_name}' cannot be a loss ({spec.loss}); use it as a "
                         'validator (calculate_iqa) instead')
    device = torch.device(device) if device is not None else torch.device('cpu')
    paths = None
    if weights_path:
        p = Path(os.path.expanduser(str(weights_path)))
        if not p.is_file():
            raise FileNotFoundError(f"weights file for '{metric_name}' not found: {p}")
        paths = [p]
    elif pretrained:  # resolve first: a missing file fails before any network is built
        paths = resolve_metric_files(metric_name, allow_download)
    with tempfile.TemporaryDirectory(prefix='iqa_plugin_pyiqa_') as tmp:
        net = _builder(metric_name)(paths, tmp, as_loss, bool(weights_path))
    cls = FRScorer if spec.kind == 'fr' else NRScorer
    scorer = cls.for_row(metric_name, net, batch_one=metric_name == 'qalign')  # Q-Align scores one image per call
    scorer.pretrained = bool(pretrained or weights_path)
    return scorer.to(device)
