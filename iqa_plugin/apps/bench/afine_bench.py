"""``iqa-plugin bench afine``: our batched A-FINE against pyiqa's per-image A-FINE, same weights.

    iqa-plugin bench afine [--batch 8] [--size 224] [--repeats 5] [--threads N] [--seed 0] [--keep DIR]

No published weights are needed: random-weight files of the published shapes (``afine.pth`` and a
CLIP ViT-B/32 state dict) are written to a temporary folder with pyiqa's own classes
(``write_random_afine_weights``), and both implementations load them. Measured in one run:

* images/s of pyiqa's ``AFINE`` called once per image (it takes batch 1 only and normalises its
  inputs in place, so each call gets fresh copies) and of ours on the whole batch, both without
  gradients; every case below runs once per repeat, interleaved, and the best repeat is reported;
  interleaved too: the float32 matrix products of the ViT's layer shapes alone (the roofline below);
* the same with one reference shared by the whole batch (ours encodes it once);
* ours re-scoring references it has seen before (``ref_cache_mib``, as in repeated validation),
  against pyiqa on the same distinct pairs (it always re-encodes the reference);
* the largest |difference| of the ``afine_all_scale`` scores;
* our forward+backward (gradient to the test images): time, the peak resident memory it adds (RSS
  sampled every 2 ms above the level before the call, glibc set to map large blocks afresh), the
  bytes autograd saves for the backward pass, and the process's peak RSS.

* a roofline: FLOPs per pair (torch's FLOP counter), the GFLOP/s each implementation reaches and the
  float32 GEMM throughput of this machine on the ViT's own layer shapes, hence the highest ratio that
  any float32 implementation of the same arithmetic could show against pyiqa here (``ceiling_ratio``).

The returned dict's ``ratio`` is ours / pyiqa in images per second on distinct pairs with a cold
cache (no reuse of any kind); ``ratio_shared_ref`` and ``ratio_cached_refs`` are the other two cases.

Where the time goes: both run the same ViT-B/32 twice per pair (test image and reference), which is
almost all of the cost (``aten::addmm``); pyiqa does it with batch-1 matrix products, two CLIP calls
per image and copies for its in-place normalisation, ours with one CLIP call over the 2B images.

Why one file over 450 lines: one bench, one command; ``main`` is split by job (``_parse_args``, ``_build_models``,
``_cases``, ``_interleaved_times``, ``_report_throughput``, ``_roofline``, ``_forward_backward``), and the
random-weight writer, the pyiqa wrapper and the memory and FLOP probes exist for this comparison only.
"""
import argparse
import contextlib
import os
import resource
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# Calibrator settings that put random-weight outputs in the sensitive range of the sigmoids (the
# published values are fitted to the published network; random heads give raw naturalness around
# -0.05 and raw fidelity 0-0.4, where the published calibrators saturate).
RANDOM_CALIBRATION = {'natural_scale': (-0.06, 0.03), 'fidelity_scale': (0.1, 0.1), 'adapter_k': 0.0}


def write_random_afine_weights(folder, seed=0, clip_noise=0.01):
    """Random ``afine.pth`` and ``ViT-B-32.pt`` (plain state dict) of the published shapes, via pyiqa's classes.

    The CLIP is pyiqa's ``AFINECLIP`` with a ViT-B/32 image tower and a tiny text tower (A-FINE never
    uses the text tower; it only has to exist for pyiqa's strict loading). ``finetuned_clip`` is that
    CLIP with Gaussian noise of std ``clip_noise`` added to the image tower, so it differs from the base
    file. Heads are pyiqa's ``AFINEQhead``/``AFINEDhead`` etc. with ``RANDOM_CALIBRATION`` applied.
    Returns (afine_path, clip_path).
    """
    from pyiqa.archs import afine_arch as P
    from pyiqa.archs.afineclip_model import AFINECLIP

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        clip = AFINECLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                         context_length=8, vocab_size=16, transformer_width=64, transformer_heads=1,
                         transformer_layers=1)
        base = clip.state_dict()
        tuned = {k: (v + clip_noise * torch.randn_like(v)) if k.startswith('visual.') and v.is_floating_point() else v
                 for k, v in base.items()}
        qhead, dhead = P.AFINEQhead(), P.AFINEDhead()
        scale_fr = P.AFINENLM_FR_Fit_with_limit(yita1=2, yita2=-2, yita3=0.5, yita4=0.15, yita3_upper=0.95,
                                                yita3_lower=0.05, yita4_upper=0.70, yita4_lower=0.01)
        scale_nr = P.AFINENLM_NR_Fit(yita1=2, yita2=-2, yita3=4.9592, yita4=21.5968)
        adapter = P.AFINELearnLambda(k=5)
    finally:
        torch.random.set_rng_state(gen_state)
    with torch.no_grad():
        scale_nr.yita3.fill_(RANDOM_CALIBRATION['natural_scale'][0])
        scale_nr.yita4.fill_(RANDOM_CALIBRATION['natural_scale'][1])
        scale_fr.yita3.fill_(RANDOM_CALIBRATION['fidelity_scale'][0])
        scale_fr.yita4.fill_(RANDOM_CALIBRATION['fidelity_scale'][1])
        adapter.k.fill_(RANDOM_CALIBRATION['adapter_k'])
    afine_path, clip_path = folder / 'afine.pth', folder / 'ViT-B-32.pt'
    torch.save(base, clip_path)
    torch.save({'finetuned_clip': tuned, 'natural': qhead.state_dict(), 'fidelity': dhead.state_dict(),
                'fidelity_scale': scale_fr.state_dict(), 'natural_scale': scale_nr.state_dict(),
                'adapter': adapter.state_dict()}, afine_path)
    return afine_path, clip_path


