"""``iqa-plugin bench lora``: full fine-tuning against LoRA under an NR-IQA loss, λ_Q sweep, same start.

Why one file over 450 lines: a bench is one self-contained measurement (data, pretraining, the two fine-tuning arms,
the held-out figures, the report) that ``iqa-plugin bench lora`` runs as a unit; its parts have no other user.

One small pretrained SR net (RRDBNet x4, 32 features, 2 blocks by default), trained first with L1 on bicubic
x4 pairs of training patches and cached in ``--work`` (a repeat with the same settings loads it), is fine-tuned
through ``NRIQAFinetuneModel`` (the model class users run, built from its option dict) with
``L1(out, GT) - λ_Q · nr-lite(out)`` (``pixel_opt`` L1 + ``iqa_opt`` NRIQALoss on ``nr-lite``) for every λ_Q of
``--lambdas``, once as full fine-tuning (``lora.enabled: false``, baseline) and once with LoRA (ours): same
start, steps, batches (one seeded order), seed, optimiser and learning rate (``--lora-lr-mult`` scales LoRA's).
λ_Q = 0 (in the default sweep) is the L1-only control: what fine-tuning alone does to the pretrained net.

Held-out images (not in the training patches): bicubic x4 LQ of centre crops. Reported per run, each as the
change from the pretrained net's output on the same images:

* ``nr_lite_gain``: nr-lite score gain (the optimised scorer, higher better);
* ``niqe_gain``: niqe-fitted decrease (not optimised, lower is better, so a positive gain is better);
* ``milo_gain``: milo-pseudomos decrease against the GT (not optimised, full-reference, lower better);
* ``psnr_change``: PSNR (RGB, [0, 1], border 4) change against the GT;
* ``hf_rel``: high-frequency artefact measure, the FFT energy of (output - pretrained output) at radial
  frequencies above ``--hf-cut`` of Nyquist (default 1/4, i.e. above the x4 LQ's own Nyquist), Hann-windowed,
  relative to the pretrained output's own energy in that band; ``hf_share``: the same energy relative to the
  whole energy of the difference (how much of the change is high-frequency);
* ``trainable``: trainable parameters; ``step_s``: median seconds per ``optimize_parameters`` step;
* memory: on CUDA ``torch.cuda.max_memory_allocated`` over the steps minus what was allocated before;
  on the CPU the bytes of one step's training state, counted: tensors saved for backward (autograd
  saved-tensor hook, each storage once) + gradients + optimiser state (the CPU allocator keeps no peak).

The returned dict's ``ratio`` is LoRA / full fine-tuning ``hf_rel`` at ``--lambda`` (below 1: LoRA adds
less high-frequency energy); ``per_lambda`` holds every run's figures.
"""
import argparse
import hashlib
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHARED = Path(__file__).resolve().parents[3].parent / 'shared' / 'data' / 'train'
SKIMAGE_TRAIN = ('astronaut', 'coffee', 'rocket')
SKIMAGE_HELD_OUT = ('chelsea',)
IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')


# ---------------------------------------------------------------------------------------------- data
def load_images(source):
    """List of (3, H, W) float tensors in [0, 1] from a folder, or ``skimage:name,name`` (bundled images)."""
    import numpy as np

    if source.startswith('skimage:'):
        from skimage import data as skdata
        arrays = [getattr(skdata, n)() for n in source[len('skimage:'):].split(',')]
    else:
        from PIL import Image
        folder = Path(source)
        if not folder.is_dir():
            raise SystemExit(f'error: image folder {source} does not exist')
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise SystemExit(f'error: no images ({", ".join(IMAGE_EXTS)}) in {source}')
        arrays = [np.asarray(Image.open(f).convert('RGB')) for f in files]
    out = []
    for a in arrays:
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        out.append(torch.from_numpy(np.array(a[..., :3], dtype=np.uint8)).permute(2, 0, 1).float() / 255.0)
    return out


def bicubic_down(hr, scale):
    """(B, 3, H, W) -> (B, 3, H/scale, W/scale), antialiased bicubic, clamped to [0, 1]."""
    return F.interpolate(hr, scale_factor=1 / scale, mode='bicubic', align_corners=False,
                         antialias=True).clamp(0, 1)


