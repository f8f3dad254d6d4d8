"""Image input for every metric and loss of the plugin: reading, conversion and validation.

Conventions: tensors are float, (B, C, H, W), RGB, values in [0, 1]. BasicSR's metric functions
receive uint8 BGR HWC arrays; ``bgr_uint8_to_tensor`` converts them.
"""
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')

_range_warned = set()


def read_image(path):
    """Read an image file as a (1, 3, H, W) float32 RGB tensor in [0, 1].

    Grayscale is replicated to RGB, an alpha channel is dropped, 16-bit files are scaled by 65535.
    Raises FileNotFoundError / ValueError with the path in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'image not found: {path}')
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f'cannot read image (not an image or unsupported format): {path}')
    if img.dtype == np.uint16:
        img = img.astype(np.float32) / 65535.0
    elif img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    else:
        img = img.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    elif img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    img = img[:, :, ::-1]  # BGR -> RGB
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


def list_images(folder):
    """Sorted image files directly inside ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'folder not found: {folder}')
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def image_paths(dataroot):
    """Sorted image files of one folder or a list of folders (FileNotFoundError names a missing one;
    ValueError when there is none)."""
    roots = dataroot if isinstance(dataroot, (list, tuple)) else [dataroot]
    paths = []
    for r in roots:
        paths.extend(list_images(r))
    if not paths:
        raise ValueError(f'no images found in {", ".join(str(r) for r in roots)}')
    return paths


def quantise8(img):
    """A float image as an 8-bit file stores it, back in float32: clipped to [0, 1], rounded to k / 255."""
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.float32) / np.float32(255.0)


def write_image(path, rgb):
    """Write an HWC RGB image (uint8, or float in [0, 1]: clipped, rounded) as an 8-bit file such as a PNG.

    The parent folder is created; OSError when the file cannot be written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if rgb.dtype != np.uint8:
        rgb = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    try:
        ok = cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    except cv2.error as e:  # no writer for the extension
        raise OSError(f'cannot write {path}: {str(e).strip().splitlines()[-1]}') from None
    if not ok:
        raise OSError(f'cannot write {path}')


def bgr_uint8_to_tensor(img, device=None):
    """BasicSR's HWC BGR image (uint8 in [0, 255], or float in [0, 255]) -> (1, 3, H, W) RGB in [0, 1]."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f'expected a numpy HWC image, got {type(img).__name__}')
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f'expected an HWC image, got shape {tuple(img.shape)}')
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    x = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1)).astype(np.float32) / scale)[None]
    return x.to(device) if device is not None else x


def check_batch_shape(x, name, min_size):
    """Raise a one-line ``ValueError`` unless ``x`` is (B, 3, H, W) with ``min(H, W) >= min_size``.

    For a network's own forward (no conversion, no range check: ``prepare_image`` does those for scorers)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f'{name} expects (B, 3, H, W), got {tuple(x.shape)}')
    if min(x.shape[-2:]) < min_size:
        raise ValueError(f'{name}: image is {x.shape[-2]}x{x.shape[-1]}, smaller than the minimum side of '
                         f'{min_size} px')


class _ClampStraightThrough(torch.autograd.Function):
    """``x.clamp(lo, hi)`` forward, identity backward: the gradient reaches out-of-range pixels too."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None


def clamp_straight_through(x, lo, hi):
    """Values clamped to [lo, hi]; the gradient passes unchanged (straight-through), also where clamped."""
    return _ClampStraightThrough.apply(x, lo, hi) if x.requires_grad else x.clamp(lo, hi)


