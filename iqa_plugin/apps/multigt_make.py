"""``iqa-plugin make-multigt``: a synthetic multi-GT set in HGGT's layout from any folder of HR images.

HGGT itself (about 100 GB) cannot be downloaded here; this writes a set with the same layout and label
files, so tests, the demo and offline reproductions have multi-GT data::

    <out>/images/<set>/original/<name>.png
    <out>/images/<set>/0k/<name>_0k.png            k = 1 .. candidates (default 4)
    <out>/labels/<set>/{A,B,C}/<name>.json         {"Picture_{k+1}": {"Name", "File", "Label"}, ...}
    <out>/meta/<set>.json                          per group and candidate: operation, strength, true class

Each candidate gets a true class, then an operation of that class at a random strength:

* Positive: enhancements at graded strengths: detail enhancement (edge-preserving base layer, boosted
  detail), local contrast enhancement (CLAHE on the L channel, blended), the distortion engine's mild
  ``unsharp`` (sharpening) and ``contrast_up``.
* Similar: barely visible changes: the engine's ``gaussian_blur``, ``brighten`` and ``contrast_up`` at
  tiny severities, very weak detail enhancement.
* Negative: over-sharpening with halos (the engine's strong ``unsharp`` and ``ringing``), noise
  (``gaussian_noise``, ``colour_noise``), blur (``gaussian_blur``, ``motion_blur``), colour shifts
  (``saturate``, ``desaturate`` and a global colour cast).

Three simulated annotators A, B, C each report the true class, except with probability ``disagree``
(default 0.2) a neighbouring one (Positive/Negative -> Similar, Similar -> Positive or Negative); HGGT's
majority vote then mostly recovers the truth and sometimes does not, and some groups end up without a
Positive. Everything is a pure function of (``seed``, sorted file list, options): the same command
writes byte-identical files. Distortions come from ``iqa_plugin.labels.distortions`` (the one engine).
"""
import json
from pathlib import Path

import cv2
import numpy as np

from iqa_plugin.labels import distortions as D
from iqa_plugin.data import multigt_layout as L
from iqa_plugin.utils.image import quantise8, write_image

CLASSES = (L.LABEL_POSITIVE, L.LABEL_SIMILAR, L.LABEL_NEGATIVE)
CLASS_PROBS = (0.45, 0.25, 0.30)

# class -> list of (operation, (low, high) strength); engine ops use their severity in [0, 1]
OPERATIONS = {
    L.LABEL_POSITIVE: [('detail_enhance', (0.4, 1.2)), ('local_contrast', (0.4, 1.0)),
                       ('unsharp', (0.02, 0.12)), ('contrast_up', (0.06, 0.15))],
    L.LABEL_SIMILAR: [('gaussian_blur', (0.02, 0.06)), ('brighten', (0.02, 0.05)), ('contrast_up', (0.01, 0.03)),
                      ('detail_enhance', (0.05, 0.15))],
    L.LABEL_NEGATIVE: [('unsharp', (0.5, 0.9)), ('ringing', (0.4, 0.8)), ('gaussian_noise', (0.2, 0.6)),
                       ('colour_noise', (0.2, 0.5)), ('gaussian_blur', (0.25, 0.6)), ('motion_blur', (0.2, 0.5)),
                       ('saturate', (0.4, 0.8)), ('desaturate', (0.5, 0.9)), ('colour_cast', (0.3, 0.8))],
}


# ------------------------------------------------------------------------------------- enhancements
def detail_enhance(img, strength, rng=None):
    """Boost the detail layer over an edge-preserving (bilateral) base: ``I + 1.5 s (I - B)``, clipped.

    img (H, W, 3) float32 RGB in [0, 1]; strength s >= 0. Few halos at strong edges, unlike unsharp."""
    base = cv2.bilateralFilter(img, d=0, sigmaColor=0.08, sigmaSpace=2.0)
    return np.clip(img + 1.5 * strength * (img - base), 0, 1).astype(np.float32)


