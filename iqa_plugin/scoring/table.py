"""The one metric table: ``METRICS`` (name -> ``MetricSpec``), creation by name, range normalisation and the
weight files each metric loads.

The table is the only place a metric's kind ('fr' needs a reference, 'nr' does not), direction
(``lower_better``), score range (for range normalisation in losses), input needs (``min_size``),
whether it may be optimised (``loss``), the weight files it loads and its factory live (see the package
docstring, ``iqa_plugin.scoring``). Imports no torch at module level (the CLI's ``score --help`` lists it).
"""
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class MetricSpec:
    """One row of the table, written with keywords only (``tests/test_scoring_table.py`` checks it).

    Attributes:
        factory: ``'module:function'`` building the frozen scorer.
        kind: 'fr' (needs a reference) or 'nr'.
        lower_better: direction of the primary output.
        defaults: factory keyword arguments of this row.
        description: one line for listings.
        score_range: (lo, hi) of the primary output, the scale used to normalise it into a loss
            (approximate for metrics without hard bounds; values outside are not clipped).
        min_size: smallest image side accepted.
        loss: '' when the metric may be optimised, else why it is refused as a loss.
        weight_options: pairs (entry option, explicit-path option) naming weights-manager entries
            (``iqa_plugin.weights``) that the factory loads, e.g. ('weights', 'weights_path').
        pyiqa: built by pyiqa (``pyiqa.create_metric``, ``iqa_plugin.scoring.pyiqa_adapter``); its files are ``files``.
        files: the published files a pyiqa row loads with ``pretrained=True``, in the order its builder takes
            them: ``(source, cache folder)`` or ``(source, cache folder, fallback)``. ``source`` is a URL, a
            pyiqa arch's ``default_model_urls`` entry (``'musiq_arch:koniq10k'``) or a torchvision weights enum
            (``'torchvision:AlexNet_Weights.IMAGENET1K_V1'``); the folder is the one under the torch hub folder
            where pyiqa, CLIP or torchvision cache it; ``fallback`` (``'package:relative/path'``) is a copy
            shipped by an installed package, used when no other copy is here.
        resolver: for weights the weights manager does not hold as files (a Stable Diffusion folder), a
            ``'module:function'`` that resolves them (``allow_download`` and the factory options as keywords).
    """
    factory: str
    kind: str
    lower_better: bool
    defaults: dict = field(default_factory=dict)
    description: str = ''
    score_range: tuple = (0.0, 1.0)
    min_size: int = 16
    loss: str = ''
    weight_options: tuple = (('weights', 'weights_path'),)
    pyiqa: bool = False
    files: tuple = ()
    resolver: str = ''  # 'module:function(allow_download=..., **options) -> [paths]' for weights that are not files

    @property
    def better(self):
        """'lower' or 'higher': BasicSR's ``better`` key for this metric."""
        return 'lower' if self.lower_better else 'higher'

    @property
    def loss_capable(self):
        return not self.loss


_MILO = 'iqa_plugin.archs.milo_arch:build_milo_scorer'
_AFINE = 'iqa_plugin.archs.afine_arch:build_afine_scorer'
_AFINE_WEIGHTS = (('weights', 'weights_path'), ('clip_weights', 'clip_weights_path'))
_AFINE_FILES = {'weights': 'afine', 'clip_weights': 'clip-vit-b-32'}  # the factory's defaults: what a row loads
_PYIQA = 'iqa_plugin.scoring.pyiqa_adapter:build_pyiqa_scorer'
_NSS = 'hand-crafted natural-scene statistics: optimising them games the statistics'
_CLIP_RN50 = (('https://openaipublic.azureedge.net/clip/models/'
               'afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt'), 'clip')


def _pyiqa_row(name, *, kind, lower_better, score_range, min_size, description, files=(), loss=''):
    """A row built by pyiqa: its ``metric_name`` is the row's name, its files are pyiqa's published files."""
    return MetricSpec(factory=_PYIQA, kind=kind, lower_better=lower_better, defaults={'metric_name': name},
                      description=description, score_range=score_range, min_size=min_size, loss=loss,
                      weight_options=(), pyiqa=True, files=files)


