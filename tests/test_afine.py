"""A-FINE: parity with pyiqa on identical (random, published-shape) weights, batching, gradients,
any size, weights handling, the scorer/loss/validator wrappers.

The published weights cannot be downloaded here, so ``write_random_afine_weights`` builds an
``afine.pth`` and a CLIP ViT-B/32 state dict with pyiqa's own classes; its calibrators are set so
that the outputs lie in the sensitive range of the sigmoids (checked below), not saturated.
"""
import contextlib
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import iqa_plugin  # noqa: F401
from iqa_plugin import scoring
from iqa_plugin import weights as weights_mod
from iqa_plugin.archs.afine_arch import AFINE, Encoded, RefCache, build_afine_scorer
from iqa_plugin.archs.clip_vit_arch import CLIPVisionTower, load_clip_state_dict
from iqa_plugin.apps.bench.afine_bench import bench_images, build_pyiqa_afine, write_random_afine_weights
from iqa_plugin.utils.onednn_linear import onednn_linear_available

# ---- float32 tolerances, relative to each output's scale -------------------------------------
# Two float32 evaluations of the same network differ only by rounding, and which roundings happen
# depends on the GEMM library and the CPU's instruction set (MKL or oneDNN, AVX2 or AVX-512 kernels
# sum in different orders): ours with packed oneDNN weights, ours with F.linear and pyiqa are three
# such evaluations. A K-term dot product carries a relative error of about sqrt(K) * eps (roundings
# of random sign; K * eps is the rigorous worst case), eps = 2**-23 = 1.19e-7. Along the serial path
# of the ViT-B/32 each of the 12 blocks accumulates over K = 768 (qkv), 64 (q.k, head dim), <= 50
# (attn.v, tokens), 768 (out proj), 768 (fc1) and 3072 (fc2): 12 * 5490 = 65880 accumulations, so the
# features carry a relative error of sqrt(65880) * eps = 3.1e-5 (REL_VIT). The heads pool these
# features (means/variances, softplus-weighted sums, sigmoids), which averages errors rather than
# amplifying them, so each output may differ by REL_VIT of its scale: 100 for afine_all_scale (0..100),
# 4 for the calibrated afine_fr/afine_nr (-2..2). Measured against a float64 evaluation of the same
# weights, every path here stays within 1.1e-6 of the scale with AVX2 and with AVX-512 oneDNN kernels
# (ONEDNN_MAX_CPU_ISA), a 25x margin; a wrong layer or normalisation moves the scores by 1e-2 of the scale
# or more (the two test images differ by 3 points of afine_all_scale).
# Where only the heads see a different batch layout (same CLIP features), the chain is the heads'
# own: K = 3 + 12 * 768 (fidelity weights) + 1536 + 1542 + 768 (naturalness MLP), REL_HEADS = 1.4e-5.
EPS32 = torch.finfo(torch.float32).eps
REL_VIT = math.sqrt(12 * (3 * 768 + 64 + 50 + 3072)) * EPS32
REL_HEADS = math.sqrt(3 + 12 * 768 + 1536 + 1542 + 768) * EPS32
SCALE = {'afine_all_scale': 100.0, 'afine_fr': 4.0, 'afine_nr': 4.0, 'afine_nr_ref': 4.0}


def assert_close_to_scale(got, want, name, rel):
    """|got - want| <= rel * scale of output ``name`` (afine_all, unbounded: max(4, |want|))."""
    scale = SCALE.get(name) or max(4.0, float(want.abs().max()))
    err = float((got - want).abs().max())
    assert err <= rel * scale, (name, got, want, f'max |diff| {err:.3g} > {rel * scale:.3g} = {rel:.2g} * {scale:g}')


GEMM_PATHS = ('packed', 'plain')


def gemm_path(net, path):
    """Context in which ``net``'s CLIP runs its linear layers through oneDNN ('packed') or F.linear ('plain')."""
    if path == 'plain':
        return net.clip.packed_linear.disabled()
    assert net.clip.packed_linear.enabled == onednn_linear_available()
    return contextlib.nullcontext()


