"""pyiqa's constructors without their downloads: the one module that keeps them offline.

``iqa_plugin.scoring.pyiqa_adapter`` builds pyiqa metrics with
``pyiqa.create_metric(name, pretrained_model_path=...)`` from
files the weights manager resolved. Some of pyiqa's (0.1.16) constructors also fetch files that
``pretrained_model_path`` does not cover, whatever their options say:

* NIMA: its timm backbone with ``pretrained=True``;
* PaQ-2-PiQ, ARNIQA, LPIPS, DISTS: their torchvision backbone's ImageNet weights;
* ARNIQA: its encoder checkpoint (``torch.hub.load_state_dict_from_url``) and its TorchScript regressor
  (``load_file_from_url``, then ``torch.jit.load``); it takes no ``pretrained_model_path``;
* LIQE and CLIP-IQA: OpenAI's CLIP (``clip_model.load``); CLIP-IQA takes no ``pretrained_model_path`` (the
  CLIP file is its weights);
* LIQE: its prompt features are cached in ``<pyiqa cache>/liqe_text_feat.pt``, a file keyed by nothing, so
  the features of one build's weights would be reused by the next build.

``offline(metric_name, ...)`` replaces, for the time of one construction, those names in the metric's pyiqa
arch module with stand-ins that build the same structure with random weights or from given local weights:
the weights source changes, never the structure. The backbones' random weights are then overwritten by the
metric's own file, which holds them. Every other ``load_file_from_url`` of those modules raises instead of
downloading. ``import_clip`` imports OpenAI's ``clip`` package where setuptools no longer ships
``pkg_resources``; ``random_clip`` is pyiqa's CLIP class with the published structure of a backbone.
"""
import contextlib
import importlib
import sys
import threading
import types

TESTED_PYIQA = ('0.1.16',)  # the stand-ins replace names inside these releases' arch modules (setup.py pins it)

_lock = threading.RLock()  # stand-ins are module attributes of pyiqa: one construction at a time
_version_checked = []


def check_pyiqa_version():
    """Warn once when the installed pyiqa is not a release the stand-ins were written against."""
    if _version_checked:
        return
    _version_checked.append(True)
    import pyiqa

    version = getattr(pyiqa, '__version__', '?')
    if version not in TESTED_PYIQA:
        import warnings
        warnings.warn(f"pyiqa {version} is installed; iqa_plugin's offline builds were tested with pyiqa "
                      f"{', '.join(TESTED_PYIQA)} (its constructors may fetch other files or take other options)",
                      UserWarning, stacklevel=3)


@contextlib.contextmanager
def patched_attribute(module, name, value):
    """Within the block, ``module.name`` is ``value``."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


class ModuleView:
    """A module seen through a few replaced attributes; every other attribute is the module's own."""

    def __init__(self, base, **replaced):
        self.__dict__['_base'] = base
        self.__dict__['_replaced'] = replaced

    def __getattr__(self, name):
        replaced = self.__dict__['_replaced']
        return replaced[name] if name in replaced else getattr(self.__dict__['_base'], name)


def import_clip():
    """Import the ``clip`` package (openai-clip), which pyiqa's CLIP metrics need.

    openai-clip does ``from pkg_resources import packaging``; setuptools >= 81 no longer ships
    ``pkg_resources``. Where it is missing, a stand-in exposing only ``packaging`` is put in
    ``sys.modules`` for the duration of the import and removed afterwards.
    """
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


def random_clip(backbone):
    """OpenAI CLIP structure (pyiqa's ``clip_model.CLIP``) of ``backbone`` with random weights, float32."""
    import_clip()
    from pyiqa.archs.clip_model import CLIP
    text = {'context_length': 77, 'vocab_size': 49408, 'transformer_width': 512, 'transformer_heads': 8,
            'transformer_layers': 12}
    if backbone == 'RN50':
        model = CLIP(1024, 224, (3, 4, 6, 3), 64, None, **text)
    elif backbone == 'ViT-B/32':
        model = CLIP(512, 224, 12, 768, 32, **text)
    else:
        raise ValueError(f"no offline CLIP structure for backbone '{backbone}' (known: RN50, ViT-B/32)")
    return model.float().eval()