def prepare_image(x, name='image', channels=3, min_size=16, out_of_range='clamp', value_range=(0.0, 1.0),
                  check_values=True):
    """Validate one input batch and return it as (B, C, H, W).

    Input-check policy (docs/architecture.md, input checks):

    * always, from metadata only (no device-to-host read): tensor, (B, C, H, W) or (C, H, W), float
      dtype, channels (1 is replicated to 3), smallest side;
    * ``check_values=True`` (user-facing entry points: ``iqa-plugin score``, validators, scorers' own
      ``forward``, a loss's first call): also NaN/Inf (error) and the value range, which reads values back
      (a host sync on a GPU);
    * ``check_values=False`` (a loss in the training step): no value is read; NaN/Inf pass through to the
      loss value, and ``'clamp'`` clamps without looking (no warning). ``'error'`` always reads the range.

    ``'clamp'`` is straight-through: the scorer sees values clamped to ``value_range`` and the gradient
    reaches every pixel unchanged, out-of-range ones included (a plain clamp would zero it there).

    Args:
        x (Tensor): (C, H, W) or (B, C, H, W).
        name (str): used in error messages (``'dist'``, ``'ref'``, ...).
        channels (int): expected channels; a 1-channel input is replicated when ``channels == 3``.
        min_size (int): smallest allowed height/width.
        out_of_range (str): ``'clamp'`` (straight-through; with ``check_values`` a warning once per name),
            ``'error'`` or ``'ignore'``.
        value_range (tuple | None): allowed range; None skips the range check (latents).
        check_values (bool): read values back for the NaN/Inf and range checks (see above).
    """
    if not torch.is_tensor(x):
        raise TypeError(f'{name}: expected a torch.Tensor, got {type(x).__name__}')
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f'{name}: expected shape (B, C, H, W) or (C, H, W), got {tuple(x.shape)}')
    if not x.is_floating_point():
        raise TypeError(f'{name}: expected a float tensor in [0, 1], got dtype {x.dtype}')
    c = x.shape[1]
    if c != channels:
        if c == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        else:
            raise ValueError(f'{name}: expected {channels} channels, got {c} (shape {tuple(x.shape)})')
    h, w = x.shape[-2:]
    if min(h, w) < min_size:
        raise ValueError(f'{name}: image is {h}x{w}, smaller than the minimum side of {min_size} px')
    if check_values and not torch.isfinite(x).all():
        raise ValueError(f'{name}: contains NaN or Inf values')
    if value_range is None or out_of_range == 'ignore':
        return x
    lo, hi = value_range
    if not check_values and out_of_range == 'clamp':
        return clamp_straight_through(x, lo, hi)
    xmin, xmax = float(x.detach().min()), float(x.detach().max())
    if xmin < lo or xmax > hi:
        if out_of_range == 'error':
            raise ValueError(f'{name}: values must lie in [{lo}, {hi}], got [{xmin:.4g}, {xmax:.4g}]')
        if name not in _range_warned:
            _range_warned.add(name)
            warnings.warn(f'{name}: values outside [{lo}, {hi}] (got [{xmin:.4g}, {xmax:.4g}]); clamping '
                          '(straight-through: the gradient still reaches them)', stacklevel=2)
        x = clamp_straight_through(x, lo, hi)
    return x


def prepare_pair(dist, ref, **kwargs):
    """Validate a distorted/reference pair (see ``prepare_image``); shapes must match."""
    if torch.is_tensor(dist) and torch.is_tensor(ref) and dist.shape != ref.shape:
        if not (dist.ndim == ref.ndim and dist.shape[0] == ref.shape[0] and dist.shape[2:] == ref.shape[2:]):
            raise ValueError(f'dist and ref shapes differ: dist {tuple(dist.shape)} vs ref {tuple(ref.shape)}')
    dist = prepare_image(dist, name='dist', **kwargs)
    ref = prepare_image(ref, name='ref', **kwargs)
    if dist.shape != ref.shape:
        raise ValueError(f'dist and ref shapes differ: dist {tuple(dist.shape)} vs ref {tuple(ref.shape)}')
    return dist, ref


def crop_border(img, border):
    """Crop ``border`` pixels from each side of an HWC array (BasicSR's ``crop_border``)."""
    if border and border > 0:
        return img[border:-border, border:-border, ...]
    return img