TINY_VIT = {'width': 64, 'layers': 2, 'patch_size': 16, 'grid': 4}


def _no_clip_hash():
    """The random CLIP file is not OpenAI's release; let the weights manager accept it for these tests."""
    entry = weights_mod.WEIGHTS['clip-vit-b-32']
    return dataclasses.replace(entry, sha256='')


pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    return write_random_afine_weights(tmp_path_factory.mktemp('afine_w'), seed=0)


@pytest.fixture(scope='module')
def theirs(files):
    return build_pyiqa_afine(*files, model_type='afine_all_scale')


@pytest.fixture(scope='module')
def ours(files):
    afine_path, clip_path = files
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(weights_mod.WEIGHTS, 'clip-vit-b-32', _no_clip_hash())
        net = build_afine_scorer('cpu', model_type='afine_all_scale', weights_path=str(afine_path),
                                 clip_weights_path=str(clip_path))
    return net


@pytest.fixture(scope='module')
def images():
    dist, ref = bench_images(2, 224, 224, seed=3)
    small_dist, small_ref = bench_images(2, 64, 96, seed=4)
    return dist[:1], ref[:1], small_dist, small_ref


def pyiqa_terms(theirs, dist, ref):
    """pyiqa's afine_all_scale, afine_fr and afine_nr of each image from ONE call of its forward per image.

    Its forward computes every term and returns the one named by ``model_type``; forward hooks on its
    calibrators read the others (fidelity: ``net_scale_fr``; naturalness of the test image: the first
    call of ``net_scale_nr``). ``test_pyiqa_hooks_equal_its_outputs`` checks this equals its outputs.
    """
    seen = {'fr': [], 'nr': []}
    hooks = [theirs.net_scale_fr.register_forward_hook(lambda m, i, o: seen['fr'].append(o.flatten())),
             theirs.net_scale_nr.register_forward_hook(lambda m, i, o: seen['nr'].append(o.flatten()))]
    theirs.model_type = 'afine_all_scale'
    out = {'afine_all_scale': [], 'afine_fr': [], 'afine_nr': []}
    try:
        with torch.no_grad():
            for i in range(dist.shape[0]):
                seen['fr'].clear()
                seen['nr'].clear()
                out['afine_all_scale'].append(theirs(dist[i:i + 1].clone(), ref[i:i + 1].clone()).flatten())
                out['afine_fr'].append(seen['fr'][0])
                out['afine_nr'].append(seen['nr'][0])  # test image first, then the reference
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v) for k, v in out.items()}


@pytest.fixture(scope='module')
def pyiqa_values(theirs, images):
    d224, r224, d, r = images
    return pyiqa_terms(theirs, d224, r224), pyiqa_terms(theirs, d, r)


def test_pyiqa_hooks_equal_its_outputs(theirs, images, pyiqa_values):
    _, _, d, r = images
    _, small = pyiqa_values
    for mt in ('afine_fr', 'afine_nr'):
        theirs.model_type = mt
        try:
            with torch.no_grad():
                v = theirs(d[:1].clone(), None if mt == 'afine_nr' else r[:1].clone()).flatten()
        finally:
            theirs.model_type = 'afine_all_scale'
        assert torch.allclose(v, small[mt][:1], atol=1e-6, rtol=0), mt


