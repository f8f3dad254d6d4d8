"""``iqa-plugin bench train-step``: generator training step with each plugin loss against the L1-only step and VGG19 perceptual loss.

A step is BasicSR's own ``SRModel.optimize_parameters`` run by ``IQASRModel`` (built with ``build_model``
from an options dict): generator forward on the LQ batch, the losses, backward, Adam step, log reduction
(``.item()`` per term) and the EMA update (``ema_decay`` 0.999 as in the ESRGAN and SwinIR option files;
``--ema 0`` turns it off). One model per configuration, all built with the same seed:

* ``l1`` (the baseline): ``pixel_opt: L1Loss`` only;
* ``vgg19``: L1 + BasicSR's ``PerceptualLoss`` as in ESRGAN's ``train_ESRGAN_x4.yml`` (``conv5_4: 1``,
  vgg19, ``use_input_norm: true``, ``range_norm: false``, ``perceptual_weight: 1.0``, L1 criterion) with
  random VGG weights (same cost as the pretrained ones; nothing is downloaded or read from disk);
* ``milo-pseudomos``: L1 + ``MILOLoss`` (``weights: milo-pseudomos``, ``loss_weight: 0.05``, cosine
  curriculum 0-0.8: the README, guide and demo setting);
* ``relational``: L1 + ``RelationalLoss`` (``loss_weight: 0.001``, softplus);
* ``nr-lite``: L1 + ``NRIQALoss`` (``metric: nr-lite``, ``loss_weight: 0.1``: the LoRA option files);
* ``milo``: L1 + ``MILOLoss`` with the official weights (``loss_weight: 0.1``, cosine curriculum 0-0.8:
  ``options/train/train_swinir_x4_milo.yml``), only when the file is here now (``IQA_PLUGIN_WEIGHTS_DIR``
  or the cache; never downloaded); otherwise it is listed under ``skipped`` with the reason.

Generators: ``rrdb`` = BasicSR's RRDBNet x4 as in ESRGAN (64 features, 23 blocks, growth 32) and ``swinir``
= the lightweight x4 SwinIR of ``options/train/train_swinir_x4_milo.yml`` (60 channels, 4x6 blocks,
window 8). Defaults: batch 4, GT 128 on CPU; on CUDA GT 256 and batch 12 (rrdb) / 8 (swinir). ``--quick``
runs tiny networks (a smoke run for tests).

Timing: every round times each configuration once, in an order rotated by one each round, so load from
other processes hits them alike; ``--warmup`` rounds are not timed; each figure is the median over
``--rounds`` rounds (``torch.cuda.synchronize`` around each step on CUDA). ``ratio[arch][config]`` is the
median step time over the median L1 step time of the same run; ``ratio_paired`` is the median over rounds
of the same quotient within each round. ``loss_ms`` is the median time of the losses inside the step (from
the end of the generator's forward until the gradient of its output is complete: the losses' forward and
backward), and ``ratio_within`` the median over steps of step / (step - its loss time + the L1 step's loss
time): each step against itself with L1's loss cost, which load changes between steps cannot skew (the
figure to trust on a busy machine; ``goal_within`` judges it). On CPU, ``cpu_ms`` and ``ratio_cpu`` are the
same for the CPU time of this process (``time.process_time``), which leaves out the time spent waiting for a
core held by another process (with one torch thread; with more, OpenMP threads' waits for each other count).
On CUDA, ``step_peak_mib[arch][config]`` is the peak memory
allocated during the step above what was allocated when it started (activations, gradients, loss-network
workspaces; the resident parameters and optimizer states of the models are not in it). The goal
(``goal``): every offline plugin loss at most 1.10x the L1 step and below the VGG19 step, on every network.
"""
import argparse
import contextlib
import copy
import math
import os
import statistics
import time
import warnings

import torch

NETWORKS = {
    'rrdb': {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 23, 'num_grow_ch': 32},
    'swinir': {'type': 'SwinIR', 'upscale': 4, 'in_chans': 3, 'img_size': 32, 'window_size': 8, 'img_range': 1.0,
               'depths': [6, 6, 6, 6], 'embed_dim': 60, 'num_heads': [6, 6, 6, 6], 'mlp_ratio': 2,
               'upsampler': 'pixelshuffledirect', 'resi_connection': '1conv'},
}
TINY_NETWORKS = {
    'rrdb': {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 1, 'num_grow_ch': 4},
    'swinir': {'type': 'SwinIR', 'upscale': 4, 'in_chans': 3, 'img_size': 8, 'window_size': 4, 'img_range': 1.0,
               'depths': [1], 'embed_dim': 12, 'num_heads': [2], 'mlp_ratio': 2, 'upsampler': 'pixelshuffledirect',
               'resi_connection': '1conv'},
}
# defaults per device: (batch per arch, GT side)
DEFAULTS = {'cpu': ({'rrdb': 4, 'swinir': 4}, 128), 'cuda': ({'rrdb': 12, 'swinir': 8}, 256)}

