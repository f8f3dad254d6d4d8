"""Parity of our pyiqa-based scorers with pyiqa's own metrics on identical weights, for every pyiqa metric we list.

For each metric, the test writes random weights in the layout pyiqa publishes them (file names included) into
``$IQA_PLUGIN_WEIGHTS_DIR``. Ours is ``scoring.create_metric(name)``: the weights manager finds those files
and ``iqa_plugin.scoring.pyiqa_adapter`` builds the metric from them. The reference is pyiqa's own network holding the same
weights, built here without any of the plugin's code: ``pyiqa.create_metric(name, pretrained_model_path=file)``
where pyiqa takes a file, and where its constructor fetches files itself (ARNIQA's encoder checkpoint and
TorchScript regressor, CLIP-IQA's CLIP, the torchvision backbones) pyiqa's own fetch is pointed at the same
local file (``torch.jit.load`` of the TorchScript regressor, ``clip_model.load`` of the CLIP file) or, for
backbones the metric's own file overwrites, at random weights. Both score the same images through the network
pyiqa built (``InferenceModel.forward`` adds only an input check before ``net(x)``; ours validates the input
and calls the same net).

Nothing is downloaded: every socket connection raises inside these tests.

Tolerance: 1e-5 of each metric's score range in the table (pyiqa's ``score_range``). Both sides run pyiqa's
arch code on the same weights and inputs, so they agree to float32 rounding (bit-identical for most here);
each check also shows that the comparison can fail: the images score far more than the tolerance apart,
and ours with other weights (perturbed parameters, or random ones for the parameter-free NIQE/BRISQUE) is far
outside it. Q-Align is skipped: its weights are a 7B-parameter HuggingFace model that cannot be made here.
"""
import socket
import warnings

import numpy as np
import pytest
import torch

import iqa_plugin  # noqa: F401
from iqa_plugin import scoring

REL = 1e-5
NIMA_LOGIT_GAIN = 300.0
ARNIQA_GAIN = 1000.0
METRICS = ('musiq', 'nima', 'topiq_nr', 'liqe', 'paq2piq', 'arniqa', 'clipiqa', 'niqe', 'brisque', 'lpips', 'dists',
           'qalign')
WEIGHT_FREE = ('nlpd', 'gmsd', 'fsim')

pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection (a download) fails the test instead of reaching the network."""
    def refuse(self, address, *args, **kwargs):
        raise AssertionError(f'network access attempted during a parity test: {address}')

    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')


def filenames(name):
    from iqa_plugin.scoring.pyiqa_adapter import metric_info
    return [wf.filename for wf in metric_info(name).files()]


def random_backbones(monkeypatch, **backbones):
    """torchvision's and timm's constructors build random weights (or return ``backbones[arch]``) instead of
    downloading ImageNet weights."""
    import timm
    import torchvision

    def constructor(arch, real):
        return lambda *args, **kwargs: backbones[arch] if arch in backbones else real(weights=None)

    for arch in ('alexnet', 'vgg16', 'resnet18', 'resnet50'):
        monkeypatch.setattr(torchvision.models, arch, constructor(arch, getattr(torchvision.models, arch)))
    real_create = timm.create_model

    def create_model(*args, **kwargs):
        kwargs['pretrained'] = False
        return real_create(*args, **kwargs)
    monkeypatch.setattr(timm, 'create_model', create_model)


def clip_structure(backbone):
    """pyiqa's CLIP class with OpenAI's published hyper-parameters of ``backbone``, random weights."""
    from pyiqa.archs.clip_model import CLIP

    text = {'context_length': 77, 'vocab_size': 49408, 'transformer_width': 512, 'transformer_heads': 8,
            'transformer_layers': 12}
    if backbone == 'RN50':
        return CLIP(1024, 224, (3, 4, 6, 3), 64, None, **text).float().eval()
    return CLIP(512, 224, 12, 768, 32, **text).float().eval()


def create(name, **kwargs):
    import pyiqa
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return pyiqa.create_metric(name, device=torch.device('cpu'), **kwargs).net.eval()


# ------------------------------------------------------------------------------ the reference of each metric
def reference(name, wdir, tmp_path, monkeypatch):
    """Write random weights for ``name`` into ``wdir`` in pyiqa's published layout; return pyiqa's own network
    holding them, built without the plugin's code."""
    from iqa_plugin.scoring.pyiqa_offline import import_clip
    import_clip()  # openai-clip imports pkg_resources, which current setuptools lacks: an import fix only
    files = [wdir / f for f in filenames(name)]
    torch.manual_seed(1)
    with monkeypatch.context() as mp:
        random_backbones(mp)
        if name in ('musiq', 'paq2piq'):  # a bare state dict, loaded by pretrained_model_path
            torch.save(create(name, pretrained=False).state_dict(), files[0])
            return create(name, pretrained_model_path=str(files[0]))
        if name in ('nima', 'topiq_nr'):  # a state dict under 'params'
            kwargs = {'backbone_pretrain': False} if name == 'topiq_nr' else {}
            net = create(name, pretrained=False, **kwargs)
            if name == 'nima':  # random logits are ~0.01: a flat softmax scores every image 5.5; spread them
                with torch.no_grad():
                    net.classifier[-2].weight.mul_(NIMA_LOGIT_GAIN)
            torch.save({'params': net.state_dict()}, files[0])
            return create(name, pretrained_model_path=str(files[0]), **kwargs)
        if name == 'liqe':  # under 'params', CLIP ViT-B/32 included; prompt features from the loaded CLIP
            from pyiqa.archs import clip_model, liqe_arch
            for folder in ('liqe_cache_a', 'liqe_cache_b'):
                (tmp_path / folder).mkdir()
            mp.setattr(liqe_arch, 'load', lambda backbone, *a, **k: clip_structure(backbone))
            mp.setattr(liqe_arch, 'DEFAULT_CACHE_DIR', str(tmp_path / 'liqe_cache_a'))
            torch.save({'params': create(name, pretrained=False).state_dict()}, files[0])
            clip_sd = {k[len('clip_model.'):]: v for k, v in torch.load(files[0])['params'].items()
                       if k.startswith('clip_model.')}
            mp.setattr(liqe_arch, 'load', lambda backbone, *a, **k: clip_model.build_model(dict(clip_sd)).float())
            mp.setattr(liqe_arch, 'DEFAULT_CACHE_DIR', str(tmp_path / 'liqe_cache_b'))
            return create(name, pretrained_model_path=str(files[0]))
        if name == 'arniqa':  # an encoder checkpoint ('model.' keys) and a TorchScript linear regressor
            import torchvision
            from pyiqa.archs import arniqa_arch
            encoder = torch.nn.Sequential(*list(torchvision.models.resnet50().children())[:-1])
            torch.save({'model.' + k: v for k, v in encoder.state_dict().items()}, files[0])
            regressor = torch.nn.Linear(4096, 1)
            with torch.no_grad():  # normalised features of a random encoder barely differ: spread the scores
                regressor.weight.mul_(ARNIQA_GAIN)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                torch.jit.script(regressor).save(str(files[1]))
            mp.setattr(torch.hub, 'load_state_dict_from_url', lambda url, *a, **k: torch.load(files[0]))
            mp.setattr(arniqa_arch, 'load_file_from_url', lambda url, *a, **k: str(files[1]))
            return create(name)
        if name == 'clipiqa':  # the CLIP RN50 file is the metric's weights
            # pyiqa's clip_model.load builds the CLIP from the file's state dict with clip_model.build_model (its
            # fall-back read of a non-TorchScript file starts at the end of the file, so build_model is called here)
            # (build_model rounds the weights to float16, as OpenAI publishes them: the random ones are made so)
            from pyiqa.archs import clip_model, clipiqa_arch
            torch.save({k: v.half().float() if v.is_floating_point() else v
                        for k, v in clip_structure('RN50').state_dict().items()}, files[0])
            mp.setattr(clipiqa_arch, 'load',
                       lambda backbone, device='cpu': clip_model.build_model(torch.load(files[0])).float().eval())
            return create(name)
        if name == 'niqe':  # a MATLAB file of the pristine Gaussian
            import scipy.io
            rng = np.random.default_rng(0)
            a = rng.normal(size=(36, 36))
            scipy.io.savemat(files[0], {'mu_prisparam': rng.normal(size=(1, 36)),
                                        'cov_prisparam': a @ a.T + np.eye(36)})
            return create(name, pretrained_model_path=str(files[0]))
        if name == 'brisque':  # (sv_coef, sv) of the SVM
            torch.save((torch.randn(40, dtype=torch.float64), torch.rand(40, 36, dtype=torch.float64)), files[0])
            return create(name, pretrained_model_path=str(files[0]))
        if name in ('lpips', 'dists'):  # a calibration file on a torchvision backbone
            import torchvision
            arch = {'lpips': 'alexnet', 'dists': 'vgg16'}[name]
            backbone = getattr(torchvision.models, arch)()
            torch.save(backbone.state_dict(), files[1])
            random_backbones(mp, **{arch: backbone})
            calibrated = {k: torch.rand_like(v) for k, v in create(name, pretrained=False).state_dict().items()
                          if (k[:3] == 'lin' and k[3:4].isdigit()) or k in ('alpha', 'beta')}
            torch.save(calibrated, files[0])
            return create(name, pretrained_model_path=str(files[0]))
    raise AssertionError(name)