@pytest.mark.parametrize('path', GEMM_PATHS)
def test_parity_with_pyiqa(ours, images, pyiqa_values, path):
    """afine_all_scale, afine_fr, afine_nr within REL_VIT of their scale at 224x224 and (batch of 2) at
    64x96, with either GEMM path of the CLIP tower (packed oneDNN weights or plain F.linear)."""
    d224, r224, d, r = images
    ours.clip.packed_linear.clear()
    with gemm_path(ours, path):
        for (dd, rr), want in zip(((d224, r224), (d, r)), pyiqa_values):
            with torch.no_grad():
                enc_d, enc_r = ours.encode(dd), ours.encode(rr)
                got = ours.terms(enc_d, enc_r)
            for mt in ('afine_all_scale', 'afine_fr', 'afine_nr'):
                assert got[mt].shape == (dd.shape[0],)
                assert_close_to_scale(got[mt], want[mt], mt, REL_VIT)
            # the random weights are in a sensitive range: no saturated sigmoid ...
            assert (got['afine_fr'].abs() < 1.9).all() and (got['afine_nr'].abs() < 1.9).all()
            assert ((got['afine_all_scale'] > 1) & (got['afine_all_scale'] < 99)).all()
        # the path asked for is the one that ran (packed copies are made only by the oneDNN path)
        assert bool(ours.clip.packed_linear._packed) == (path == 'packed' and onednn_linear_available())
        # ... and different images give clearly different values
        for mt in ('afine_all_scale', 'afine_fr', 'afine_nr'):
            assert (got[mt][0] - got[mt][1]).abs() > 100 * REL_VIT * SCALE[mt], mt
        with torch.no_grad():
            swapped = ours.fidelity(Encoded(enc_d.pixels.flip(0), [f.flip(0) for f in enc_d.feats]), enc_r)
        assert (ours.fidelity_scale(swapped) - got['afine_fr']).abs().min() > 100 * REL_VIT * SCALE['afine_fr']
        # the full forward (validation + one CLIP pass over dist and ref) gives the same numbers; the CLIP
        # features are the same bits (test_clip_rows_bit_identical_across_batches), the heads see another batch
        with torch.no_grad():
            full = ours(d, r)
        for mt in ours.output_names:
            assert_close_to_scale(full[mt], got[mt], mt, REL_HEADS)


@pytest.mark.skipif(not onednn_linear_available(), reason='this PyTorch build has no oneDNN linear')
def test_clip_rows_bit_identical_across_batches(ours, images):
    """The strict check: with the packed oneDNN path, each image's CLIP features are the same bits
    whatever else is in the batch, and whether or not the weights were just repacked. A GEMM's output
    row depends only on its input row and on the kernel's K blocking, which oneDNN picks from K and N;
    measured bit-identical with oneDNN's SSE4.1, AVX, AVX2 and AVX-512 kernels (ONEDNN_MAX_CPU_ISA),
    single-threaded as here. (Our F.linear path and pyiqa's are not bit-comparable with each other:
    different attention code; the packed and plain paths differ by rounding: test_parity_with_pyiqa.)"""
    d224, _, d, _ = images
    for x in (torch.cat([d224, d224.flip(-1), d224.flip(-2)]), d):
        z = (x - ours.clip_mean) / ours.clip_std
        with torch.no_grad():
            ours.clip.packed_linear.clear()
            full = ours.clip(z)
            for b in range(1, x.shape[0]):
                part = ours.clip(z[:b])
                assert all(torch.equal(f[:b], p) for f, p in zip(full, part)), b
            assert all(torch.equal(f[-1:], p) for f, p in zip(full, ours.clip(z[-1:])))


def test_nr_scorer_from_table_ignores_reference(files, images, pyiqa_values):
    afine_path, _ = files
    _, _, d, r = images
    nr = scoring.create_metric('afine_nr', weights_path=str(afine_path), clip_weights='none')
    assert nr.kind == 'nr' and nr.lower_better and nr.output_names == ('afine_nr',)
    assert not nr.training and all(not p.requires_grad for p in nr.parameters())
    with torch.no_grad():
        alone = nr(d)['afine_nr']
        assert_close_to_scale(alone, pyiqa_values[1]['afine_nr'], 'afine_nr', REL_VIT)
        assert torch.equal(nr(d, r[:, :, :32])['afine_nr'], alone)  # ref ignored, even a mismatched one


def test_scorer_contract_and_frozen(ours):
    assert not ours.training
    assert all(not p.requires_grad for p in ours.parameters())
    assert ours.kind == 'fr' and ours.lower_better is True
    assert ours.output_names[0] == 'afine_all_scale'
    assert set(ours.output_names) == {'afine_all_scale', 'afine_all', 'afine_fr', 'afine_nr', 'afine_nr_ref'}