METRICS = {
    'milo': MetricSpec(factory=_MILO, kind='fr', lower_better=True, defaults={'weights': 'milo'},
                       description='MILO (official weights): quality score, 0 = identical'),
    'milo-pseudomos': MetricSpec(factory=_MILO, kind='fr', lower_better=True, defaults={'weights': 'milo-pseudomos'},
                                 description='MILO trained label-free by this project (ships with the package)'),
    'relational': MetricSpec(factory='iqa_plugin.archs.relational_arch:build_relational_scorer', kind='fr',
                             lower_better=False, defaults={'weights': 'relational'},
                             description='relational score s(dist | ref) <= 0, 0 = identical', score_range=(-1.0, 0.0)),
    'afine': MetricSpec(factory=_AFINE, kind='fr', lower_better=True,
                        defaults={'model_type': 'afine_all_scale', **_AFINE_FILES},
                        description='A-FINE, scaled score (afine_all_scale)', score_range=(0.0, 100.0), min_size=32,
                        weight_options=_AFINE_WEIGHTS),
    'afine_fr': MetricSpec(factory=_AFINE, kind='fr', lower_better=True,
                           defaults={'model_type': 'afine_fr', **_AFINE_FILES},
                           description='A-FINE fidelity term', score_range=(-2.0, 2.0), min_size=32,
                           weight_options=_AFINE_WEIGHTS),
    'afine_all': MetricSpec(factory=_AFINE, kind='fr', lower_better=True,
                            defaults={'model_type': 'afine_all', **_AFINE_FILES},
                            description='A-FINE before the final scaling (D)', score_range=(-2.0, 2.0), min_size=32,
                            weight_options=_AFINE_WEIGHTS),
    'afine_nr': MetricSpec(factory=_AFINE, kind='nr', lower_better=True,
                           defaults={'model_type': 'afine_nr', **_AFINE_FILES},
                           description='A-FINE naturalness term', score_range=(-2.0, 2.0), min_size=32,
                           weight_options=_AFINE_WEIGHTS),
    'nr-lite': MetricSpec(factory='iqa_plugin.archs.nr_lite_arch:build_nr_lite_scorer', kind='nr', lower_better=False,
                          defaults={'weights': 'nr-lite'},
                          description='small offline NR model trained by this project (ships with the package)',
                          min_size=32),
    'niqe-fitted': MetricSpec(factory='iqa_plugin.archs.niqe_fitted_arch:build_niqe_fitted_scorer', kind='nr',
                              lower_better=True, defaults={'weights': 'niqe-fitted'},
                              description="NIQE fitted on this project's pristine photos; flat images score 100 "
                                          '(ships with the package)', score_range=(0.0, 100.0), min_size=96, loss=_NSS),
    'lgdm': MetricSpec(factory='iqa_plugin.archs.lgdm_arch:build_lgdm_scorer', kind='nr', lower_better=False,
                       description='LGDM-style hyperfeatures of frozen Stable Diffusion 1.x + trained regressor (needs '
                                   'diffusers, SD weights, a regressor file)', min_size=64,
                       loss='guided diffusion passes per call, not differentiable w.r.t. the image', weight_options=(),
                       resolver='iqa_plugin.archs.lgdm_arch:resolve_lgdm_weights'),
    # pyiqa no-reference metrics (weights through pyiqa's cache or weights_path); direction and range as pyiqa's
    # DEFAULT_CONFIGS give them (checked against pyiqa in tests/test_nriqa.py).
    'musiq': _pyiqa_row('musiq', kind='nr', lower_better=False, score_range=(0.0, 100.0), min_size=32,
                        description='MUSIQ (KonIQ-10k head); multi-scale patches of 32 px',
                        files=(('musiq_arch:koniq10k', 'pyiqa'),)),
    'nima': _pyiqa_row('nima', kind='nr', lower_better=False, score_range=(0.0, 10.0), min_size=32,
                       description='NIMA, Inception-ResNet-v2, AVA (aesthetics); input resized to 299',
                       files=(('nima_arch:inception_resnet_v2-ava', 'pyiqa'),)),
    'topiq_nr': _pyiqa_row('topiq_nr', kind='nr', lower_better=False, score_range=(0.0, 1.0), min_size=32,
                           description='TOPIQ-NR, ResNet-50, KonIQ-10k',
                           files=(('topiq_arch:cfanet_nr_koniq_res50', 'pyiqa'),)),
    'qalign': _pyiqa_row('qalign', kind='nr', lower_better=False, score_range=(1.0, 5.0), min_size=16,
                         description='Q-Align, mPLUG-Owl2 (7B LLM) from HuggingFace q-future/one-align',
                         loss='its input goes through PIL (no gradient)'),
    'liqe': _pyiqa_row('liqe', kind='nr', lower_better=False, score_range=(1.0, 5.0), min_size=224,
                       description='LIQE, CLIP ViT-B/32, KonIQ-10k; 224 px patches',
                       files=(('liqe_arch:koniq', 'pyiqa'),)),
    'paq2piq': _pyiqa_row('paq2piq', kind='nr', lower_better=False, score_range=(0.0, 100.0), min_size=32,
                          description='PaQ-2-PiQ, ResNet-18 RoI pooling', files=(('paq2piq_arch:url', 'pyiqa'),)),
    'arniqa': _pyiqa_row('arniqa', kind='nr', lower_better=False, score_range=(0.0, 1.0), min_size=32,
                         description='ARNIQA, ResNet-50 encoder + linear regressor (KonIQ-10k)',
                         files=(('arniqa_arch:ARNIQA', 'checkpoints'), ('arniqa_arch:koniq', 'pyiqa'))),
    'clipiqa': _pyiqa_row('clipiqa', kind='nr', lower_better=False, score_range=(0.0, 1.0), min_size=32,
                          description='CLIP-IQA, OpenAI CLIP RN50 with antonym prompts', files=(_CLIP_RN50,)),
    'niqe': _pyiqa_row('niqe', kind='nr', lower_better=True, score_range=(0.0, 100.0), min_size=96,
                       description='NIQE; pretrained=False uses a placeholder pristine model',
                       files=(('niqe_arch:url', 'pyiqa'),), loss=_NSS),
    'brisque': _pyiqa_row('brisque', kind='nr', lower_better=True, score_range=(0.0, 150.0), min_size=32,
                          description='BRISQUE; pretrained=False uses random support vectors',
                          files=(('brisque_arch:url', 'pyiqa'),), loss=_NSS),
    # pyiqa full-reference metrics: LPIPS and DISTS (a calibration file and a torchvision backbone each) and the
    # weight-free members of the pseudo-MOS ensemble (iqa_plugin.labels.pseudomos_ensemble)
    'lpips': _pyiqa_row('lpips', kind='fr', lower_better=True, score_range=(0.0, 1.0), min_size=16,
                        description='LPIPS v0.1, AlexNet (Zhang et al. 2018); calibration from pyiqa or the lpips '
                                    'package',
                        files=(('lpips_arch:0.1_alex', 'pyiqa', 'lpips:weights/v0.1/alex.pth'),
                               ('torchvision:AlexNet_Weights.IMAGENET1K_V1', 'checkpoints'))),
    'dists': _pyiqa_row('dists', kind='fr', lower_better=True, score_range=(0.0, 1.0), min_size=16,
                        description='DISTS, VGG16 (Ding et al. 2020)',
                        files=(('dists_arch:url', 'pyiqa'),
                               ('torchvision:VGG16_Weights.IMAGENET1K_V1', 'checkpoints'))),
    'nlpd': _pyiqa_row('nlpd', kind='fr', lower_better=True, score_range=(0.0, 1.0), min_size=16,
                       description='normalised Laplacian pyramid distance (Laparra et al. 2016): divisive '
                                   'normalisation = contrast masking'),
    'gmsd': _pyiqa_row('gmsd', kind='fr', lower_better=True, score_range=(0.0, 1.0), min_size=16,
                       description='gradient magnitude similarity deviation (Xue et al. 2014), luma'),
    'fsim': _pyiqa_row('fsim', kind='fr', lower_better=False, score_range=(0.0, 1.0), min_size=16,
                       description='feature similarity, phase congruency + gradient + chroma (Zhang et al. 2011)'),
    'vsi': _pyiqa_row('vsi', kind='fr', lower_better=False, score_range=(0.0, 1.0), min_size=16,
                      description='visual saliency-induced index, saliency + gradient + chroma (Zhang et al. 2014)'),
    'ms_ssim': _pyiqa_row('ms_ssim', kind='fr', lower_better=False, score_range=(0.0, 1.0), min_size=176,
                          description='multi-scale SSIM (Wang et al. 2003), luma; needs sides >= 176 px'),
    'mad': _pyiqa_row('mad', kind='fr', lower_better=True, score_range=(0.0, 1.0), min_size=16,
                      description='most apparent distortion (Larson & Chandler 2010): masking-based detection + '
                                  'appearance; slow',
                      loss='slow, and pyiqa gives its score no upper bound to normalise a loss by'),
}


