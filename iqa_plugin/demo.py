"""``iqa-plugin demo``: train a small x4 SwinIR (or RRDB) on images bundled with scikit-image.

Nothing is downloaded and ../shared is not used: the photos ship inside scikit-image's wheel.
The option file (``iqa_plugin/configs/demo.yml``) carries the plugin's losses and validators whose
weights ship with the package; it runs on the GPU when one is present.
"""
import json
import os
import string
import time
from pathlib import Path

import numpy as np

CONFIG = Path(__file__).resolve().parent / 'configs' / 'demo.yml'

# scikit-image sample -> use; all bundled in the wheel (skimage/data/*.png|jpg)
TRAIN_IMAGES = ['astronaut', 'coffee', 'rocket', 'stereo_motorcycle', 'hubble_deep_field', 'immunohistochemistry']
VAL_IMAGES = ['chelsea', 'retina']
VAL_SIDE = 192  # validation crops keep each validation to a few seconds on CPU

NETWORKS = {
    'swinir': "{type: SwinIR, upscale: 4, in_chans: 3, img_size: 16, window_size: 8, img_range: 1.0, "
              "depths: [2, 2], embed_dim: 36, num_heads: [3, 3], mlp_ratio: 2, upsampler: pixelshuffledirect, "
              "resi_connection: 1conv}",
    'rrdb': "{type: RRDBNet, num_in_ch: 3, num_out_ch: 3, num_feat: 32, num_block: 3, num_grow_ch: 16, scale: 4}",
}

# Plugin losses and validators in the demo: only those whose weights ship inside the package.
# Each entry: (weights entry name, YAML for train.iqa_opt, YAML lines for val.metrics)
PLUGIN_PARTS = [
    ('milo-pseudomos', 'milo: {type: MILOLoss, loss_weight: 0.05, weights: milo-pseudomos}',
     '    milo: {type: milo-pseudomos, better: lower}'),
    ('nr-lite', None, '    nr_lite: {type: nr-lite, better: higher}'),
    ('relational', None, '    relational: {type: relational, better: higher}'),
]


def _rgb_uint8(img):
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3].astype(np.uint8)


def _crop_mod(img, mod=4):
    h, w = img.shape[:2]
    return img[:h - h % mod, :w - w % mod]


def make_data(root, scale=4):
    """Write HR and bicubic x4 LR pairs from scikit-image's samples under ``root``; returns root."""
    import cv2
    import skimage.data
    from basicsr.utils.matlab_functions import imresize

    root = Path(root)
    marker = root / 'done.json'
    if marker.is_file():
        return root
    for split, names in (('train', TRAIN_IMAGES), ('val', VAL_IMAGES)):
        (root / split / 'HR').mkdir(parents=True, exist_ok=True)
        (root / split / 'LRx4').mkdir(parents=True, exist_ok=True)
        for name in names:
            img = getattr(skimage.data, name)()
            img = _rgb_uint8(img[0] if isinstance(img, tuple) else img)  # stereo_motorcycle: (left, right, disp)
            if split == 'val':  # centre crop
                h, w = img.shape[:2]
                s = min(VAL_SIDE, h, w)
                img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
            elif max(img.shape[:2]) > 600:  # keep training images moderate
                f = 600 / max(img.shape[:2])
                img = cv2.resize(img, (int(img.shape[1] * f), int(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
            hr = _crop_mod(img, scale)
            lr = imresize(hr.astype(np.float64) / 255.0, 1 / scale)
            lr = np.clip(np.round(lr * 255.0), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / split / 'HR' / f'{name}.png'), hr[:, :, ::-1])
            cv2.imwrite(str(root / split / 'LRx4' / f'{name}.png'), lr[:, :, ::-1])
    marker.write_text(json.dumps({'train': TRAIN_IMAGES, 'val': VAL_IMAGES}))
    return root


def available_plugin_parts():
    """The PLUGIN_PARTS whose weights are present in the package."""
    from iqa_plugin import weights

    parts = []
    for name, loss_yaml, metric_yaml in PLUGIN_PARTS:
        _, _, state = weights.status(name)
        if state == 'ok':
            parts.append((name, loss_yaml, metric_yaml))
    return parts


def write_options(out, arch='swinir', iters=300, val_freq=None, num_gpu='auto', parts=None):
    """Fill the demo template; returns the path of the written option file."""
    out = Path(out)
    data = make_data(out / 'data')
    parts = available_plugin_parts() if parts is None else parts
    losses = [p[1] for p in parts if p[1]]
    metrics = [p[2] for p in parts if p[2]]
    val_freq = val_freq or max(iters // 3, 1)
    text = string.Template(CONFIG.read_text()).substitute(
        arch=arch, num_gpu=num_gpu, data=data.resolve().as_posix(), network_g=NETWORKS[arch],
        milestone=max(int(iters * 0.8), 1), iters=iters,
        iqa_opt='{' + ', '.join(losses) + '}' if losses else '~',
        val_freq=val_freq, extra_metrics='\n'.join(metrics), print_freq=max(min(val_freq // 2, 50), 1))
    path = out / f'demo_{arch}.yml'
    path.write_text(text)
    return path


def run_demo(arch='swinir', iters=None, out='iqa_plugin_demo', val_freq=None, device='auto'):
    import torch

    from iqa_plugin.train import run

    iters = iters or 600
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    num_gpu = 'auto' if device == 'auto' else 0
    opt_path = write_options(out, arch=arch, iters=iters, val_freq=val_freq, num_gpu=num_gpu)
    where = 'GPU' if (torch.cuda.is_available() and device == 'auto') else 'CPU'
    print(f'iqa-plugin demo: training {arch} x4 for {iters} iterations on {where}; options: {opt_path}', flush=True)
    t0 = time.time()
    run(['-opt', str(opt_path)], root_path=str(out))
    summary = summarize(out, arch, time.time() - t0)
    print(summary, flush=True)
    return out


def summarize(out, arch, seconds):
    """A short human summary of where the demo's outputs went."""
    name = f'iqa_plugin_demo_{arch}'
    exp = Path(out) / 'experiments' / name
    logs = sorted(exp.glob('train_*.log'))
    best = ''
    if logs:
        lines = logs[-1].read_text().splitlines()
        starts = [i for i, ln in enumerate(lines) if 'INFO: Validation' in ln]
        if starts:
            block = [ln.strip() for ln in lines[starts[-1] + 1:] if ln.strip().startswith('#')]
            best = '\n    '.join(block)
    models = sorted(p.name for p in (exp / 'models').glob('*.pth'))
    return (f'\nDemo finished in {seconds / 60:.1f} min.\n'
            f'  experiment:   {exp}\n'
            f'  checkpoints:  {exp / "models"} ({", ".join(models[-4:])})\n'
            f'  val images:   {exp / "visualization"}\n'
            f'  log:          {logs[-1] if logs else "-"}\n'
            f'  tensorboard:  tensorboard --logdir {Path(out) / "tb_logger" / name}\n'
            f'  last validation:\n    {best}\n')


if __name__ == '__main__':
    run_demo(out=os.environ.get('IQA_PLUGIN_DEMO_OUT', 'iqa_plugin_demo'))
