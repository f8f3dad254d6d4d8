"""``iqa-plugin demo``: train a small x4 SwinIR (or RRDB) on images bundled with scikit-image.

Nothing is downloaded and ../shared is not used: the photos ship inside scikit-image's wheel.
The option file (``iqa_plugin/apps/configs/demo.yml``) carries the plugin's losses and validators whose
weights ship with the package; it runs on the GPU when one is present.

Data (``make_data``): HR images and their MATLAB-bicubic x4 LR (BasicSR's ``imresize``).

* validation: from each of ``VAL_IMAGES`` the ``VAL_SIDE`` square window with the highest gradient
  energy (``texture_energy``); a window below ``MIN_VAL_TEXTURE`` is an error, so a flat crop (where
  bicubic is already near perfect) can never decide the demo's result;
* training: ``TRAIN_TILE`` square tiles of ``TRAIN_IMAGES`` (BasicSR's sub-image idiom: small files
  decode fast), keeping those with energy of at least ``MIN_TRAIN_TEXTURE``.

The summary prints each validator of the last validation next to the same validator applied to the
bicubic x4 upscaling of the same LR crops (``bicubic_baseline``).
"""
import contextlib
import json
import math
import os
import re
import string
import time
from pathlib import Path

import numpy as np

CONFIG = Path(__file__).resolve().parent / 'configs' / 'demo.yml'

SCALE = 4
DEFAULT_ITERS = 1000
# scikit-image sample -> use; all bundled in the wheel (skimage/data/*.png|jpg)
TRAIN_IMAGES = ['astronaut', 'coffee', 'rocket', 'stereo_motorcycle', 'hubble_deep_field', 'immunohistochemistry']
VAL_IMAGES = ['chelsea', 'camera', 'coins']
VAL_DATASET = 'skimage_val'  # datasets.val.name in configs/demo.yml
LAST_VALIDATION = 'last_validation.json'  # in the experiment folder (write_last_validation)
VAL_SIDE = 192  # validation crops keep each validation to a few seconds on CPU
TRAIN_TILE = 192  # training tiles (HR pixels); the random training patches (gt_size) are cut from them
TRAIN_MAX_SIDE = 600  # training photos are first reduced (area) to at most this side
# texture_energy (mean squared neighbour difference of the grey level in [0, 1]) of the most textured
# 192 px window: retina 5.0e-4 (its centre: 5e-5), chelsea 5.2e-3, coins 1.5e-2, cameraman 1.7e-2.
MIN_VAL_TEXTURE = 4e-3
MIN_TRAIN_TEXTURE = 2e-3

NETWORKS = {
    'swinir': "{type: SwinIR, upscale: 4, in_chans: 3, img_size: 24, window_size: 8, img_range: 1.0, "
              "depths: [2, 2], embed_dim: 36, num_heads: [3, 3], mlp_ratio: 2, upsampler: pixelshuffledirect, "
              "resi_connection: 1conv}",
    'rrdb': "{type: RRDBNet, num_in_ch: 3, num_out_ch: 3, num_feat: 32, num_block: 3, num_grow_ch: 16, scale: 4}",
}

# Plugin losses and validators in the demo: only those whose weights ship inside the package.
# Each entry: (weights entry name, YAML for train.iqa_opt, YAML lines for val.metrics).
# nr-lite (0.2.0 and later) is a validator only: the demo shows it next to the full-reference scores, it does
# not optimise it (direct NR optimisation is the LoRA fine-tuning feature, docs/lora.md).
PLUGIN_PARTS = [
    ('milo-pseudomos', 'milo: {type: MILOLoss, loss_weight: 0.05, weights: milo-pseudomos}',
     '    milo: {type: milo-pseudomos, better: lower, crop_border: 4}'),
    ('relational', 'relational: {type: RelationalLoss, loss_weight: 0.001}',
     '    relational: {type: relational, better: higher, crop_border: 4}'),
    ('nr-lite', None, '    nr_lite: {type: nr-lite, better: higher, crop_border: 4}'),
]


# ---------------------------------------------------------------------- data
def _rgb_uint8(img):
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3].astype(np.uint8)


def _crop_mod(img, mod=SCALE):
    h, w = img.shape[:2]
    return img[:h - h % mod, :w - w % mod]