def random_patches(images, n, size, seed):
    """(n, 3, size, size) random crops (seeded) from images at least ``size`` on each side."""
    g = torch.Generator().manual_seed(seed)
    usable = [im for im in images if min(im.shape[1:]) >= size]
    if not usable:
        raise SystemExit(f'error: no training image has both sides >= --patch {size}')
    out = []
    for _ in range(n):
        im = usable[int(torch.randint(len(usable), (1,), generator=g))]
        y = int(torch.randint(im.shape[1] - size + 1, (1,), generator=g))
        x = int(torch.randint(im.shape[2] - size + 1, (1,), generator=g))
        out.append(im[:, y:y + size, x:x + size])
    return torch.stack(out)


def centre_crops(images, n, size):
    """(k, 3, size, size) centre crops of the first n images with both sides >= size."""
    crops = [im[:, (im.shape[1] - size) // 2:(im.shape[1] - size) // 2 + size,
                (im.shape[2] - size) // 2:(im.shape[2] - size) // 2 + size]
             for im in images if min(im.shape[1:]) >= size][:n]
    if not crops:
        raise SystemExit(f'error: no held-out image has both sides >= --eval-size {size}')
    return torch.stack(crops)


# ---------------------------------------------------------------------------------------------- measures
def psnr(x, y, border):
    """Mean over the batch of PSNR (dB) between (B, 3, H, W) in [0, 1], ``border`` pixels cropped."""
    if border:
        x, y = x[..., border:-border, border:-border], y[..., border:-border, border:-border]
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
    return float((10 * torch.log10(1 / mse)).mean())


def high_frequency(diff, ref, cut):
    """(hf_rel, hf_share) of ``diff`` (B, 3, H, W) above ``cut`` x Nyquist (radial), Hann-windowed.

    hf_rel = energy of diff above the cut / energy of ``ref`` above the cut; hf_share = energy of diff
    above the cut / all energy of diff. Sums over the batch and channels.
    """
    h, w = diff.shape[-2:]
    win = torch.outer(torch.hann_window(h, periodic=False, dtype=torch.float64),
                      torch.hann_window(w, periodic=False, dtype=torch.float64))
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    high = torch.sqrt(fy ** 2 + fx ** 2) > cut * 0.5  # Nyquist = 0.5 cycles per pixel

    def spectrum(x):
        x = x.double()
        x = (x - x.mean(dim=(-2, -1), keepdim=True)) * win
        return torch.fft.fft2(x).abs() ** 2

    d, r = spectrum(diff), spectrum(ref)
    d_high = float(d[..., high].sum())
    return d_high / max(float(r[..., high].sum()), 1e-30), d_high / max(float(d.sum()), 1e-30)


def evaluate(net, lq, gt, pre_out, scorers, args, device):
    """Figures of ``net`` on the held-out (lq, gt); gains relative to ``pre_out`` (the pretrained output)."""
    net.eval()
    with torch.no_grad():
        out = torch.cat([net(lq[i:i + 2].to(device)).clamp(0, 1).cpu() for i in range(0, len(lq), 2)])
    res = {'output': out}
    res.update(score(out, gt, scorers, device))
    res['psnr'] = psnr(out, gt, args.scale)
    if pre_out is not None:
        res['hf_rel'], res['hf_share'] = high_frequency(out - pre_out, pre_out, args.hf_cut)
    return res


def score(out, gt, scorers, device):
    """Mean nr-lite, niqe-fitted and milo-pseudomos (against ``gt``) of (B, 3, H, W) ``out``."""
    res = {}
    with torch.no_grad():
        for key, (name, metric) in scorers.items():
            vals = []
            for i in range(0, len(out), 2):
                o = out[i:i + 2].to(device)
                r = gt[i:i + 2].to(device) if metric.kind == 'fr' else None
                vals.append(metric(o, r)[metric.output_names[0]].float().cpu())
            res[key] = float(torch.cat(vals).mean())
    return res


class SavedBytes:
    """Bytes of the tensors autograd saves for backward inside the context (each storage counted once)."""

    def __init__(self):
        self.seen, self.bytes = set(), 0

    def pack(self, t):
        try:
            key = (t.untyped_storage().data_ptr(), t.device)
            size = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):
            key, size = id(t), t.numel() * t.element_size()
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += size
        return t

    def __enter__(self):
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# ---------------------------------------------------------------------------------------------- nets
def network_opt(args):
    return {'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'scale': args.scale, 'num_feat': args.num_feat,
            'num_block': args.num_block, 'num_grow_ch': args.num_grow_ch}