def get_spec(name):
    """The ``MetricSpec`` of ``name``; ValueError naming the known metrics otherwise."""
    if name not in METRICS:
        raise ValueError(f"unknown metric '{name}'; known: {', '.join(sorted(METRICS))}")
    return METRICS[name]


def import_factory(path):
    """``'module:function'`` -> the function."""
    module, func = path.split(':')
    return getattr(importlib.import_module(module), func)


def factory_options(name):
    """Keyword names the metric's factory accepts (besides ``device``): for option checks."""
    import inspect

    spec = get_spec(name)
    params = inspect.signature(import_factory(spec.factory)).parameters
    return (set(spec.defaults) | {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}) \
        - {'device'}


_defaults_memo = {}


def factory_defaults(factory):
    """The keyword defaults of a factory (besides ``device``), memoised."""
    if factory not in _defaults_memo:
        import inspect

        params = inspect.signature(import_factory(factory)).parameters.values()
        _defaults_memo[factory] = {p.name: p.default for p in params
                                   if p.default is not p.empty and p.default is not None and p.name != 'device'}
    return _defaults_memo[factory]


def metric_options(name, kwargs):
    spec = get_spec(name)
    return {**spec.defaults, **{k: v for k, v in kwargs.items() if v is not None}}


def create_metric(name, device=None, **kwargs):
    """Build metric ``name`` (see ``METRICS``) with its defaults overridden by ``kwargs``."""
    import torch

    spec = get_spec(name)
    device = torch.device(device) if device is not None else torch.device('cpu')
    return import_factory(spec.factory)(device=device, **metric_options(name, kwargs))