def images(name, kind):
    """A smooth image and a noisy one (B=2, RGB in [0, 1]), and for full-reference metrics the smooth clean
    image as the reference of both; CLIP's and LIQE's patches need 224 px."""
    h, w = (224, 224) if name in ('clipiqa', 'liqe') else (96, 128)
    g = torch.Generator().manual_seed(5)
    small = torch.rand(1, 3, h // 8, w // 8, generator=g).expand(2, -1, -1, -1)
    x = torch.nn.functional.interpolate(small, size=(h, w), mode='bicubic', align_corners=False).clamp(0, 1)
    noise = torch.tensor([0.02, 0.25]).view(2, 1, 1, 1)
    dist = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
    return (dist, x) if kind == 'fr' else (dist,)


def other_weights(ours, name):
    """Ours with other weights: its parameters perturbed, or (NIQE, BRISQUE: no parameters) built random."""
    params = list(ours.net.parameters())
    if not params:
        return scoring.create_metric(name, pretrained=False)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in params:
            p.add_(0.5 * (p.std() if p.numel() > 1 else p.abs()) * torch.randn(p.shape, generator=g))
    return ours


@pytest.mark.parametrize('name', METRICS)
def test_parity_with_pyiqa_on_identical_weights(name, empty_weights_dir, tmp_path, monkeypatch):
    if name == 'qalign':
        pytest.skip('qalign: its weights are the 7B-parameter HuggingFace model q-future/one-align, which cannot '
                    'be made or downloaded here')
    spec = scoring.get_spec(name)
    theirs = reference(name, empty_weights_dir, tmp_path, monkeypatch)
    torch.manual_seed(123)  # ours must not depend on the random state: everything comes from the files
    ours = scoring.create_metric(name)
    assert ours.pretrained and ours.kind == spec.kind
    inputs = images(name, spec.kind)
    tol = REL * (spec.score_range[1] - spec.score_range[0])
    with torch.no_grad():
        want = theirs(*[x.clone() for x in inputs]).reshape(-1).float()
        got = ours(*[x.clone() for x in inputs])[name]
        moved = other_weights(ours, name)(*inputs)[name]
    assert got.shape == want.shape == (2,)
    err = float((got - want).abs().max())
    assert err <= tol, (name, got, want, f'max |diff| {err:.3g} > {tol:.3g}')
    # the check can fail: the two images score far apart, and other weights score far away
    assert float((want[0] - want[1]).abs()) > 10 * tol, (name, want)
    assert float((moved - want).abs().max()) > 10 * tol, (name, moved, want)


@pytest.mark.parametrize('name', WEIGHT_FREE)
def test_weight_free_fr_metrics_equal_pyiqa(name):
    """The pseudo-MOS ensemble's weight-free members, as table rows, score as pyiqa's own metric does."""
    ours = scoring.create_metric(name)
    dist, ref = images(name, 'fr')
    with torch.no_grad():
        want = create(name)(dist, ref).reshape(-1).float()
        got = ours(dist, ref)[name]
    tol = REL * (ours.score_range[1] - ours.score_range[0])
    assert float((got - want).abs().max()) <= tol, (got, want)
    assert float((want[0] - want[1]).abs()) > 10 * tol, want


def test_lpips_calibration_falls_back_to_the_lpips_package(empty_weights_dir, monkeypatch):
    """With only the AlexNet file here, the LPIPS row takes its calibration from the ``lpips`` package, and
    scores as the ``lpips`` package's own LPIPS v0.1 on the same backbone (0 for identical images)."""
    import lpips
    import torchvision

    torch.manual_seed(3)
    alex = torchvision.models.alexnet(weights=None)
    torch.save(alex.state_dict(), empty_weights_dir / filenames('lpips')[1])
    ok, why = scoring.available_offline('lpips')
    assert ok, why
    ours = scoring.create_metric('lpips')
    with monkeypatch.context() as mp:
        random_backbones(mp, alexnet=alex)
        theirs = lpips.LPIPS(net='alex', version='0.1', pnet_rand=True, verbose=False).eval()
    dist, ref = images('lpips', 'fr')
    with torch.no_grad():
        got = ours(dist, ref)['lpips']
        want = theirs(dist, ref, normalize=True).reshape(-1)
        same = ours(ref, ref)['lpips']
    assert float((got - want).abs().max()) <= 1e-5, (got, want)
    assert float((want[0] - want[1]).abs()) > 1e-3 and float(same.abs().max()) < 1e-6