def pretrained_net(args, patches, device, log):
    """Path of the L1-pretrained net_g (``{params: ...}``), trained once per settings and cached in --work."""
    from iqa_plugin.models import lora

    key = json.dumps([network_opt(args), args.pretrain_steps, args.pretrain_lr, args.batch, args.patch, args.seed,
                      args.train_data, len(patches), 1], sort_keys=True)
    path = Path(args.work) / f'pretrained_{hashlib.sha256(key.encode()).hexdigest()[:12]}.pth'
    if path.is_file():
        log(f'pretrained net: cached {path}')
        return path
    torch.manual_seed(args.seed)
    net = lora.build_network_cpu(network_opt(args)).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=args.pretrain_lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.pretrain_steps, eta_min=args.pretrain_lr / 20)
    g = torch.Generator().manual_seed(args.seed + 1)
    t0 = time.perf_counter()
    for step in range(args.pretrain_steps):
        hr = patches[torch.randint(len(patches), (args.batch,), generator=g)].to(device)
        loss = F.l1_loss(net(bicubic_down(hr, args.scale)), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    log(f'pretrained net: {args.pretrain_steps} L1 steps in {time.perf_counter() - t0:.1f} s '
        f'(last batch L1 {loss.item():.4f}) -> {path}')
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.tmp')
    torch.save({'params': {k: v.cpu() for k, v in net.state_dict().items()}}, tmp)
    os.replace(tmp, path)
    return path


def model_options(args, base, lam, use_lora, work, device):
    """The option dict of one NRIQAFinetuneModel run (what a user's YAML would hold, minus data/val)."""
    run = Path(work) / f"run_{'lora' if use_lora else 'full'}_{lam:g}"
    for sub in ('models', 'states'):
        (run / sub).mkdir(parents=True, exist_ok=True)
    lr = args.lr * (args.lora_lr_mult if use_lora else 1.0)
    train = {'ema_decay': 0, 'optim_g': {'type': 'Adam', 'lr': lr, 'weight_decay': 0, 'betas': [0.9, 0.99]},
             'scheduler': {'type': 'MultiStepLR', 'milestones': [10 ** 9], 'gamma': 0.5},
             'total_iter': args.steps, 'warmup_iter': -1,
             'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'},
             'iqa_opt': {'nr': {'type': 'NRIQALoss', 'metric': args.scorer, 'loss_weight': lam}},
             'lora': {'enabled': use_lora, 'rank': args.rank, 'alpha': args.alpha, 'dropout': 0.0, 'preset': 'rrdb'}}
    return {'name': 'lora_bench', 'scale': args.scale, 'num_gpu': 1 if device.type == 'cuda' else 0,
            'manual_seed': args.seed, 'is_train': True, 'dist': False, 'network_g': network_opt(args),
            'train': train, 'path': {'pretrain_network_g': str(base), 'param_key_g': 'params', 'strict_load_g': True,
                                     'resume_state': None, 'models': str(run / 'models'),
                                     'training_states': str(run / 'states')}}