def test_gradient_to_test_image_and_inputs_untouched(ours, images):
    _, _, d, r = images
    d0, r0 = d.clone(), r.clone()
    x = d.clone().requires_grad_(True)
    ours(x, r)['afine_all_scale'].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.equal(d, d0) and torch.equal(r, r0)  # pyiqa normalises its inputs in place; we never do
    assert all(p.grad is None for p in ours.parameters())


# ---------------------------------------------------------------------------------------------
# implementation properties on a tiny random A-FINE (same code, milliseconds per call)

@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    net = AFINE(weights='none', clip_weights='none', vit=TINY_VIT, hidden_dim=8)
    with torch.no_grad():  # calibrators into the sensitive range of this random net
        net.natural_scale.yita3.fill_(0.0)
        net.natural_scale.yita4.fill_(0.05)
        net.fidelity_scale.yita3.fill_(0.1)
        net.fidelity_scale.yita4.fill_(0.1)
        net.adapter.k.fill_(0.0)
    return scoring.freeze(net)


def test_batch_equals_singles_and_shared_reference(tiny):
    d, r = bench_images(3, 48, 64, seed=5)
    with torch.no_grad():
        both = tiny(d, r)
        singles = [tiny(d[i:i + 1], r[i:i + 1]) for i in range(3)]
        shared = tiny(d, r[:1])  # one reference for the whole batch, encoded once
        first_ref = [tiny(d[i:i + 1], r[:1]) for i in range(3)]
    for k in tiny.output_names:
        assert torch.allclose(both[k], torch.cat([s[k] for s in singles]), atol=1e-5, rtol=1e-6), k
        assert torch.allclose(shared[k], torch.cat([s[k] for s in first_ref]), atol=1e-5, rtol=1e-6), k
        assert (both[k][0] - both[k][1]).abs() > 1e-4, k


def test_sizes_not_divisible_by_patch(tiny):
    d, r = bench_images(2, 50, 75, seed=6)  # the tiny ViT has 16 px patches: 50x75 -> 64x80
    d0 = d.clone()
    with torch.no_grad():
        out = tiny(d, r)
    assert torch.equal(d, d0)
    assert all(torch.isfinite(v).all() and v.shape == (2,) for v in out.values())
    # 'resize' (default) scores the bicubic resize to the next multiples of the patch size
    assert torch.equal(tiny.fit_size(d), F.interpolate(d, size=(64, 80), mode='bicubic', align_corners=False))
    assert tiny.fit_size(d[..., :48, :64]).data_ptr() == d[..., :48, :64].data_ptr()  # multiples: untouched
    tiny.size_mode = 'reflect'
    try:
        with torch.no_grad():
            out_pad = tiny(d, r)
        padded = tiny.fit_size(d)
    finally:
        tiny.size_mode = 'resize'
    assert all(torch.isfinite(v).all() for v in out_pad.values())
    assert padded.shape[-2:] == (64, 80) and torch.equal(padded[..., :50, :75], d)
    x = d.clone().requires_grad_(True)
    tiny(x, r)['afine_all_scale'].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_input_errors(tiny):
    d, r = bench_images(2, 32, 32, seed=7)
    with pytest.raises(ValueError, match='shapes differ'):
        tiny(d, r[:, :, :16])
    bad = d.clone()
    bad[0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match='NaN'):
        tiny(bad, r)
    with pytest.raises(ValueError, match='reference'):
        tiny(d)
    with pytest.raises(ValueError, match='smaller than the minimum'):
        tiny(d[..., :8, :8], r[..., :8, :8])
    for bad_opt in ({'model_type': 'afine_foo'}, {'size_mode': 'crop'}, {'amp_dtype': 'int8'}):
        with pytest.raises(ValueError, match=list(bad_opt)[0]):
            AFINE(weights='none', clip_weights='none', vit=TINY_VIT, **bad_opt)