def local_contrast(img, strength, rng=None):
    """CLAHE (clip limit 2, 8x8 tiles) on Lab lightness, blended with weight ``strength`` in [0, 1]."""
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2Lab)
    light = np.clip(lab[..., 0] * 2.55, 0, 255).astype(np.uint8)
    eq = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(light).astype(np.float32) / 2.55
    lab[..., 0] = (1 - strength) * lab[..., 0] + strength * eq
    return np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0, 1).astype(np.float32)


def colour_cast(img, strength, rng):
    """A global colour cast: channel gains ``1 + 0.35 s u`` with u a random unit vector (mean removed)."""
    u = rng.normal(size=3)
    u -= u.mean()
    u /= np.linalg.norm(u) + 1e-12
    return np.clip(img * (1 + 0.35 * strength * u)[None, None], 0, 1).astype(np.float32)


ENHANCEMENTS = {'detail_enhance': detail_enhance, 'local_contrast': local_contrast, 'colour_cast': colour_cast}


def render(img, op, strength, rng):
    """Apply one operation (an ``ENHANCEMENTS`` key or a distortion-engine op) to (H, W, 3) float32 RGB."""
    if op in ENHANCEMENTS:
        return ENHANCEMENTS[op](img, strength, rng)
    return D.apply(img, op, float(strength), rng=rng)[0]


# ------------------------------------------------------------------------------------- annotators
def annotate(true_class, rng, disagree=0.2):
    """One simulated annotator's label string for a candidate of class ``true_class``."""
    label = true_class
    if rng.random() < disagree:
        if true_class == L.LABEL_SIMILAR:
            label = L.LABEL_POSITIVE if rng.random() < 0.5 else L.LABEL_NEGATIVE
        else:
            label = L.LABEL_SIMILAR
    return L.LABEL_NAMES[label]


# ------------------------------------------------------------------------------------- images
def load_hr(path, size=None):
    """Read an image as (H, W, 3) float32 RGB; with ``size``: shorter side resized to it, centre N x N crop."""
    from iqa_plugin.utils.image import read_image

    img = read_image(path)[0].permute(1, 2, 0).numpy()
    if size:
        h, w = img.shape[:2]
        f = size / min(h, w)
        if f != 1:
            nh, nw = max(size, round(h * f)), max(size, round(w * f))
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_CUBIC)
        h, w = img.shape[:2]
        top, left = (h - size) // 2, (w - size) // 2
        img = img[top:top + size, left:left + size]
    return np.ascontiguousarray(np.clip(img, 0, 1), dtype=np.float32)


# ------------------------------------------------------------------------------------- the set
def _check_inputs(src, files, size, candidates, disagree, set_name):
    """ValueError for an argument out of range or no images, before anything is written."""
    if not files:
        raise ValueError(f'make-multigt: no images in {src}')
    if size is not None and int(size) < 16:
        raise ValueError(f'make-multigt: --size {size} is below the 16 px minimum of the distortion engine')
    if not 1 <= int(candidates) <= 98:
        raise ValueError(f'make-multigt: candidates must be in 1..98, got {candidates}')
    if not 0 <= float(disagree) <= 1:
        raise ValueError(f'make-multigt: disagree must be in [0, 1], got {disagree}')
    if not set_name or Path(set_name).name != set_name or set_name in ('.', '..'):
        raise ValueError(f'make-multigt: --set must be a plain folder name, got {set_name!r}')