def finetune(args, base, lam, use_lora, patches, device, work):
    """Train one NRIQAFinetuneModel run; returns (net_g, figures of the run)."""
    from iqa_plugin.models.nriqa_finetune_model import NRIQAFinetuneModel

    torch.manual_seed(args.seed)
    model = NRIQAFinetuneModel(model_options(args, base, lam, use_lora, work, device))
    net = model.net_g
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    g = torch.Generator().manual_seed(args.seed + 2)  # the same batches for every run
    times = []
    mem = None
    cuda = device.type == 'cuda'
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    net.train()
    for step in range(1, args.steps + 1):
        hr = patches[torch.randint(len(patches), (args.batch,), generator=g)]
        model.feed_data({'lq': bicubic_down(hr, args.scale), 'gt': hr})
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if step == 2 and not cuda:  # count one step's training state (step 1 has no optimiser state yet)
            with SavedBytes() as saved:
                model.optimize_parameters(step)
            params = [p for p in net.parameters() if p.requires_grad]
            grads = sum(p.numel() * p.element_size() for p in params)
            state = sum(v.numel() * v.element_size() for s in model.optimizer_g.state.values()
                        for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
            mem = saved.bytes + grads + state
        else:
            model.optimize_parameters(step)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if cuda:
        mem = torch.cuda.max_memory_allocated() - before
    log = model.get_current_log()
    return net, {'trainable': trainable, 'step_s': statistics.median(times[1:] if len(times) > 1 else times),
                 'mem_bytes': mem, 'last_l_nr': float(log.get('l_nr', float('nan')))}


# ---------------------------------------------------------------------------------------------- figures
def write_plot(path, rows, lambdas):
    """NR gain (nr-lite and niqe-fitted) against PSNR loss per λ_Q, full FT vs LoRA (matplotlib, Agg)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.2))
    panels = [('nr_lite_gain', 'nr-lite gain (optimised, higher better)'),
              ('niqe_gain', 'niqe-fitted decrease (not optimised)'),
              ('hf_rel', 'HF artefact energy (rel. to pretrained HF)')]
    for ax, (key, title) in zip(axes, panels):
        for mode, colour, marker in (('full', 'tab:red', 'o'), ('lora', 'tab:blue', 's')):
            xs = [-rows[(mode, lam)]['psnr_change'] for lam in lambdas]
            ys = [rows[(mode, lam)][key] for lam in lambdas]
            ax.plot(xs, ys, marker=marker, color=colour, label='full FT' if mode == 'full' else 'LoRA')
            for x, y, lam in zip(xs, ys, lambdas):
                ax.annotate(f'λ={lam:g}', (x, y), textcoords='offset points', xytext=(4, 4), fontsize=8)
        ax.set_xlabel('PSNR loss vs pretrained (dB)')
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if key == 'hf_rel':
            ax.set_yscale('log')
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_crops(path, panels, size, zoom):
    """Side by side: (label, (3, H, W) image) crops of ``size`` at the top-left quarter centre, zoomed."""
    from PIL import Image, ImageDraw

    tiles = []
    for label, img in panels:
        h, w = img.shape[-2:]
        y, x = max((h - size) // 2, 0), max((w - size) // 2, 0)
        crop = img[:, y:y + size, x:x + size]
        arr = (crop.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype('uint8')
        tile = Image.fromarray(arr).resize((crop.shape[2] * zoom, crop.shape[1] * zoom), Image.NEAREST)
        canvas = Image.new('RGB', (tile.width, tile.height + 16), 'white')
        canvas.paste(tile, (0, 16))
        ImageDraw.Draw(canvas).text((3, 2), label, fill='black')
        tiles.append(canvas)
    out = Image.new('RGB', (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), tiles[0].height), 'white')
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + 4
    out.save(path)


# ---------------------------------------------------------------------------------------------- main
def _shared_folder(name):
    """../shared/data/train/NAME when present and not hidden by ``IQA_PLUGIN_NO_SHARED=1`` (the tests' switch
    for a clone without ../shared), else None."""
    if os.environ.get('IQA_PLUGIN_NO_SHARED', '') not in ('', '0') or not (SHARED / name).is_dir():
        return None
    return str(SHARED / name)


def parse(argv):
    p = argparse.ArgumentParser(prog='iqa-plugin bench lora', description=__doc__.split('\n')[0])
    default_train = _shared_folder('CBSD68') or 'skimage:' + ','.join(SKIMAGE_TRAIN)
    default_eval = _shared_folder('Kodak24') or 'skimage:' + ','.join(SKIMAGE_HELD_OUT)
    p.add_argument('--train-data', default=default_train,
                   help='training images: folder or skimage:NAME,... (default ../shared/data/train/CBSD68, else '
                        'scikit-image bundled images)')
    p.add_argument('--eval-data', default=default_eval,
                   help='held-out images (default ../shared/data/train/Kodak24, else skimage:chelsea)')
    p.add_argument('--lambdas', default='0,0.01,0.1,1.0',
                   help='λ_Q sweep, comma-separated (default 0,0.01,0.1,1.0; 0 = the L1-only control)')
    p.add_argument('--lambda', dest='lam', type=float, default=0.1,
                   help='the λ_Q of the headline comparison and of the ratio (default 0.1, the shipped option files\' value); '
                        'must be in --lambdas')
    p.add_argument('--scorer', default='nr-lite', help='optimised NR metric (default nr-lite)')
    p.add_argument('--steps', type=int, default=60, help='fine-tuning steps per run (default 60)')
    p.add_argument('--lr', type=float, default=5e-4, help='Adam learning rate of every run (default 5e-4)')
    p.add_argument('--lora-lr-mult', type=float, default=1.0,
                   help='LoRA learning rate = --lr x this (default 1: the same optimiser for both)')
    p.add_argument('--rank', type=int, default=4, help='LoRA rank (default 4: 1/4 of the 16 growth channels, '
                   'the ratio of the shipped rank 8 on 32)')
    p.add_argument('--alpha', type=float, default=4, help='LoRA alpha (default 4: scale alpha/rank = 1)')
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--patch', type=int, default=64, help='GT patch side (default 64)')
    p.add_argument('--patches', type=int, default=512, help='training patch pool size (default 512)')
    p.add_argument('--pretrain-steps', type=int, default=400, help='L1 pretraining steps (default 400, cached)')
    p.add_argument('--pretrain-lr', type=float, default=1e-3)
    p.add_argument('--eval-images', type=int, default=8, help='held-out images (default 8)')
    p.add_argument('--eval-size', type=int, default=128, help='held-out GT crop side (default 128; niqe needs 96)')
    p.add_argument('--hf-cut', type=float, default=0.25, help='HF cut-off as a fraction of Nyquist (default 0.25)')
    p.add_argument('--scale', type=int, default=4)
    p.add_argument('--num-feat', type=int, default=32)
    p.add_argument('--num-block', type=int, default=2)
    p.add_argument('--num-grow-ch', type=int, default=16)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--work', default=os.path.join(tempfile.gettempdir(), 'iqa_plugin_lora_bench'),
                   help='folder for the cached pretrained net and run files')
    p.add_argument('--figures', default=None, help='folder to write lora_tradeoff.png and lora_crops.png into')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: leave as is)')
    p.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    p.add_argument('--quick', action='store_true',
                   help='smoke run: 3 steps of batch 2 on 32 px patches, λ_Q 1 only, 10 pretraining steps, one '
                        'held-out 96 px crop')
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.lambdas, args.lam, args.pretrain_steps = 3, '1.0', 1.0, 10
        args.patches, args.batch, args.patch, args.eval_images, args.eval_size = 16, 2, 32, 1, 96
    try:
        args.lambda_list = [float(x) for x in args.lambdas.split(',') if x.strip()]
    except ValueError:
        p.error(f'--lambdas must be comma-separated numbers, got {args.lambdas!r}')
    if not args.lambda_list or any(v < 0 for v in args.lambda_list):
        p.error(f'--lambdas must list non-negative numbers, got {args.lambdas!r}')
    if args.lam not in args.lambda_list:
        p.error(f'--lambda {args.lam:g} is not one of --lambdas {args.lambdas}')
    if args.patch % args.scale or args.eval_size % args.scale:
        p.error(f'--patch and --eval-size must be multiples of --scale {args.scale}')
    if args.steps < 2:
        p.error('--steps must be >= 2')
    if not 0 < args.hf_cut < 1:
        p.error('--hf-cut must be in (0, 1)')
    return args


def _setup(args):
    """Threads, registration, BasicSR's log level; prints and returns (device, load average at start)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    import iqa_plugin

    iqa_plugin.register()
    logging.getLogger('basicsr').setLevel(logging.ERROR)  # BasicSR lists every frozen parameter at WARNING
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'device {device}, threads {torch.get_num_threads()}, load average {load:.2f} '
          f'(on {os.cpu_count()} cores) at start')
    return device, load


