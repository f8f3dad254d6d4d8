"""Parity of our pyiqa-based no-reference scorers with pyiqa's own metrics on identical random weights.

For ``musiq``, ``nima``, ``topiq_nr`` and ``clipiqa``: ours is ``scoring.create_metric(name,
pretrained=False)`` (an ``NRScorer`` over the network ``iqa_plugin.nriqa`` builds offline); the
reference is ``pyiqa.create_metric(name, pretrained=False, ...)``, i.e. pyiqa's ``InferenceModel``
with its own default options of the metric and its own arch constructor. The reference receives
ours' state dict, so both hold the same weights, and both score the same images through their
whole public path: pyiqa's ``InferenceModel.forward`` adds no preprocessing of its own (an input
check, then ``net(x)``; each arch normalises/resizes inside its forward), ours validates the input
and calls the net.

Nothing is downloaded: every socket connection raises inside these tests. Where pyiqa's constructor
would fetch a backbone whatever ``pretrained`` says, the smallest change that keeps its constructor
is made, and only to the *weights source*, never to the structure:

* ``nima``: pyiqa's ``NIMA.__init__`` calls ``timm.create_model(..., pretrained=True)``
  unconditionally; ``timm.create_model`` is wrapped to force ``pretrained=False`` (same structure,
  random weights, then ours' weights copied in);
* ``topiq_nr``: pyiqa's own flag ``backbone_pretrain=False`` (its timm ResNet-50);
* ``clipiqa``: pyiqa's ``CLIPIQA.__init__`` calls ``clip_model.load('RN50')``, which downloads
  OpenAI's RN50 archive; ``clipiqa_arch.load`` is replaced by pyiqa's own ``clip_model.CLIP`` class
  built with RN50's published hyper-parameters (embed 1024, 224 px, layers (3, 4, 6, 3), width 64;
  text: 77 tokens, 49408 words, width 512, 8 heads, 12 layers) and random weights, which then
  receive ours' CLIP weights. The CLIP-IQA code that scores (prompt encoding, the image tower,
  the softmax over antonym pairs) is pyiqa's unchanged;
* ``musiq``: pyiqa's ``MUSIQ(pretrained=False)`` keeps its default one-score head, which is the
  KonIQ-10k head of its default configuration (``pretrained='koniq10k'`` sets ``num_class=1``).

Tolerance: 1e-5 of each metric's documented score range (pyiqa's ``score_range``: musiq ~0..~100,
nima 0..10, topiq_nr ~0..~1, clipiqa 0..1). Both sides run pyiqa's arch code on the same weights and
inputs, so they agree to float32 rounding of one network (for these nets, orders of magnitude
below 1e-5 of the range; measured: bit-identical here); 1e-5 catches any difference in weights,
options or input handling (each check below also shows that the images give scores far more than
the tolerance apart, and that a reference with other random weights is far outside it).
"""
import re
import socket

import pytest
import torch

import iqa_plugin  # noqa: F401
from iqa_plugin import scoring

REL = 1e-5
NIMA_LOGIT_GAIN = 300.0
METRICS = ('musiq', 'nima', 'topiq_nr', 'clipiqa')

pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection (a download) fails the test instead of reaching the network."""
    def refuse(self, address, *args, **kwargs):
        raise AssertionError(f'network access attempted during a parity test: {address}')

    monkeypatch.setattr(socket.socket, 'connect', refuse)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')


def score_scale(name):
    """hi - lo of pyiqa's documented ``score_range`` of ``name`` (e.g. '~0, ~100' -> 100)."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    lo, hi = (float(v) for v in re.findall(r'-?\d+(?:\.\d+)?', DEFAULT_CONFIGS[name]['score_range']))
    return hi - lo


def _random_rn50_clip(backbone, device='cpu'):
    from pyiqa.archs.clip_model import CLIP

    assert backbone == 'RN50', backbone
    return CLIP(1024, 224, (3, 4, 6, 3), 64, None, context_length=77, vocab_size=49408, transformer_width=512,
                transformer_heads=8, transformer_layers=12).float().eval()


def pyiqa_reference(name, monkeypatch, seed):
    """pyiqa's own metric ``name`` with random weights (seed ``seed``), built without any download."""
    import pyiqa
    import timm

    real_create = timm.create_model

    def create_model_no_download(*args, **kwargs):
        kwargs['pretrained'] = False
        return real_create(*args, **kwargs)

    torch.manual_seed(seed)
    with monkeypatch.context() as mp:
        mp.setattr(timm, 'create_model', create_model_no_download)
        kwargs = {'pretrained': False}
        if name == 'topiq_nr':
            kwargs['backbone_pretrain'] = False
        if name == 'clipiqa':
            from pyiqa.archs import clipiqa_arch
            mp.setattr(clipiqa_arch, 'load', _random_rn50_clip)
        return pyiqa.create_metric(name, device='cpu', **kwargs)


def copy_weights(ours, theirs, name):
    """Load ours' weights into pyiqa's metric (strict: every tensor of both networks is matched)."""
    sd = ours.net.state_dict()
    if name == 'clipiqa':  # pyiqa keeps the CLIP in a list (unregistered); ours registers it as clip_backbone
        clip = {k[len('clip_backbone.'):]: v for k, v in sd.items() if k.startswith('clip_backbone.')}
        theirs.net.clip_model[0].load_state_dict(clip, strict=True)
        sd = {k: v for k, v in sd.items() if not k.startswith('clip_backbone.')}
    theirs.net.load_state_dict(sd, strict=True)


def images(name):
    """A smooth image and a noisy one (B=2, RGB in [0, 1]); CLIP-IQA's RN50 needs 224 px."""
    h, w = (224, 224) if name == 'clipiqa' else (96, 128)
    g = torch.Generator().manual_seed(5)
    small = torch.rand(2, 3, h // 8, w // 8, generator=g)
    x = torch.nn.functional.interpolate(small, size=(h, w), mode='bicubic', align_corners=False)
    noise = torch.tensor([0.02, 0.25]).view(2, 1, 1, 1)
    return (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)


@pytest.mark.parametrize('name', METRICS)
def test_parity_with_pyiqa_on_identical_random_weights(name, monkeypatch):
    torch.manual_seed(0)
    ours = scoring.create_metric(name, pretrained=False)
    if name == 'nima':  # random logits are ~0.01: a flat softmax scores every image 5.5; spread them
        with torch.no_grad():
            ours.net.classifier[-2].weight.mul_(NIMA_LOGIT_GAIN)
    theirs = pyiqa_reference(name, monkeypatch, seed=1)
    x = images(name)
    tol = REL * score_scale(name)
    with torch.no_grad():
        before = theirs(x.clone()).flatten()
        copy_weights(ours, theirs, name)
        want = theirs(x.clone()).flatten()
        got = ours(x.clone())[name]
    assert got.shape == want.shape == (2,)
    err = float((got - want).abs().max())
    assert err <= tol, (name, got, want, f'max |diff| {err:.3g} > {tol:.3g}')
    # the check can fail: the two images score far apart, and other weights score far away
    assert float((want[0] - want[1]).abs()) > 10 * tol, (name, want)
    assert float((before - want).abs().max()) > 10 * tol, (name, before, want)