def normalise_score(scores, score_range, lower_better, as_loss=False):
    """Range normalisation of scores in a metric's own scale, the one used by losses and scorers.

    ``(hi - lo)`` maps to 1 and the direction is turned: quality in about [0, 1], higher = better (default:
    ``NRScorer.normalize``, ``score_candidates(normalize=True)``), or with ``as_loss`` a lower-is-better loss
    value in about [0, 1] (``FrozenIQALoss.normalise``: one ``loss_weight`` means about the same across
    metrics). Not clipped (``score_range`` is approximate for metrics without hard bounds).
    """
    lo, hi = score_range
    if bool(lower_better) == bool(as_loss):
        return (scores - lo) / (hi - lo)
    return (hi - scores) / (hi - lo)


# ------------------------------------------------------------------------------------ weights
def weight_requirements(name, **kwargs):
    """What metric ``name`` with these options loads: a list of ``(kind, value)`` pairs.

    ``('path', p)`` for an explicit file, ``('entry', e)`` for a weights-manager entry,
    ``('pyiqa', metric_name)`` for pyiqa's published files. Empty for random-weight builds
    (``pretrained: false`` without ``weights_path``).
    """
    spec = get_spec(name)
    opts = metric_options(name, kwargs)
    if opts.get('pretrained') is False and not opts.get('weights_path'):
        return []
    needs = []
    for entry_key, path_key in spec.weight_options:
        if opts.get(path_key):
            needs.append(('path', str(opts[path_key])))
        elif opts.get(entry_key) and opts[entry_key] != 'none':
            needs.append(('entry', opts[entry_key]))
    if spec.pyiqa:
        if opts.get('weights_path'):
            needs.append(('path', str(opts['weights_path'])))
        elif spec.files:
            needs.append(('pyiqa', opts['metric_name']))
        elif opts['metric_name'] == 'qalign':
            needs.append(('hf', 'q-future/one-align'))
    return needs


def resolve_weights(name, allow_download=True, **kwargs):
    """Resolve every file metric ``name`` will load (downloading where allowed and online).

    Raises ``iqa_plugin.weights.WeightsError`` (one line: the file, its URL and the folders searched) for
    the first file that cannot be had, ``FileNotFoundError`` for a missing explicit path. Returns the paths.
    """
    from iqa_plugin import weights as wm

    paths = []
    for kind, value in weight_requirements(name, **kwargs):
        if kind == 'path':
            p = Path(os.path.expanduser(value))
            if not p.is_file():
                raise FileNotFoundError(f"weights file for '{name}' not found: {p}")
            paths.append(p)
        elif kind == 'entry':
            paths.append(wm.resolve(value, allow_download=allow_download))
        elif kind == 'pyiqa':  # looked up by name like the factories: nriqa builds on this module
            paths.extend(import_factory('iqa_plugin.scoring.pyiqa_adapter:resolve_metric_files')(value, allow_download))
        elif kind == 'hf':
            import_factory('iqa_plugin.scoring.pyiqa_adapter:check_qalign_snapshot')()
    spec = get_spec(name)
    if spec.resolver:
        paths.extend(import_factory(spec.resolver)(allow_download=allow_download, **metric_options(name, kwargs)))
    return paths


def available_offline(name, **kwargs):
    """(True, '') when every file metric ``name`` loads is on this machine now, else (False, reason).

    Never downloads.
    """
    from iqa_plugin import weights as wm

    try:
        resolve_weights(name, allow_download=False, **kwargs)
    except (wm.WeightsError, FileNotFoundError, ImportError, ValueError) as e:
        return False, ' '.join(str(e).split())
    return True, ''


def table_rows():
    """(name, kind, direction, description) for every metric, sorted: for listings (no torch import)."""
    return [(n, s.kind, s.better, s.description) for n, s in sorted(METRICS.items())]