def _data(args):
    """(training patches, held-out GT crops, their bicubic LR), printed."""
    train_imgs, eval_imgs = load_images(args.train_data), load_images(args.eval_data)
    patches = random_patches(train_imgs, args.patches, args.patch, args.seed)
    gt = centre_crops(eval_imgs, args.eval_images, args.eval_size)
    lq = bicubic_down(gt, args.scale)
    print(f'train: {len(train_imgs)} images from {args.train_data}, {len(patches)} patches {args.patch}px; '
          f'held out: {len(gt)} crops {args.eval_size}px from {args.eval_data}')
    return patches, gt, lq


def _pretrained(args, base, lq, gt, device):
    """The scorers and the pretrained net's scores on the held-out crops (with bicubic's PSNR), printed;
    returns (scorers, pretrained results, bicubic upscaling)."""
    import warnings

    from iqa_plugin.models import lora
    from iqa_plugin.scoring import get_cached_metric

    scorers = {'nr_lite': (args.scorer, None), 'niqe': ('niqe-fitted', None), 'milo': ('milo-pseudomos', None)}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        scorers = {k: (n, get_cached_metric(n, device=device)) for k, (n, _) in scorers.items()}
    plain = lora.build_network_cpu(network_opt(args))
    plain.load_state_dict(torch.load(base, weights_only=True)['params'])
    plain.to(device)
    pre = evaluate(plain, lq, gt, None, scorers, args, device)
    n_all = sum(p.numel() for p in plain.parameters())
    bicubic = F.interpolate(lq, scale_factor=args.scale, mode='bicubic', align_corners=False).clamp(0, 1)
    pre['bicubic_psnr'] = psnr(bicubic, gt, args.scale)
    print(f'pretrained ({n_all:,d} params): {args.scorer} {pre["nr_lite"]:.4f}, niqe-fitted {pre["niqe"]:.3f}, '
          f'milo-pseudomos {pre["milo"]:.4f}, PSNR {pre["psnr"]:.2f} dB (bicubic {pre["bicubic_psnr"]:.2f} dB)')
    return scorers, pre, bicubic