def test_missing_weights_offline_error(monkeypatch, tmp_path):
    monkeypatch.setenv('IQA_PLUGIN_OFFLINE', '1')
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty_torch_home'))
    with pytest.raises(weights_mod.WeightsError, match=r'afine\.pth.*offline'):
        AFINE()
    with pytest.raises(weights_mod.WeightsError, match=r'ViT-B-32\.pt.*offline'):
        scoring.create_metric('afine', weights='none')
    with pytest.raises(weights_mod.WeightsError, match='not found'):
        AFINE(weights_path=str(tmp_path / 'nope.pth'), clip_weights='none')
    junk = tmp_path / 'junk.pth'
    torch.save({'natural': {}}, junk)
    with pytest.raises(weights_mod.WeightsError, match='lacks keys'):
        AFINE(weights_path=str(junk), clip_weights='none')


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_clip_file_formats(tmp_path, monkeypatch):
    """OpenAI's TorchScript archive and a plain state dict give the same tower; wrong shapes fail clearly."""
    torch.manual_seed(0)
    tower = CLIPVisionTower(**TINY_VIT)

    class CLIPLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = tower
            self.text_projection = torch.nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return self.visual(x)[-1]

    ts_path = tmp_path / 'clip_ts.pt'
    torch.jit.save(torch.jit.trace(CLIPLike().eval(), torch.rand(1, 3, 64, 64)), str(ts_path))
    sd_path = tmp_path / 'clip_sd.pth'
    torch.save(CLIPLike().state_dict(), sd_path)
    a, b = load_clip_state_dict(ts_path), load_clip_state_dict(sd_path)
    for k, v in tower.state_dict().items():
        assert torch.equal(a[f'visual.{k}'], v) and torch.equal(b[f'visual.{k}'], v), k
    monkeypatch.setitem(weights_mod.WEIGHTS, 'clip-vit-b-32', _no_clip_hash())
    for path in (ts_path, sd_path):
        net = AFINE(weights='none', clip_weights_path=str(path), hidden_dim=8)
        assert net.clip.config == {**TINY_VIT, 'heads': 1}
        for k, v in tower.state_dict().items():
            assert torch.equal(net.clip.state_dict()[k], v)
    # an A-FINE file whose CLIP does not fit the base CLIP is refused with the key named
    bad = AFINE(weights='none', clip_weights='none', vit={**TINY_VIT, 'layers': 1}, hidden_dim=8).afine_state_dict()
    bad_path = tmp_path / 'bad_afine.pth'
    torch.save(bad, bad_path)
    with pytest.raises(weights_mod.WeightsError, match='finetuned_clip'):
        AFINE(weights_path=str(bad_path), clip_weights_path=str(sd_path))


def test_clip_hash_is_checked(files):
    """An explicit CLIP file that is not OpenAI's release fails the published sha256."""
    afine_path, clip_path = files
    with pytest.raises(weights_mod.WeightsError, match='sha256'):
        AFINE(weights_path=str(afine_path), clip_weights_path=str(clip_path))


@pytest.fixture(scope='module')
def tiny_file(tiny, tmp_path_factory):
    """``tiny`` saved in the published afine.pth layout (visual-only finetuned_clip)."""
    path = tmp_path_factory.mktemp('afine_tiny') / 'afine_tiny.pth'
    torch.save(tiny.afine_state_dict(), path)
    return path


def test_afine_layout_roundtrip(tiny, tiny_file):
    net = AFINE(weights_path=str(tiny_file), clip_weights='none')  # config and hidden_dim from the file
    cli_style = AFINE(weights_path=str(tiny_file), clip_weights_path='none')  # iqa-plugin score --clip-weights none
    d, r = bench_images(2, 32, 48, seed=8)
    with torch.no_grad():
        a, b, c = net(d, r), tiny(d, r), cli_style(d, r)
    for k in tiny.output_names:
        assert torch.equal(a[k], b[k]) and torch.equal(c[k], b[k]), k