L1 = {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}
# ESRGAN's perceptual_opt (BasicSR options/train/ESRGAN/train_ESRGAN_x4.yml)
VGG19_ESRGAN = {'type': 'PerceptualLoss', 'layer_weights': {'conv5_4': 1}, 'vgg_type': 'vgg19', 'use_input_norm': True,
                'range_norm': False, 'perceptual_weight': 1.0, 'style_weight': 0, 'criterion': 'l1'}
CURRICULUM = {'schedule': 'cosine', 'start': 0.0, 'end': 0.8}
# name -> (train options added to pixel_opt: L1, offline?)
CONFIGS = {
    'l1': ({}, True),
    'vgg19': ({'perceptual_opt': VGG19_ESRGAN}, True),
    'milo-pseudomos': ({'iqa_opt': {'milo': {'type': 'MILOLoss', 'loss_weight': 0.05, 'weights': 'milo-pseudomos',
                                             'curriculum': CURRICULUM}}}, True),
    'relational': ({'iqa_opt': {'relational': {'type': 'RelationalLoss', 'loss_weight': 0.001, 'mode': 'softplus'}}},
                   True),
    'nr-lite': ({'iqa_opt': {'nr': {'type': 'NRIQALoss', 'metric': 'nr-lite', 'loss_weight': 0.1}}}, True),
    'milo': ({'iqa_opt': {'milo': {'type': 'MILOLoss', 'loss_weight': 0.1, 'weights': 'milo', 'curriculum': CURRICULUM}}},
             False),
}
PLUGIN_LOSSES = ('milo-pseudomos', 'relational', 'nr-lite', 'milo')
GOAL_MAX_RATIO = 1.10
TOTAL_ITER = 1000  # steps run at current_iter = TOTAL_ITER // 2: curricula at mid-training


@contextlib.contextmanager
def offline_vgg():
    """While active, BasicSR's ``VGGFeatureExtractor`` builds a randomly initialised torchvision VGG instead
    of loading ``experiments/pretrained_models/vgg19-dcbb9e9d.pth`` or downloading torchvision's weights.
    Only the convolutional ``features`` are built (torchvision's initialisation), which is all it keeps."""
    from basicsr.archs import vgg_arch
    from torchvision.models import vgg as tv_vgg

    class _RandomVGG:
        def __getattr__(self, vgg_type):
            cfg = {'vgg11': 'A', 'vgg13': 'B', 'vgg16': 'D', 'vgg19': 'E'}[vgg_type.replace('_bn', '')]

            def build(pretrained=False, **_):
                features = tv_vgg.make_layers(tv_vgg.cfgs[cfg], batch_norm=vgg_type.endswith('_bn'))
                for m in features.modules():
                    if isinstance(m, torch.nn.Conv2d):
                        torch.nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                        torch.nn.init.zeros_(m.bias)
                return _Features(features)

            return build

    class _Features(torch.nn.Module):
        def __init__(self, features):
            super().__init__()
            self.features = features

    saved = vgg_arch.vgg, vgg_arch.VGG_PRETRAIN_PATH
    vgg_arch.vgg, vgg_arch.VGG_PRETRAIN_PATH = _RandomVGG(), os.path.join(os.devnull, 'no-vgg-file.pth')
    try:
        yield
    finally:
        vgg_arch.vgg, vgg_arch.VGG_PRETRAIN_PATH = saved


def official_milo_status():
    """(available, reason): the official MILO file is here now (never downloaded)."""
    from iqa_plugin import weights

    path = weights.locate('milo')
    if path is None:
        searched = ', '.join(str(p.parent) for p in weights.candidate_paths('milo'))
        return False, (f'official MILO weights ({weights.get_entry("milo").filename}) not found in {searched}; '
                       'set IQA_PLUGIN_WEIGHTS_DIR to their folder (e.g. ../shared/weights/milo)')
    return True, str(path)