def _sweep(args, base, patches, lq, gt, pre, scorers, device):
    """Full and LoRA fine-tuning at every λ_Q; returns ({(mode, λ): row}, {(mode, λ): outputs})."""
    rows, outputs = {}, {}
    for lam in args.lambda_list:
        for mode in ('full', 'lora'):
            net, fig = finetune(args, base, lam, mode == 'lora', patches, device, args.work)
            res = evaluate(net, lq, gt, pre['output'], scorers, args, device)
            outputs[(mode, lam)] = res.pop('output')
            row = {'trainable': fig['trainable'], 'step_s': fig['step_s'], 'mem_bytes': fig['mem_bytes'],
                   'nr_lite': res['nr_lite'], 'nr_lite_gain': res['nr_lite'] - pre['nr_lite'],
                   'niqe': res['niqe'], 'niqe_gain': pre['niqe'] - res['niqe'],
                   'milo': res['milo'], 'milo_gain': pre['milo'] - res['milo'],
                   'psnr': res['psnr'], 'psnr_change': res['psnr'] - pre['psnr'],
                   'hf_rel': res['hf_rel'], 'hf_share': res['hf_share']}
            rows[(mode, lam)] = row
            print(f'  λ_Q {lam:<5g} {mode:4s} done: nr-lite {row["nr_lite_gain"]:+.4f}, PSNR '
                  f'{row["psnr_change"]:+.3f} dB, hf_rel {row["hf_rel"]:.3g}', flush=True)
    return rows, outputs