@contextlib.contextmanager
def pyiqa_clip_from_state_dict():
    """Let pyiqa's A-FINE read a CLIP saved as a plain state dict.

    pyiqa's ``afineclip_model.load`` tries ``torch.jit.load`` first and then calls ``torch.load`` on the
    same, already consumed, file handle, which fails for state-dict files; inside this context its
    ``load`` builds the model with pyiqa's own ``build_model`` from ``torch.load(path)`` instead.
    """
    from pyiqa.archs import afine_arch as P
    from pyiqa.archs.afineclip_model import build_model

    def load(name, device='cpu', jit=False):
        return build_model(torch.load(name, map_location='cpu', weights_only=True)).to(device), None

    # pyiqa's constructor also reads afine.pth six times; read each file once while building
    cache, real_load = {}, torch.load

    def load_once(f, *args, **kwargs):
        key = str(f) if isinstance(f, (str, Path)) else None
        if key is None:
            return real_load(f, *args, **kwargs)
        if key not in cache:
            cache[key] = real_load(f, *args, **kwargs)
        return cache[key]

    old = P.load
    P.load, torch.load = load, load_once
    try:
        yield
    finally:
        P.load, torch.load = old, real_load


def build_pyiqa_afine(afine_path, clip_path, model_type='afine_all_scale'):
    """pyiqa's ``AFINE`` on the given files (eval mode)."""
    from pyiqa.archs.afine_arch import AFINE as PyiqaAFINE

    with pyiqa_clip_from_state_dict():
        return PyiqaAFINE(model_type=model_type, clip_backbone=str(clip_path),
                          pretrained_model_path=str(afine_path)).eval()


def pyiqa_scores(net, dist, ref=None):
    """pyiqa's per-image loop over a batch: (B,) tensor (inputs copied: pyiqa normalises in place)."""
    out = []
    with torch.no_grad():
        for i in range(dist.shape[0]):
            r = None if ref is None else ref[i if ref.shape[0] > 1 else 0][None].clone()
            out.append(net(dist[i][None].clone(), r).flatten())
    return torch.cat(out)