def model_options(network, config, device, ema):
    """Options dict of an ``IQASRModel`` for one configuration."""
    extra, _ = CONFIGS[config]
    train = {'ema_decay': ema, 'optim_g': {'type': 'Adam', 'lr': 2e-4, 'weight_decay': 0, 'betas': [0.9, 0.99]},
             'scheduler': {'type': 'MultiStepLR', 'milestones': [10 * TOTAL_ITER], 'gamma': 0.5},
             'total_iter': TOTAL_ITER, 'warmup_iter': -1, 'pixel_opt': dict(L1), **copy.deepcopy(extra)}
    return {'name': f'train_step_bench_{config}', 'model_type': 'IQASRModel', 'scale': 4,
            'num_gpu': 1 if device.type == 'cuda' else 0, 'manual_seed': 0, 'is_train': True, 'dist': False,
            'rank': 0, 'world_size': 1, 'network_g': copy.deepcopy(network), 'train': train,
            'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None}}


def build_models(network, configs, device, ema):
    """config -> IQASRModel, each generator initialised from the same seed."""
    from basicsr.models import build_model

    models = {}
    with warnings.catch_warnings(), offline_vgg():
        warnings.simplefilter('ignore')
        for c in configs:
            torch.manual_seed(0)
            models[c] = build_model(model_options(network, c, device, ema))
    return models


def make_batch(batch, size, scale, device, seed=0):
    """Smooth random GT (B, 3, S, S) in [0, 1] and its bicubic LQ, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.nn.functional.avg_pool2d(torch.rand(batch, 3, size, size, generator=g), 5, stride=1, padding=2,
                                        count_include_pad=False)
    lq = torch.nn.functional.interpolate(gt, scale_factor=1 / scale, mode='bicubic', align_corners=False).clamp(0, 1)
    return {'lq': lq.to(device), 'gt': gt.to(device)}


def mark_loss_time(net, cuda):
    """Hooks on the generator: returns a dict whose ``'loss'`` is, after each training step, the seconds from
    the end of the generator's forward to the moment the gradient of its output is complete, i.e. the
    losses' forward and backward (everything between the generator's forward and its backward)."""
    marks = {}

    def now():
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_grad(grad):
        marks['loss'] = now() - marks['fwd_end']

    def on_forward(module, inputs, output):
        if torch.is_grad_enabled() and output.requires_grad:
            marks['fwd_end'] = now()
            output.register_hook(on_grad)

    net.register_forward_hook(on_forward)
    return marks


def time_configs(models, data, device, rounds, warmup):
    """Rotating-order rounds: config -> seconds per timed step, config -> seconds of its losses (forward and
    backward, ``mark_loss_time``) in those steps, config -> CPU seconds of this process per step, and
    config -> step peak MiB on CUDA."""
    names = list(models)
    cuda = device.type == 'cuda'
    times = {c: [] for c in names}
    cpu_times = {c: [] for c in names}
    loss_times = {c: [] for c in names}
    peaks = {c: [] for c in names}
    marks = {c: mark_loss_time(models[c].net_g, cuda) for c in names}
    for c in names:
        models[c].feed_data(data)
    for r in range(warmup + rounds):
        k = r % len(names)
        for c in names[k:] + names[:k]:
            model = models[c]
            if cuda:
                torch.cuda.synchronize(device)
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0, c0 = time.perf_counter(), time.process_time()
            model.optimize_parameters(TOTAL_ITER // 2)
            if cuda:
                torch.cuda.synchronize(device)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if r >= warmup:
                times[c].append(dt)
                cpu_times[c].append(dc)
                loss_times[c].append(marks[c].pop('loss'))
                if cuda:
                    peaks[c].append((torch.cuda.max_memory_allocated(device) - base) / 2**20)
    return times, loss_times, cpu_times, (peaks if cuda else {})


def run_arch(arch, args, device, configs):
    network = copy.deepcopy((TINY_NETWORKS if args.quick else NETWORKS)[arch])
    batch = args.batch or DEFAULTS[device.type][0][arch]
    size = args.size or DEFAULTS[device.type][1]
    if arch == 'swinir':
        network['img_size'] = size // 4
    models = build_models(network, configs, device, args.ema)
    params = sum(p.numel() for p in models['l1'].net_g.parameters()) / 1e6
    data = make_batch(batch, size, 4, device)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # out-of-range clamp notices of an untrained generator
        times, loss_times, cpu_times, peaks = time_configs(models, data, device, args.rounds, args.warmup)
    ms = {c: 1000.0 * statistics.median(v) for c, v in times.items()}
    ratio = {c: ms[c] / ms['l1'] for c in ms}
    paired = {c: statistics.median(t / b for t, b in zip(times[c], times['l1'])) for c in ms}
    loss_ms = {c: 1000.0 * statistics.median(v) for c, v in loss_times.items()}
    # each step against itself with the L1 step's loss time in place of its own: load changes between
    # steps cancel, since the rest of the step (generator forward, backward, Adam, EMA) is measured with it
    l1_loss = statistics.median(loss_times['l1'])
    within = {c: statistics.median(t / (t - lt + l1_loss) for t, lt in zip(times[c], loss_times[c])) for c in ms}
    # CPU seconds of this process: time spent waiting for a core held by another process is not in it
    cpu_ms = {c: 1000.0 * statistics.median(v) for c, v in cpu_times.items()} if device.type == 'cpu' else {}
    ratio_cpu = {c: cpu_ms[c] / cpu_ms['l1'] for c in cpu_ms}
    peak = {c: max(v) for c, v in peaks.items()}
    print(f'{arch}: {network["type"]} x4 ({params:.2f} M params), batch {batch}, GT {size}x{size}, '
          f'LQ {size // 4}x{size // 4}, median of {args.rounds} rounds (warm-up {args.warmup})')
    head = (f"  {'config':<16}{'ms/step':>10}{'/ L1':>8}{'paired':>8}{'loss ms':>10}{'within':>8}"
            + (f"{'CPU ms':>10}{'/ L1':>8}" if cpu_ms else '') + (f"{'peak MiB':>10}" if peak else ''))
    print(head)
    for c in ms:
        line = f'  {c:<16}{ms[c]:>10.1f}{ratio[c]:>8.3f}{paired[c]:>8.3f}{loss_ms[c]:>10.1f}{within[c]:>8.3f}'
        if cpu_ms:
            line += f'{cpu_ms[c]:>10.1f}{ratio_cpu[c]:>8.3f}'
        if peak:
            line += f'{peak[c]:>10.0f}'
        print(line)
    del models
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return {'network': network, 'params_m': round(params, 3), 'batch': batch, 'size': size,
            'ms': {c: round(v, 2) for c, v in ms.items()}, 'ratio': {c: round(v, 4) for c, v in ratio.items()},
            'ratio_paired': {c: round(v, 4) for c, v in paired.items()},
            'loss_ms': {c: round(v, 2) for c, v in loss_ms.items()},
            'ratio_within': {c: round(v, 4) for c, v in within.items()},
            'cpu_ms': {c: round(v, 2) for c, v in cpu_ms.items()},
            'ratio_cpu': {c: round(v, 4) for c, v in ratio_cpu.items()},
            'step_peak_mib': {c: round(v, 1) for c, v in peak.items()}}


FIGURES = ('ms', 'ratio', 'ratio_paired', 'loss_ms', 'ratio_within', 'cpu_ms', 'ratio_cpu', 'step_peak_mib')


def goal(per_arch, key='ratio'):
    """Every offline plugin loss <= GOAL_MAX_RATIO x L1 and below VGG19, on every network run (by ``key``)."""
    failures = []
    for arch, res in per_arch.items():
        r = res[key]
        for c in PLUGIN_LOSSES:
            if c not in r or not CONFIGS[c][1]:
                continue
            if r[c] > GOAL_MAX_RATIO:
                failures.append(f'{arch}/{c} {r[c]:.3f} > {GOAL_MAX_RATIO}')
            if 'vgg19' in r and r[c] >= r['vgg19']:
                failures.append(f'{arch}/{c} {r[c]:.3f} >= vgg19 {r["vgg19"]:.3f}')
    return {'max_ratio': GOAL_MAX_RATIO, 'met': not failures, 'failures': failures}


def main(argv=None):
    p = argparse.ArgumentParser(prog='iqa-plugin bench train-step', description=__doc__.split('\n')[0])
    p.add_argument('--arch', choices=['rrdb', 'swinir', 'both'], default='both',
                   help='generator(s): rrdb (ESRGAN RRDBNet, 23 blocks), swinir (lightweight x4) or both (default)')
    p.add_argument('--batch', type=int, default=None,
                   help='batch size (default: 4 on CPU; on CUDA 12 for rrdb, 8 for swinir)')
    p.add_argument('--size', type=int, default=None, help='GT side, a multiple of 4 (default: 128 on CPU, 256 on CUDA)')
    p.add_argument('--rounds', type=int, default=None, help='timed rounds (default: 3 on CPU, 10 on CUDA)')
    p.add_argument('--warmup', type=int, default=None, help='untimed rounds first (default: 1 on CPU, 2 on CUDA)')
    p.add_argument('--configs', default=','.join(CONFIGS),
                   help=f"comma-separated subset of {', '.join(CONFIGS)} (l1 is always run: the baseline)")
    p.add_argument('--ema', type=float, default=0.999, help='ema_decay of the models (default 0.999; 0: no EMA)')
    p.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: leave as is)')
    p.add_argument('--quick', action='store_true',
                   help='tiny networks, batch 2, GT 32, 1 round after 1 warm-up (a smoke run)')
    args = p.parse_args(argv)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda: torch sees no CUDA device')
    if args.quick:
        args.batch, args.size = args.batch or 2, args.size or 32
        args.rounds = 1 if args.rounds is None else args.rounds
        args.warmup = 1 if args.warmup is None else args.warmup
    args.rounds = (10 if device.type == 'cuda' else 3) if args.rounds is None else args.rounds
    args.warmup = (2 if device.type == 'cuda' else 1) if args.warmup is None else args.warmup
    if args.rounds < 1 or args.warmup < 0 or (args.batch is not None and args.batch < 1):
        p.error('--rounds and --batch must be >= 1, --warmup >= 0')
    if args.size is not None and (args.size % 4 or args.size < 32):
        p.error(f'--size {args.size} must be a multiple of 4 and >= 32')
    requested = [c.strip() for c in args.configs.split(',') if c.strip()]
    unknown = sorted(set(requested) - set(CONFIGS))
    if unknown:
        p.error(f"unknown config(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    configs = ['l1'] + [c for c in CONFIGS if c in requested and c != 'l1']
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault('IQA_PLUGIN_OFFLINE', '1')  # nothing is downloaded
    import iqa_plugin

    iqa_plugin.register()
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # as BasicSR's training script sets it
    skipped = {}
    if 'milo' in configs:
        ok, why = official_milo_status()
        if not ok:
            configs.remove('milo')
            skipped['milo'] = why
            print(f'skipped milo (official weights): {why}')
        else:
            print(f'official MILO weights: {why}')
    archs = ['rrdb', 'swinir'] if args.arch == 'both' else [args.arch]
    print(f'generator training step (IQASRModel.optimize_parameters, Adam, ema_decay {args.ema}), device {device}, '
          f'threads {torch.get_num_threads()}, configs {", ".join(configs)}')
    per_arch = {a: run_arch(a, args, device, configs) for a in archs}
    result = {'bench': 'train-step', 'device': str(device), 'threads': torch.get_num_threads(),
              'rounds': args.rounds, 'warmup': args.warmup, 'ema_decay': args.ema, 'quick': args.quick,
              'configs': configs, 'skipped': skipped,
              'ratio': {a: r['ratio'] for a, r in per_arch.items()},
              'ratio_paired': {a: r['ratio_paired'] for a, r in per_arch.items()},
              'ms': {a: r['ms'] for a, r in per_arch.items()},
              'loss_ms': {a: r['loss_ms'] for a, r in per_arch.items()},
              'ratio_within': {a: r['ratio_within'] for a, r in per_arch.items()}}
    if device.type == 'cpu':
        result['cpu_ms'] = {a: r['cpu_ms'] for a, r in per_arch.items()}
        result['ratio_cpu'] = {a: r['ratio_cpu'] for a, r in per_arch.items()}
    if device.type == 'cuda':
        result['step_peak_mib'] = {a: r['step_peak_mib'] for a, r in per_arch.items()}
        result['gpu'] = torch.cuda.get_device_name(device)
    result['per_arch'] = {a: {k: v for k, v in r.items() if k not in FIGURES} for a, r in per_arch.items()}
    result['goal'] = goal(per_arch)
    result['goal']['applies'] = not args.quick  # tiny networks: the losses' share is not a real step's
    result['goal_within'] = goal(per_arch, 'ratio_within')
    bad = [f'{a}/{c}' for a, r in result['ratio'].items() for c, v in r.items() if not (math.isfinite(v) and v > 0)]
    if bad:
        raise RuntimeError(f'non-finite or non-positive ratio(s): {", ".join(bad)}')
    for key, g in (('ratio', result['goal']), ('ratio_within', result['goal_within'])):
        print(f"goal by {key} (offline plugin losses <= {GOAL_MAX_RATIO}x L1 and below vgg19): "
              f"{'met' if g['met'] else 'NOT met: ' + '; '.join(g['failures'])}"
              f"{'' if result['goal']['applies'] else ' (--quick: tiny networks, not the goal setting)'}")
    return result


if __name__ == '__main__':
    import json

    print(json.dumps(main()))
