"""``iqa-plugin diff`` on held-out photos changed by operations outside the distortion engine (docs/guides/diff.md).

    OMP_NUM_THREADS=1 python docs/scripts/axis_photos.py [--out DIR] [--side 192]

A = the centre ``--side`` px crop of each of 12 scikit-image photos (bundled with its wheel; the relational network
was trained on CBSD68 only); B = A changed with OpenCV / PIL directly: Gaussian blur (sigma 1.5), Gaussian noise
(sigma 10 grey levels), JPEG quality 15, darkening (PIL brightness 0.7), and, as harder cases, bicubic down-up x2,
unsharp masking (amount 1, sigma 1.5), lower contrast (PIL contrast 0.6), lower saturation (PIL colour 0.4) and
posterisation to 4 bits. Half of the photos are grey (camera, coins, moon, brick, grass, gravel): lowering the
saturation leaves them as they are. Each pair of folders goes through the command, ``iqa-plugin diff A B --json``; printed per
operation: the expected axis and sign, the per-axis means' largest axis, how many images on their own name the
expected axis first (with its sign, above the floor), and the command's sentence. Last line: one JSON object.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

PHOTOS = ('astronaut', 'brick', 'camera', 'chelsea', 'coffee', 'coins', 'grass', 'gravel', 'immunohistochemistry',
          'moon', 'retina', 'rocket')


def load(name, side):
    import skimage.data

    img = getattr(skimage.data, name)()
    img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
    h, w = img.shape[:2]
    if min(h, w) < side:
        raise SystemExit(f'{name} is {h}x{w}, smaller than --side {side}')
    y, x = (h - side) // 2, (w - side) // 2
    return np.ascontiguousarray(img[y:y + side, x:x + side])


def pil(fn):
    from PIL import Image, ImageEnhance

    return lambda a: np.asarray(fn(ImageEnhance, Image.fromarray(a)))


def jpeg(a, q=15):
    ok, buf = cv2.imencode('.jpg', a[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def down_up(a):
    h, w = a.shape[:2]
    small = cv2.resize(a, (w // 2, h // 2), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def unsharp(a):
    blur = cv2.GaussianBlur(a.astype(np.float32), (0, 0), 1.5)
    return np.clip(2 * a.astype(np.float32) - blur, 0, 255).round().astype(np.uint8)


# name: (function, expected axis, expected sign)
OPS = {
    'Gaussian blur sigma 1.5': (lambda a: cv2.GaussianBlur(a, (0, 0), 1.5), 'sharpness', -1),
    'Gaussian noise sigma 10': (lambda a: np.clip(a + np.random.default_rng(0).normal(0, 10, a.shape), 0, 255)
                                .astype(np.uint8), 'noise', +1),
    'JPEG quality 15': (jpeg, 'compression', +1),
    'darken (PIL brightness 0.7)': (pil(lambda E, im: E.Brightness(im).enhance(0.7)), 'brightness', -1),
    'bicubic down-up x2': (down_up, 'resampling', +1),  # the engine's resample_bilinear: resampling +1, sharpness -0.5
    'unsharp mask (amount 1, sigma 1.5)': (unsharp, 'sharpness', +1),
    'lower contrast (PIL contrast 0.6)': (pil(lambda E, im: E.Contrast(im).enhance(0.6)), 'contrast', -1),
    'lower saturation (PIL colour 0.4)': (pil(lambda E, im: E.Color(im).enhance(0.4)), 'saturation', -1),
    'posterise to 4 bits': (lambda a: (a & 0xF0) + 8, 'quantisation', +1),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', help='keep the image folders here (default: a temporary folder)')
    p.add_argument('--side', type=int, default=192)
    args = p.parse_args(argv)
    t0 = time.time()
    root = Path(args.out or tempfile.mkdtemp(prefix='axis-photos-'))
    for name in PHOTOS:
        (root / 'A').mkdir(parents=True, exist_ok=True)
        a = load(name, args.side)
        cv2.imwrite(str(root / 'A' / f'{name}.png'), a[..., ::-1])
        for i, (fn, _, _) in enumerate(OPS.values()):
            (root / f'op{i}').mkdir(exist_ok=True)
            cv2.imwrite(str(root / f'op{i}' / f'{name}.png'), np.ascontiguousarray(fn(a)[..., ::-1]))
    exe = Path(sys.executable).parent / 'iqa-plugin'
    print(f'{len(PHOTOS)} scikit-image photos, centre {args.side} px crops; iqa-plugin diff A B --json per operation\n')
    print('| operation (B) | expected | largest axis of the means | images naming it | the command\'s sentence |')
    print('|---|---|---|---|---|')
    results = {}
    for i, (op, (_, axis, sign)) in enumerate(OPS.items()):
        r = subprocess.run([str(exe), 'diff', str(root / 'A'), str(root / f'op{i}'), '--json', '--device', 'cpu'],
                           capture_output=True, text=True, check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        axes = res['axes']
        top = max(axes, key=lambda k: abs(axes[k]))
        per = [e['moved'][0] for e in res['per_image'].values() if e['moved']]
        n = int(sum(m[0] == axis and np.sign(m[1]) == sign for m in per))
        results[op] = {'expected': [axis, sign], 'axes': axes, 'top': top, 'images_named': n, 'images': res['images'],
                       'sentence': res['sentence']}
        print(f"| {op} | {axis} {'+' if sign > 0 else '-'} | {top} {axes[top]:+.2f} | {n} of {res['images']} | "
              f"{res['sentence']} |")
    print(f'\n({time.time() - t0:.0f} s)')
    print(json.dumps(results))


if __name__ == '__main__':
    main()