def _report(args, rows, n_eval, device):
    """The table of gains per λ_Q and mode; returns (what the memory column measures, LoRA / full hf_rel)."""
    mem_what = ('torch.cuda.max_memory_allocated over the steps' if device.type == 'cuda' else
                'counted bytes of one step: saved-for-backward tensors + grads + optimiser state')
    print(f'\n{args.steps} steps, batch {args.batch}, {args.patch}px, lr {args.lr:g} (LoRA x{args.lora_lr_mult:g}), LoRA rank {args.rank} alpha '
          f'{args.alpha:g}; gains vs the pretrained net on {n_eval} held-out crops (positive = better); memory: '
          f'{mem_what}')
    head = (f'{"λ_Q":>6} {"mode":5} {"trainable":>9} {"nr-lite":>8} {"niqe":>7} {"milo":>8} {"ΔPSNR":>7} '
            f'{"hf_rel":>8} {"hf_share":>8} {"step s":>7} {"mem MB":>7}')
    print(head)
    for lam in args.lambda_list:
        for mode in ('full', 'lora'):
            r = rows[(mode, lam)]
            print(f'{lam:>6g} {mode:5} {r["trainable"]:>9,d} {r["nr_lite_gain"]:>+8.4f} {r["niqe_gain"]:>+7.3f} '
                  f'{r["milo_gain"]:>+8.4f} {r["psnr_change"]:>+7.3f} {r["hf_rel"]:>8.2e} {r["hf_share"]:>8.3f} '
                  f'{r["step_s"]:>7.3f} {r["mem_bytes"] / 2 ** 20:>7.1f}')
    ratio = rows[('lora', args.lam)]['hf_rel'] / max(rows[('full', args.lam)]['hf_rel'], 1e-30)
    print(f'LoRA / full hf_rel at λ_Q {args.lam:g}: {ratio:.3f}')
    return mem_what, ratio


def _figures(args, rows, gt, bicubic, pre, outputs):
    """The trade-off plot and the crops of the largest λ_Q under ``--figures``."""
    out_dir = Path(args.figures)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_plot(out_dir / 'lora_tradeoff.png', rows, args.lambda_list)
    top = max(args.lambda_list)
    i = 0
    panels = [('GT', gt[i]), ('bicubic', bicubic[i]),
              ('pretrained', pre['output'][i]), (f'full FT, lambda {top:g}', outputs[('full', top)][i]),
              (f'LoRA, lambda {top:g}', outputs[('lora', top)][i])]
    write_crops(out_dir / 'lora_crops.png', panels, min(64, args.eval_size), 3)
    print(f'figures: {out_dir / "lora_tradeoff.png"}, {out_dir / "lora_crops.png"}')


def main(argv=None):
    args = parse(argv)
    device, load = _setup(args)
    t_all = time.perf_counter()
    patches, gt, lq = _data(args)
    base = pretrained_net(args, patches, device, print)
    scorers, pre, bicubic = _pretrained(args, base, lq, gt, device)
    rows, outputs = _sweep(args, base, patches, lq, gt, pre, scorers, device)
    mem_what, ratio = _report(args, rows, len(gt), device)
    if args.figures:
        _figures(args, rows, gt, bicubic, pre, outputs)
    wall = time.perf_counter() - t_all
    load_end = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f'wall {wall:.0f} s; load average {load_end:.2f} at the end')
    per_lambda = {f'{lam:g}': {mode: rows[(mode, lam)] for mode in ('full', 'lora')} for lam in args.lambda_list}
    return {'bench': 'lora', 'device': str(device), 'threads': torch.get_num_threads(), 'steps': args.steps,
            'lambda': args.lam, 'lambdas': args.lambda_list, 'rank': args.rank, 'lr': args.lr,
            'lora_lr_mult': args.lora_lr_mult, 'scorer': args.scorer,
            'memory': mem_what, 'pretrained': {k: v for k, v in pre.items() if k != 'output'},
            'full': rows[('full', args.lam)], 'lora': rows[('lora', args.lam)], 'ratio': ratio,
            'per_lambda': per_lambda, 'wall_s': wall, 'load_avg': [load, load_end]}


if __name__ == '__main__':
    print(json.dumps(main()))