def bench_images(batch, h, w, seed=0):
    """(dist, ref): smooth random references and distortions of varied kind/strength, (B, 3, h, w) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(batch, 3, max(h // 16, 2), max(w // 16, 2), generator=g)
    ref = F.interpolate(small, size=(h, w), mode='bicubic', align_corners=False).clamp(0, 1)
    ref = (ref + 0.03 * torch.randn(ref.shape, generator=g)).clamp(0, 1)
    dist = []
    for i in range(batch):
        x = ref[i:i + 1]
        s = 0.5 + i  # strength grows with i
        if i % 3 == 0:
            y = x + 0.02 * s * torch.randn(x.shape, generator=g)
        elif i % 3 == 1:
            k = int(2 * round(s) + 1)
            y = F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode='reflect'), k, 1)
        else:
            y = F.interpolate(F.interpolate(x, scale_factor=1 / (1 + s), mode='bilinear', align_corners=False),
                              size=(h, w), mode='bilinear', align_corners=False)
        dist.append(y.clamp(0, 1))
    return torch.cat(dist), ref


class PeakRSS:
    """Peak resident set size (bytes) above the level at entry, sampled by a thread every ``interval`` s."""

    def __init__(self, interval=0.002):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss():
        try:
            with open('/proc/self/statm') as f:
                return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self):
        self.base = self.rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
        self.added = self.peak - self.base


def release_freed_memory():
    """Linux/glibc: return freed heap memory and serve large blocks from fresh mappings from now on.

    glibc raises its mmap threshold after large blocks are freed and then reuses heap memory without
    the RSS growing, which hides later peaks; a fixed threshold (64 KiB) makes each large tensor a
    mapping that shows in the RSS while it lives.
    """
    try:
        import ctypes

        libc = ctypes.CDLL('libc.so.6')
        libc.malloc_trim(0)
        libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def saved_tensor_bytes(make_graph, module=None):
    """Bytes of the tensors autograd keeps for the backward pass of ``make_graph()`` (distinct storages,
    ``module``'s parameters and buffers excluded: they exist anyway)."""
    seen = {}
    skip = set()
    if module is not None:
        skip = {t.untyped_storage().data_ptr() for t in list(module.parameters()) + list(module.buffers())}

    def pack(t):
        try:
            key = t.untyped_storage().data_ptr()
            if key not in skip:
                seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except RuntimeError:
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = make_graph()
    del out
    return sum(seen.values())


def flops_per_pair(model, dist, ref):
    """Floating-point operations of one (test, reference) scoring by ``model`` (torch's FLOP counter).

    Counted with PyTorch's own linear layers (the counter does not know oneDNN's packed-linear operator,
    which does the same products).
    """
    from torch.utils.flop_counter import FlopCounterMode

    packed = getattr(getattr(model, 'clip', None), 'packed_linear', None)
    plain = packed.disabled() if packed is not None else contextlib.nullcontext()
    with plain, torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(dist[:1], ref[:1])
    return counter.get_total_flops()


def gemm_workload(tokens, width, packed=None):
    """(run, flops): the ViT's four float32 linear layers (qkv, attention output, MLP up, MLP down) with
    ``tokens`` rows, as a callable and its FLOPs; ``packed`` (a ``PackedLinear``) runs them through
    oneDNN with packed weights instead of ``F.linear``.

    Its GFLOP/s is this machine's matrix-product throughput on A-FINE's own shapes: the ViT's matrix
    products are almost all of A-FINE's operations, so images/s * FLOPs per image can not exceed the
    best of the two.
    """
    x = torch.randn(tokens, width)
    h = torch.randn(tokens, 4 * width)
    layers = [(x, torch.randn(3 * width, width)), (x, torch.randn(width, width)),
              (x, torch.randn(4 * width, width)), (h, torch.randn(width, 4 * width))]
    flops = sum(2 * a.shape[0] * w.shape[0] * w.shape[1] for a, w in layers)
    linear = packed.linear if packed is not None else F.linear

    def run():
        with torch.no_grad():
            for _ in range(4):
                for a, w in layers:
                    linear(a, w)

    return run, 4 * flops


def _best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog='iqa-plugin bench afine', description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--size', type=int, default=224, help='square image side (default 224)')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=0, help='torch threads (default: torch default)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--keep', help='write the random weights here and keep them (default: temp dir)')
    args = parser.parse_args(argv or [])
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def _build_models(args):
    """(pyiqa's A-FINE, ours), both on the same random weights (written to ``--keep`` or a temporary folder)."""
    import iqa_plugin  # noqa: F401
    from iqa_plugin.archs.afine_arch import AFINE
    from iqa_plugin.scoring import freeze

    with tempfile.TemporaryDirectory(prefix='afine_bench_') as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        t = time.perf_counter()
        afine_path, clip_path = write_random_afine_weights(folder, seed=args.seed)
        print(f'random weights (pyiqa classes) written to {folder} in {time.perf_counter() - t:.1f} s')
        theirs = build_pyiqa_afine(afine_path, clip_path, 'afine_all_scale')
        # the CLIP file only seeds the ViT that finetuned_clip overwrites entirely; the random file has no
        # published hash, so ours takes the ViT from afine.pth alone (clip_weights='none')
        ours = freeze(AFINE(model_type='afine_all_scale', weights_path=str(afine_path), clip_weights='none'))
    return theirs, ours


def _cases(theirs, ours, dist, ref, batch, size):
    """Check ours against pyiqa on identical inputs and weights (distinct, shared and cached references,
    PyTorch's own linear); returns (max |ours - pyiqa|, {case: callable timed by the bench}, FLOPs of the GEMM
    cases)."""
    from iqa_plugin.archs.afine_arch import RefCache
    from iqa_plugin.utils.onednn_linear import PackedLinear

    def run_ours(r=ref):
        with torch.no_grad():
            return ours(dist, r)['afine_all_scale']

    # correctness on identical inputs and weights
    s_theirs = pyiqa_scores(theirs, dist, ref)
    s_ours = run_ours()
    max_diff = float((s_theirs - s_ours).abs().max())
    shared = ref[:1]
    s_theirs_shared = pyiqa_scores(theirs, dist, shared)
    s_ours_shared = run_ours(shared)
    max_diff = max(max_diff, float((s_theirs_shared - s_ours_shared).abs().max()))
    print(f'scores (ours)  : {[round(v, 3) for v in s_ours.tolist()]}')
    print(f'max |ours - pyiqa| afine_all_scale: {max_diff:.2e}')

    # validation rounds score the same references again: ours keeps their encodings (ref_cache_mib)
    cold, warm = RefCache(0), RefCache(512)
    ours.ref_cache = warm
    s_cached = run_ours()  # fills the cache
    ours.ref_cache = cold
    max_diff = max(max_diff, float((s_theirs - s_cached).abs().max()))

    def run_cached():
        ours.ref_cache = warm
        try:
            return run_ours()
        finally:
            ours.ref_cache = cold

    clip = ours.clip
    packed = clip.packed_linear

    def run_ours_default_linear():  # ours with PyTorch's own F.linear (fast_cpu_linear=False)
        with packed.disabled():
            return run_ours()

    s_default = run_ours_default_linear()
    max_diff = max(max_diff, float((s_theirs - s_default).abs().max()))
    tokens = 2 * batch * ((size // clip.patch_size) ** 2 + 1)
    gemm, gemm_flops = gemm_workload(tokens, clip.width)
    gemm_packed, _ = gemm_workload(tokens, clip.width, PackedLinear())
    gemm(), gemm_packed()
    runs = {'pyiqa': lambda: pyiqa_scores(theirs, dist, ref), 'ours': run_ours,
            'pyiqa_shared': lambda: pyiqa_scores(theirs, dist, shared), 'ours_shared': lambda: run_ours(shared),
            'ours_cached': run_cached, 'ours_default_linear': run_ours_default_linear, 'gemm': gemm,
            'gemm_packed': gemm_packed}
    return max_diff, runs, gemm_flops


def _interleaved_times(runs, repeats):
    """{case: [seconds per repeat]}: every case once per repeat, interleaved, so load changes hit all alike."""
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for k, fn in runs.items():
            times[k].append(_best_time(fn, 1))
    return times


def _report_throughput(times, batch):
    """Images/s of each scoring case (best repeat), printed with the ratios; returns {case: images/s}."""
    ips = {k: batch / min(times[k]) for k in ('pyiqa', 'ours', 'pyiqa_shared', 'ours_shared', 'ours_cached',
                                              'ours_default_linear')}
    ratio = ips['ours'] / ips['pyiqa']
    ratio_shared = ips['ours_shared'] / ips['pyiqa_shared']
    ratio_cached = ips['ours_cached'] / ips['pyiqa']
    print(f"distinct pairs       : pyiqa per-image loop {ips['pyiqa']:7.2f} images/s, ours batched "
          f"{ips['ours']:7.2f} images/s   ratio {ratio:.2f}x")
    print(f"ours with PyTorch's default linear (fast_cpu_linear=False): {ips['ours_default_linear']:7.2f} images/s   "
          f"ratio {ips['ours_default_linear'] / ips['pyiqa']:.2f}x")
    print(f"one shared reference : pyiqa {ips['pyiqa_shared']:7.2f}, ours {ips['ours_shared']:7.2f} images/s   "
          f'ratio {ratio_shared:.2f}x')
    print(f"references seen before (validation rounds, ref_cache_mib): ours {ips['ours_cached']:7.2f} images/s   "
          f'ratio {ratio_cached:.2f}x against pyiqa on distinct pairs')
    return ips


def _roofline(ours, dist, ref, times, ips, gemm_flops):
    """How close each implementation is to this machine's matrix-product throughput (printed); returns
    (flops per pair, GEMM GFLOP/s with F.linear, with oneDNN packed, {pyiqa/ours: GFLOP/s}, ceiling ratio)."""
    flops = flops_per_pair(ours, dist, ref)
    peak_default = gemm_flops / min(times['gemm']) / 1e9
    peak_packed = gemm_flops / min(times['gemm_packed']) / 1e9
    peak = max(peak_default, peak_packed)
    gflops = {k: ips[k] * flops / 1e9 for k in ('pyiqa', 'ours')}
    ceiling = peak / gflops['pyiqa']
    print(f"roofline: {flops / 1e9:.2f} GFLOP per pair; pyiqa {gflops['pyiqa']:.1f} GFLOP/s, ours "
          f"{gflops['ours']:.1f} GFLOP/s; float32 GEMM throughput of this machine on the ViT's layers: "
          f"F.linear {peak_default:.1f}, oneDNN packed {peak_packed:.1f} GFLOP/s "
          f'-> highest ratio any float32 implementation of the same arithmetic can reach here: {ceiling:.2f}x')
    return flops, peak_default, peak_packed, gflops, ceiling


def _forward_backward(ours, dist, ref, batch):
    """One timed forward + backward to the test images (printed); returns (seconds, added peak RSS bytes,
    bytes saved for backward, gradient finite and non-zero, process peak RSS MiB)."""
    def fwd_bwd():
        x = dist.clone().requires_grad_(True)
        ours(x, ref)['afine_all_scale'].sum().backward()
        return x.grad

    fwd_bwd()  # warm-up
    saved = saved_tensor_bytes(lambda: ours(dist.clone().requires_grad_(True), ref)['afine_all_scale'].sum(), ours)
    release_freed_memory()
    with PeakRSS() as mem:
        t = time.perf_counter()
        grad = fwd_bwd()
        t_fb = time.perf_counter() - t
    grad_ok = bool(torch.isfinite(grad).all()) and float(grad.abs().sum()) > 0
    peak_process = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f'ours forward+backward: {batch / t_fb:7.2f} images/s, +{mem.added / 2**20:.0f} MiB peak RSS during the call '
          f'({saved / 2**20:.0f} MiB saved for backward), gradient finite and non-zero: {grad_ok}; '
          f'process peak RSS {peak_process:.0f} MiB')
    return t_fb, mem.added, saved, grad_ok, peak_process


def main(argv=None):
    args = _parse_args(argv)
    theirs, ours = _build_models(args)
    dist, ref = bench_images(args.batch, args.size, args.size, seed=args.seed)
    b = args.batch
    print(f'batch {b}, {args.size}x{args.size}, threads {torch.get_num_threads()}, repeats {args.repeats}')
    max_diff, runs, gemm_flops = _cases(theirs, ours, dist, ref, b, args.size)
    times = _interleaved_times(runs, args.repeats)
    ips = _report_throughput(times, b)
    ratio = ips['ours'] / ips['pyiqa']
    ratio_shared = ips['ours_shared'] / ips['pyiqa_shared']
    ratio_cached = ips['ours_cached'] / ips['pyiqa']
    flops, peak_default, peak_packed, gflops, ceiling = _roofline(ours, dist, ref, times, ips, gemm_flops)
    peak = max(peak_default, peak_packed)
    t_fb, added, saved, grad_ok, peak_process = _forward_backward(ours, dist, ref, b)
    return {
        'bench': 'afine', 'batch': b, 'size': args.size, 'threads': torch.get_num_threads(),
        'pyiqa_images_per_s': round(ips['pyiqa'], 3), 'ours_images_per_s': round(ips['ours'], 3),
        'ratio': round(ratio, 3),
        'pyiqa_shared_ref_images_per_s': round(ips['pyiqa_shared'], 3),
        'ours_shared_ref_images_per_s': round(ips['ours_shared'], 3), 'ratio_shared_ref': round(ratio_shared, 3),
        'ours_cached_refs_images_per_s': round(ips['ours_cached'], 3), 'ratio_cached_refs': round(ratio_cached, 3),
        'gflop_per_pair': round(flops / 1e9, 3), 'pyiqa_gflops': round(gflops['pyiqa'], 1),
        'ours_gflops': round(gflops['ours'], 1), 'gemm_peak_gflops': round(peak, 1),
        'gemm_default_linear_gflops': round(peak_default, 1), 'gemm_onednn_packed_gflops': round(peak_packed, 1),
        'ours_default_linear_images_per_s': round(ips['ours_default_linear'], 3),
        'ratio_default_linear': round(ips['ours_default_linear'] / ips['pyiqa'], 3),
        'ceiling_ratio': round(ceiling, 2),
        'max_abs_diff': max_diff, 'fwd_bwd_images_per_s': round(b / t_fb, 3),
        'fwd_bwd_added_peak_rss_mib': round(added / 2**20, 1), 'fwd_saved_for_backward_mib': round(saved / 2**20, 1),
        'process_peak_rss_mib': round(peak_process, 1),
        'grad_finite': grad_ok,
    }


if __name__ == '__main__':
    import json

    print(json.dumps(main(__import__('sys').argv[1:])))