def test_afine_loss(tiny_file):
    d, r = bench_images(2, 32, 48, seed=9)
    from iqa_plugin.losses.afine_loss import AFINELoss

    loss = AFINELoss(loss_weight=2.0, weights_path=str(tiny_file), clip_weights='none')
    assert list(loss.parameters()) == [] and loss.state_dict() == {}
    loss.train()
    net = loss.afine('cpu')
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    pred = d.clone().requires_grad_(True)
    target = r.clone().requires_grad_(True)
    value = loss(pred, target)
    with torch.no_grad():
        want = 2.0 * (net(d, r)['afine_all_scale'] / 100).mean()
    assert value.ndim == 0 and torch.allclose(value, want, atol=1e-6)
    value.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert target.grad is None
    for mt in ('afine_fr', 'afine_nr', 'afine_all'):
        per = AFINELoss(model_type=mt, reduction='none', weights_path=str(tiny_file), clip_weights='none')(d, r)
        assert per.shape == (2,) and torch.isfinite(per).all()
        if mt != 'afine_all':
            assert ((per > 0) & (per < 1)).all()
    with pytest.raises(ValueError, match='reduction'):
        AFINELoss(reduction='avg', weights_path=str(tiny_file), clip_weights='none')


def test_afine_loss_from_yaml_block(tiny_file):
    """BasicSR builds the loss from a YAML block: explicit keyword arguments only."""
    from basicsr.losses import build_loss

    loss = build_loss({'type': 'AFINELoss', 'loss_weight': 0.5, 'model_type': 'afine_fr',
                       'weights_path': str(tiny_file), 'clip_weights_path': None, 'reduction': 'sum',
                       'clip_weights': 'none'})
    d, r = bench_images(2, 32, 32, seed=10)
    assert loss(d, r).ndim == 0
    with pytest.raises(TypeError):
        build_loss({'type': 'AFINELoss', 'weights_path': str(tiny_file), 'clip_weights': 'none', 'unknown': 1})


def test_calculate_afine_metric(tiny_file):
    from basicsr.utils.registry import METRIC_REGISTRY

    from iqa_plugin.utils.image import bgr_uint8_to_tensor

    d, r = bench_images(1, 40, 56, seed=11)
    to_bgr = lambda t: (t[0].permute(1, 2, 0).numpy()[:, :, ::-1] * 255).round().astype(np.uint8)
    img, img2 = to_bgr(d), to_bgr(r)
    fn = METRIC_REGISTRY.get('calculate_afine')
    opts = dict(weights_path=str(tiny_file), clip_weights='none', crop_border=4, better='lower')
    v = fn(img, img2, **opts)
    n_cached = len(scoring.cache._cache)
    assert fn(img, img2, **opts) == v and len(scoring.cache._cache) == n_cached  # the network is built once
    net = AFINE(weights_path=str(tiny_file), clip_weights='none')
    with torch.no_grad():
        want = float(net(bgr_uint8_to_tensor(img[4:-4, 4:-4]), bgr_uint8_to_tensor(img2[4:-4, 4:-4]))
                     ['afine_all_scale'][0])
    # a 0-100 float32 score through two code paths (uint8 crop vs crop of the tensor): a few ulps apart
    # (measured 1.1e-5 at 52.8, i.e. 2e-7 relative); 1e-5 relative allows ~80 float32 eps on any CPU
    assert isinstance(v, float) and v == pytest.approx(want, rel=1e-5) and 0 < v < 100
    nr = fn(img, None, model_type='afine_nr', weights_path=str(tiny_file), clip_weights='none')
    assert -2 < nr < 2
    with pytest.raises(ValueError, match='img2'):
        fn(img, None, weights_path=str(tiny_file), clip_weights='none')