def _candidate(hr, name, folder, rng, disagree, images, votes):
    """Render, write and annotate one enhanced candidate of ``hr`` (the annotators' votes go into ``votes``);
    returns (majority label, its entry in the group's metadata)."""
    true_class = CLASSES[rng.choice(len(CLASSES), p=CLASS_PROBS)]
    ops = OPERATIONS[true_class]
    op, (lo, hi) = ops[rng.integers(len(ops))]
    strength = float(rng.uniform(lo, hi))
    cand = render(hr, op, strength, np.random.default_rng(rng.integers(2 ** 63)))
    fname = f'{name}_{folder}.png'
    write_image(images / folder / fname, cand)
    key = L.picture_key(folder)
    for a in L.ANNOTATORS:
        votes[a][key] = {'Name': f'{name}_{folder}', 'File': fname, 'Label': annotate(true_class, rng, disagree)}
    vote = L.majority_vote([votes[a][key]['Label'] for a in L.ANNOTATORS])
    entry = {'folder': folder, 'file': fname, 'op': op, 'strength': round(strength, 6),
             'true_label': L.LABEL_NAMES[true_class], 'label': L.LABEL_NAMES[vote],
             'votes': [votes[a][key]['Label'] for a in L.ANNOTATORS]}
    return vote, entry


def _group(path, ss, size, folders, disagree, images, labels):
    """One HR image: its original, its candidates and every annotator's label file; returns
    (the group's metadata, the candidates' majority labels)."""
    name = path.stem
    rng = np.random.default_rng(ss)
    hr = quantise8(load_hr(path, size))
    write_image(images / L.ORIGINAL / f'{name}.png', hr)
    votes = {a: {} for a in L.ANNOTATORS}
    group = {'name': name, 'source': str(path), 'candidates': []}
    majority = []
    for folder in folders:
        vote, entry = _candidate(hr, name, folder, rng, disagree, images, votes)
        majority.append(vote)
        group['candidates'].append(entry)
    for a in L.ANNOTATORS:
        p = labels / a / f'{name}.json'
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(votes[a], indent=2) + '\n', encoding='utf-8')
    return group, majority


def make_multigt(src, out, set_name='train', seed=0, size=None, candidates=4, disagree=0.2, limit=None):
    """Write a multi-GT set in HGGT's layout (module docstring) from the images in ``src``.

    Args:
        src: folder of HR images (sorted; ``limit`` takes the first ones).
        out: output root; images/<set>, labels/<set> and meta/<set>.json are written (existing files of
            the same names are replaced).
        size (int | None): shorter side resized to it and a centre square crop; None keeps the images.
        candidates (int): enhanced versions per image (HGGT: 4), in folders 01, 02, ...
        disagree (float): each annotator's probability of reporting a neighbouring class.

    Returns a summary dict: 'groups', 'label_counts' (majority labels), 'without_positive', 'images',
    'labels', 'meta' (paths).
    """
    from iqa_plugin.utils.image import list_images

    src, out = Path(src), Path(out)
    files = list_images(src)
    if limit:
        files = files[:int(limit)]
    _check_inputs(src, files, size, candidates, disagree, set_name)
    images, labels = out / 'images' / set_name, out / 'labels' / set_name
    folders = [f'{k:02d}' for k in range(1, int(candidates) + 1)]
    seqs = np.random.SeedSequence(int(seed)).spawn(len(files))
    meta = {'format': 'iqa_plugin.make_multigt/1', 'seed': int(seed), 'size': size, 'disagree': float(disagree),
            'src': str(src), 'groups': []}
    counts = {name: 0 for name in L.LABEL_STRINGS}
    without_positive = 0
    names = set()
    for path, ss in zip(files, seqs):
        if path.stem in names:
            raise ValueError(f'make-multigt: two images named {path.stem} in {src}')
        names.add(path.stem)
        group, majority = _group(path, ss, size, folders, disagree, images, labels)
        for vote in majority:
            counts[L.LABEL_NAMES[vote]] += 1
        without_positive += L.LABEL_POSITIVE not in majority
        meta['groups'].append(group)
    meta_path = out / 'meta' / f'{set_name}.json'
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, indent=1) + '\n', encoding='utf-8')
    return {'groups': len(files), 'label_counts': counts, 'without_positive': without_positive,
            'images': str(images), 'labels': str(labels), 'meta': str(meta_path)}