def load_sample(name):
    """scikit-image sample ``name`` as an (H, W, 3) uint8 RGB array (grey replicated, alpha dropped)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    return _rgb_uint8(img[0] if isinstance(img, tuple) else img)  # stereo_motorcycle: (left, right, disp)


def _grey(img):
    return img.astype(np.float64).mean(axis=2) / 255.0


def texture_energy(img):
    """Gradient energy of an (H, W, 3) image: the sum of squared differences of neighbouring grey levels
    (RGB mean in [0, 1]), vertical and horizontal, divided by H * W."""
    g = _grey(img)
    return float(((np.diff(g, axis=0) ** 2).sum() + (np.diff(g, axis=1) ** 2).sum()) / g.size)


def _window_sums(values, ys, xs, height, width):
    """Sums of ``values`` over the windows [y, y + height) x [x, x + width) for y in ys, x in xs."""
    ii = np.pad(values.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    y0, x0 = ys[:, None], xs[None, :]
    return ii[y0 + height, x0 + width] - ii[y0, x0 + width] - ii[y0 + height, x0] + ii[y0, x0]


def most_textured_window(img, side, stride=8):
    """The ``side`` x ``side`` window of an (H, W, 3) image with the highest ``texture_energy``.

    Windows start on a ``stride`` grid (and at the last possible row / column); the first of equal
    maxima wins. The energy of a window counts only differences inside it, so it equals
    ``texture_energy`` of the crop. Returns (top, left, energy).
    """
    h, w = img.shape[:2]
    if side > min(h, w):
        raise ValueError(f'window side {side} exceeds the image ({h}x{w})')
    g = _grey(img)
    ys = np.unique(np.r_[np.arange(0, h - side + 1, stride), h - side])
    xs = np.unique(np.r_[np.arange(0, w - side + 1, stride), w - side])
    sums = (_window_sums(np.diff(g, axis=0) ** 2, ys, xs, side - 1, side)
            + _window_sums(np.diff(g, axis=1) ** 2, ys, xs, side, side - 1))
    i, j = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(ys[i]), int(xs[j]), float(sums[i, j] / side ** 2)


def val_crops(names=None, side=VAL_SIDE, min_texture=MIN_VAL_TEXTURE):
    """{name: (crop (side, side, 3) uint8, info dict)} of the most textured window of each image."""
    crops = {}
    for name in names or VAL_IMAGES:
        img = load_sample(name)
        top, left, energy = most_textured_window(img, side)
        if energy < min_texture:
            raise ValueError(f'validation image {name}: its most textured {side} px window has energy '
                             f'{energy:.2e} < {min_texture:.0e}; pick a textured image')
        crops[name] = (img[top:top + side, left:left + side],
                       {'top': top, 'left': left, 'side': side, 'energy': round(energy, 6)})
    return crops


def train_tiles(names=None, tile=TRAIN_TILE, max_side=TRAIN_MAX_SIDE, min_texture=MIN_TRAIN_TEXTURE):
    """[(tile name, (tile, tile, 3) uint8)] of non-overlapping tiles whose energy is >= ``min_texture``."""
    import cv2

    tiles = []
    for name in names or TRAIN_IMAGES:
        img = load_sample(name)
        if max(img.shape[:2]) > max_side:
            f = max_side / max(img.shape[:2])
            img = cv2.resize(img, (round(img.shape[1] * f), round(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
        h, w = img.shape[:2]
        for y in range(0, h - tile + 1, tile):
            for x in range(0, w - tile + 1, tile):
                t = img[y:y + tile, x:x + tile]
                if texture_energy(t) >= min_texture:
                    tiles.append((f'{name}_{y:04d}_{x:04d}', t))
    if not tiles:
        raise ValueError(f'no training tile reaches texture energy {min_texture:.0e}')
    return tiles


def downscale(hr, scale=SCALE):
    """MATLAB-bicubic 1/scale of an (H, W, 3) uint8 image (H, W multiples of scale), rounded to uint8."""
    from basicsr.utils.matlab_functions import imresize

    lr = imresize(hr.astype(np.float64) / 255.0, 1 / scale)
    return np.clip(np.round(lr * 255.0), 0, 255).astype(np.uint8)


def bicubic_upscale(lr, scale=SCALE):
    """MATLAB-bicubic x``scale`` of an (h, w, 3) uint8 image -> float64 in [0, 1] (clamped, not rounded)."""
    from basicsr.utils.matlab_functions import imresize

    return np.clip(imresize(lr.astype(np.float64) / 255.0, scale), 0.0, 1.0)


def _data_spec():
    return {'version': 3, 'scale': SCALE, 'train': TRAIN_IMAGES, 'train_tile': TRAIN_TILE,
            'train_max_side': TRAIN_MAX_SIDE, 'min_train_texture': MIN_TRAIN_TEXTURE,
            'val': VAL_IMAGES, 'val_side': VAL_SIDE, 'min_val_texture': MIN_VAL_TEXTURE}


def make_data(root):
    """Write HR and bicubic x4 LR pairs from scikit-image's samples under ``root``; returns root.

    ``root/done.json`` records the data's definition and the validation windows; data written for
    another definition is rewritten.
    """
    import shutil

    import cv2

    root = Path(root)
    marker = root / 'done.json'
    spec = _data_spec()
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get('spec') == spec:
                return root
        except json.JSONDecodeError:
            pass
    for split in ('train', 'val'):
        shutil.rmtree(root / split, ignore_errors=True)
        (root / split / 'HR').mkdir(parents=True)
        (root / split / 'LRx4').mkdir(parents=True)
    crops = val_crops()
    pairs = [('train', name, t) for name, t in train_tiles()] + [('val', n, c) for n, (c, _) in crops.items()]
    for split, name, hr in pairs:
        hr = _crop_mod(hr)
        cv2.imwrite(str(root / split / 'HR' / f'{name}.png'), hr[:, :, ::-1])
        cv2.imwrite(str(root / split / 'LRx4' / f'{name}.png'), downscale(hr)[:, :, ::-1])
    marker.write_text(json.dumps({'spec': spec, 'val_windows': {n: i for n, (_, i) in crops.items()},
                                  'train_tiles': sum(s == 'train' for s, _, _ in pairs)}, indent=1))
    return root


# ---------------------------------------------------------------------- options
def available_plugin_parts():
    """The PLUGIN_PARTS whose weights are present in the package."""
    from iqa_plugin import weights

    parts = []
    for name, loss_yaml, metric_yaml in PLUGIN_PARTS:
        _, _, state = weights.status(name)
        if state == 'ok':
            parts.append((name, loss_yaml, metric_yaml))
    return parts


def write_options(out, arch='swinir', iters=DEFAULT_ITERS, val_freq=None, num_gpu='auto', parts=None):
    """Fill the demo template; returns the path of the written option file."""
    if arch not in NETWORKS:
        raise ValueError(f"unknown demo arch '{arch}'; known: {', '.join(NETWORKS)}")
    if iters < 1:
        raise ValueError(f'demo iterations must be >= 1, got {iters}')
    out = Path(out)
    data = make_data(out / 'data')
    parts = available_plugin_parts() if parts is None else parts
    losses = [p[1] for p in parts if p[1]]
    metrics = [p[2] for p in parts if p[2]]
    val_freq = val_freq or max(iters // 4, 1)
    text = string.Template(CONFIG.read_text()).substitute(
        arch=arch, num_gpu=num_gpu, data=data.resolve().as_posix(), network_g=NETWORKS[arch],
        iters=iters, warmup=min(50, iters // 10) or -1,
        iqa_opt='{' + ', '.join(losses) + '}' if losses else '~',
        val_freq=val_freq, extra_metrics='\n'.join(metrics), print_freq=max(min(val_freq // 2, 50), 1))
    path = out / f'demo_{arch}.yml'
    path.write_text(text)
    return path


# ---------------------------------------------------------------------- bicubic baseline
def _score(metric_opt, out_t, gt_t, device):
    """One val.metrics entry on one image: (1, 3, H, W) RGB float tensors in [0, 1] -> float.

    Scoring-table names go through the table's scorer on the float tensors (as IQASRModel does with
    its output); other types through BasicSR's ``calculate_metric`` on uint8 BGR images.
    """
    import torch
    from basicsr.metrics import calculate_metric

    from iqa_plugin import scoring

    opt = dict(metric_opt)
    if opt['type'] not in scoring.METRICS:
        def to_bgr(t):
            return (t[0].permute(1, 2, 0).numpy()[:, :, ::-1] * 255.0).round().astype(np.uint8)
        opt.pop('better', None)
        return float(calculate_metric({'img': to_bgr(out_t), 'img2': to_bgr(gt_t)}, opt))
    kwargs = {k: v for k, v in opt.items() if k not in ('type', 'better', 'crop_border', 'output')}
    scorer = scoring.get_cached_metric(opt['type'], device=device, **kwargs)
    b = int(opt.get('crop_border', 0) or 0)
    if b:
        out_t, gt_t = out_t[..., b:-b, b:-b], gt_t[..., b:-b, b:-b]
    with torch.no_grad():
        result = scorer(out_t.to(device), gt_t.to(device) if scorer.kind == 'fr' else None)
    return float(result[opt.get('output') or next(iter(result))].mean())


def bicubic_baseline(options, device='cpu'):
    """Mean of each ``val.metrics`` entry over the validation set for bicubic x scale of its LR images.

    ``options`` is the demo's option dict (or the path of its YAML). Returns {metric name: mean}.
    """
    import cv2
    import torch
    import yaml

    from iqa_plugin.utils.image import list_images

    if not isinstance(options, dict):
        options = yaml.safe_load(Path(options).read_text())
    val = options['datasets']['val']
    metrics = options['val']['metrics']
    scale = int(options['scale'])
    sums = {name: 0.0 for name in metrics}
    hr_paths = list_images(val['dataroot_gt'])
    if not hr_paths:
        raise ValueError(f"no validation images in {val['dataroot_gt']}")
    for hr_path in hr_paths:
        lr_path = Path(val['dataroot_lq']) / hr_path.name
        hr = cv2.imread(str(hr_path))[:, :, ::-1]
        lr = cv2.imread(str(lr_path))[:, :, ::-1]
        if lr is None:
            raise FileNotFoundError(f'LR image missing for {hr_path.name}: {lr_path}')
        bic = bicubic_upscale(lr, scale)
        if bic.shape != hr.shape:
            raise ValueError(f'{hr_path.name}: bicubic x{scale} of LR is {bic.shape}, HR is {hr.shape}')
        out_t = torch.from_numpy(np.ascontiguousarray(bic.transpose(2, 0, 1))).float()[None]
        gt_t = torch.from_numpy(np.ascontiguousarray(hr.transpose(2, 0, 1))).float()[None] / 255.0
        for name, opt in metrics.items():
            sums[name] += _score(opt, out_t, gt_t, device)
    return {name: s / len(hr_paths) for name, s in sums.items()}


# ---------------------------------------------------------------------- run and summary
def run_demo(arch='swinir', iters=None, out='iqa_plugin_demo', val_freq=None, device='auto', threads=None):
    """Train the demo under ``out``; ``threads``: torch CPU threads (0 or None leave torch's setting; the command
    passes 1 by default, the measured fastest for these small nets: README, Set up)."""
    import torch

    from iqa_plugin.train import apply_threads, run

    apply_threads(threads)  # a bad value fails before anything is written

    iters = iters or DEFAULT_ITERS
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    num_gpu = 'auto' if device == 'auto' else 0
    opt_path = write_options(out, arch=arch, iters=iters, val_freq=val_freq, num_gpu=num_gpu)
    on_gpu = torch.cuda.is_available() and device == 'auto'
    print(f'iqa-plugin demo: training {arch} x4 for {iters} iterations on {"GPU" if on_gpu else "CPU"} '
          f'({torch.get_num_threads()} CPU thread{"s" if torch.get_num_threads() > 1 else ""}); options: {opt_path}',
          flush=True)
    t0 = time.time()
    with recording_validations() as record:
        run(['-opt', str(opt_path)], root_path=str(out))
    seconds = time.time() - t0
    write_last_validation(out, arch, record)
    baseline = bicubic_baseline(opt_path, device='cuda' if on_gpu else 'cpu')
    print(summarize(out, arch, seconds, baseline), flush=True)
    return out


@contextlib.contextmanager
def recording_validations(dataset=VAL_DATASET):
    """Yields a dict that holds ``iter`` and ``metrics`` ({metric: mean}) of the model's last validation of
    ``dataset`` (empty when none ran). BasicSR's ``train_pipeline`` does not return its model: the model it builds
    (``basicsr.train.build_model``) gets its ``after_validation`` hook wrapped, which reads ``metric_results``."""
    import basicsr.train

    record = {}
    build = basicsr.train.build_model

    def build_recording(opt):
        model = build(opt)
        hook = model.after_validation

        def after_validation(dataset_name, current_iter, tb_logger):
            hook(dataset_name, current_iter, tb_logger)
            if dataset_name == dataset:
                record.update(iter=int(current_iter),
                              metrics={k: float(v) for k, v in model.metric_results.items()})
        model.after_validation = after_validation
        return model

    basicsr.train.build_model = build_recording
    try:
        yield record
    finally:
        basicsr.train.build_model = build


def last_validation_path(out, arch):
    """``<experiment>/last_validation.json``: the model's results of the demo's last validation."""
    return Path(out) / 'experiments' / f'iqa_plugin_demo_{arch}' / LAST_VALIDATION


def write_last_validation(out, arch, record):
    """Write ``record`` (``recording_validations``) to ``last_validation_path``; nothing when no validation ran."""
    if record:
        last_validation_path(out, arch).write_text(json.dumps({'dataset': VAL_DATASET, **record}, indent=1))


def checkpoint_names(models_dir):
    """Checkpoint stems in ``models_dir`` ordered by iteration (``net_g_6`` before ``net_g_18``); names
    without an iteration (``net_g_best``) follow, alphabetically."""
    def key(stem):
        m = re.search(r'_(\d+)$', stem)
        return (0, int(m.group(1)), stem) if m else (1, 0, stem)
    return sorted((p.stem for p in Path(models_dir).glob('*.pth')), key=key)


def last_validation(out, arch):
    """(iteration or None, {metric: value}) of the demo's last validation as the model recorded it
    (``last_validation_path``); (None, {}) when there is none."""
    path = last_validation_path(out, arch)
    if not path.is_file():
        return None, {}
    record = json.loads(path.read_text())
    return record.get('iter'), dict(record.get('metrics', {}))


def comparison_table(values, baseline, better):
    """Lines 'metric  model  bicubic  better  verdict' for the metrics in ``values``."""
    rows = [f'    {"metric":<12}{"model":>11}{"bicubic":>11}   better   model vs bicubic']
    for name, v in values.items():
        b = baseline.get(name)
        direction = better.get(name, 'higher')
        if b is None or not math.isfinite(v):
            rows.append(f'    {name:<12}{v:>11.5g}{"-":>11}   {direction:<7}')
            continue
        diff = v - b
        wins = diff > 0 if direction == 'higher' else diff < 0
        rows.append(f'    {name:<12}{v:>11.5g}{b:>11.5g}   {direction:<7}  {"better" if wins else "WORSE"} ({diff:+.3g})')
    return rows


def summarize(out, arch, seconds, baseline=None):
    """A short human summary: where the outputs went, and the last validation next to bicubic."""
    import yaml

    name = f'iqa_plugin_demo_{arch}'
    exp = Path(out) / 'experiments' / name
    tb_dir = Path(out) / 'tb_logger' / name
    logs = sorted(exp.glob('train_*.log'))
    it, values = last_validation(out, arch)
    better = {}
    opt_path = Path(out) / f'demo_{arch}.yml'
    if opt_path.is_file():
        options = yaml.safe_load(opt_path.read_text())
        better = {k: v.get('better', 'higher') for k, v in options['val']['metrics'].items()}
        if it is not None:  # a validation after the end of training scores the weights of the last iteration
            it = min(it, int(options['train']['total_iter']))
    models = checkpoint_names(exp / 'models')
    n_val = len(VAL_IMAGES)
    if values:
        table = '\n'.join(comparison_table(values, baseline or {}, better))
        validation = (f'  last validation (after iter {it}; mean over {n_val} textured {VAL_SIDE} px crops: '
                      f'{", ".join(VAL_IMAGES)}),\n  next to bicubic x{SCALE} of the same LR images:\n{table}\n')
    else:
        validation = '  last validation: none found in the log\n'
    return (f'\nDemo finished in {seconds / 60:.1f} min.\n'
            f'  experiment:   {exp}\n'
            f'  checkpoints:  {exp / "models"} ({", ".join(models[-4:])})\n'
            f'  val images:   {exp / "visualization"}\n'
            f'  log:          {logs[-1] if logs else "-"}\n'
            f'  tensorboard:  tensorboard --logdir {tb_dir}\n'
            + validation)


if __name__ == '__main__':
    run_demo(out=os.environ.get('IQA_PLUGIN_DEMO_OUT', 'iqa_plugin_demo'))