def test_reference_cache(tiny_file):
    net = scoring.freeze(AFINE(weights_path=str(tiny_file), clip_weights='none', ref_cache_mib=1))
    plain = scoring.freeze(AFINE(weights_path=str(tiny_file), clip_weights='none'))
    d, r = bench_images(3, 32, 48, seed=12)
    with torch.no_grad():
        first = net(d, r)
        assert net.ref_cache.misses == 3 and net.ref_cache.hits == 0
        again = net(d.flip(0), r.flip(0))  # same references, other order
        shared = net(d, r[:1])
        want, want_shared = plain(d.flip(0), r.flip(0)), plain(d, r[:1])
    assert net.ref_cache.hits == 4 and net.ref_cache.misses == 3
    for k in net.output_names:
        assert torch.allclose(first[k], want[k].flip(0), atol=1e-6) and torch.allclose(again[k], want[k], atol=1e-6)
        assert torch.allclose(shared[k], want_shared[k], atol=1e-6)
    per_image = RefCache._size(net.ref_cache.items[next(iter(net.ref_cache.items))])
    small = AFINE(weights_path=str(tiny_file), clip_weights='none', ref_cache_mib=2.5 * per_image / 2 ** 20)
    with torch.no_grad():
        small(d, r)
    assert len(small.ref_cache.items) == 2 and small.ref_cache.bytes <= small.ref_cache.budget  # LRU eviction
    x = d.clone().requires_grad_(True)
    net(x, r)['afine_all_scale'].sum().backward()  # gradients: the cache is bypassed
    assert net.ref_cache.hits == 4 and torch.isfinite(x.grad).all()


def test_loss_and_validator_share_one_network(tiny_file):
    from iqa_plugin.archs.afine_arch import get_frozen_afine
    from iqa_plugin.losses.afine_loss import AFINELoss
    from iqa_plugin.metrics.afine_metric import calculate_afine

    loss = AFINELoss(weights_path=str(tiny_file), clip_weights='none')
    img = (np.random.default_rng(0).uniform(0, 255, (32, 32, 3))).astype(np.uint8)
    calculate_afine(img, img, weights_path=str(tiny_file), clip_weights='none', device='cpu')
    shared = get_frozen_afine('cpu', weights_path=str(tiny_file), clip_weights='none')
    assert loss.afine('cpu') is shared and shared.ref_cache.budget == 256 * 2 ** 20


def test_bench_roofline_counts(tiny):
    """The bench's roofline: FLOPs per pair match the ViT's analytic count within 2 %, and the
    GEMM workload's FLOPs are those of the four linear layers it runs."""
    from iqa_plugin.apps.bench.afine_bench import flops_per_pair, gemm_workload

    x = torch.rand(2, 3, 32, 32)
    n, c, layers = (32 // 16) ** 2 + 1, TINY_VIT['width'], TINY_VIT['layers']
    vit = layers * (24 * n * c * c + 4 * n * n * c) + 2 * (n - 1) * 3 * 16 * 16 * c  # blocks + patch embedding
    flops = flops_per_pair(tiny, x, x)
    assert 0.98 * 2 * vit <= flops <= 1.02 * 2 * vit
    run, gemm_flops = gemm_workload(10, 8)
    run()
    assert gemm_flops == 4 * 2 * 10 * 8 * (3 * 8 + 8 + 4 * 8 + 4 * 8)


def test_autocast_runs_clip_in_bf16_heads_in_float32(tiny):
    """amp_dtype autocasts the CLIP tower on the inputs' device (the code path CUDA takes, run here on CPU)."""
    torch.manual_seed(1)
    d, r = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    seen = []
    hook = tiny.clip.transformer.resblocks[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        ref_out = tiny(d, r)
        n_fp32 = len(seen)
        tiny.amp_dtype = torch.bfloat16
        x = d.clone().requires_grad_(True)
        amp_out = tiny(x, r)
        amp_out['afine_all_scale'].sum().backward()
    finally:
        tiny.amp_dtype = None
        hook.remove()
    assert set(seen[:n_fp32]) == {torch.float32} and set(seen[n_fp32:]) == {torch.bfloat16}
    for k in ('afine_all_scale', 'afine_fr', 'afine_nr'):
        assert amp_out[k].dtype == torch.float32
        spread = float(ref_out[k].detach().max() - ref_out[k].detach().min()) + 1e-6
        assert float((amp_out[k].detach() - ref_out[k].detach()).abs().max()) < 0.1 * spread + 0.05, k
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