def arch_module(name):
    """``pyiqa.archs.<name>`` (the CLIP metrics' modules after ``import_clip``)."""
    if name in ('liqe_arch', 'clipiqa_arch', 'clip_model'):
        import_clip()
    return importlib.import_module(f'pyiqa.archs.{name}')


def _timm_no_download():
    import timm

    def create_model(*args, **kwargs):
        kwargs['pretrained'] = False
        return timm.create_model(*args, **kwargs)
    return ModuleView(timm, create_model=create_model)


def _torchvision_models(backbones=None):
    """``torchvision.models`` whose backbone constructors return ``backbones[arch]`` or random weights."""
    import torchvision

    def constructor(arch):
        def build(*args, **kwargs):
            if backbones and arch in backbones:
                return backbones[arch]
            return getattr(torchvision.models, arch)(weights=None)
        return build
    return ModuleView(torchvision.models, **{a: constructor(a) for a in ('alexnet', 'vgg16', 'resnet18', 'resnet50')})


def _no_download(url, *args, **kwargs):
    raise RuntimeError(f'pyiqa tried to download {url} during an offline build (iqa_plugin.scoring.pyiqa_offline)')


@contextlib.contextmanager
def offline(metric_name, clip=None, backbones=None, arniqa=None, cache_dir=None):
    """Within the block, building pyiqa metric ``metric_name`` downloads nothing.

    Args:
        metric_name (str): the pyiqa metric about to be built.
        clip: ``(backbone) -> CLIP module`` replacing ``clip_model.load`` (LIQE, CLIP-IQA); default
            ``random_clip``.
        backbones (dict | None): torchvision backbones by constructor name ('alexnet', 'vgg16') for LPIPS and
            DISTS; missing ones are built with random weights.
        arniqa: ``(encoder state dict with 'model.' keys, regressor module)`` for ARNIQA (required for it).
        cache_dir: a folder for LIQE's prompt-feature cache (required for LIQE): an empty one, so the features
            come from the weights being loaded.
    """
    import torch

    check_pyiqa_version()
    patches = []
    if metric_name == 'nima':
        patches.append(('nima_arch', 'timm', _timm_no_download()))
    elif metric_name == 'paq2piq':
        import torchvision
        patches.append(('paq2piq_arch', 'tv', ModuleView(torchvision, models=_torchvision_models())))
    elif metric_name in ('lpips', 'dists'):
        patches.append((f'{metric_name}_arch', 'models', _torchvision_models(backbones)))
    elif metric_name == 'arniqa':
        import torchvision
        encoder, regressor = arniqa
        hub = ModuleView(torch.hub, load_state_dict_from_url=lambda url, *a, **k: encoder)
        jit = ModuleView(torch.jit, load=lambda f, *a, **k: regressor)
        patches += [('arniqa_arch', 'torchvision', ModuleView(torchvision, models=_torchvision_models())),
                    ('arniqa_arch', 'torch', ModuleView(torch, hub=hub, jit=jit)),
                    ('arniqa_arch', 'load_file_from_url', lambda url, *a, **k: url)]
    elif metric_name in ('liqe', 'clipiqa'):
        patches.append((f'{metric_name}_arch', 'load', clip or (lambda backbone, *a, **k: random_clip(backbone))))
        if metric_name == 'liqe':
            patches.append(('liqe_arch', 'DEFAULT_CACHE_DIR', str(cache_dir)))
        else:
            patches.append(('clipiqa_arch', 'load_file_from_url', _no_download))
    elif metric_name in ('niqe', 'brisque'):
        patches.append((f'{metric_name}_arch', 'load_file_from_url', _no_download))
    with _lock, contextlib.ExitStack() as stack:
        for module, name, value in patches:
            stack.enter_context(patched_attribute(arch_module(module), name, value))
        yield
