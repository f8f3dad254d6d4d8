"""Multi-GT sets on disk: the label constants, HGGT's majority vote and the scanning of the two layouts.

A *group* is one training image with N ground-truth candidates: index 0 the original, then the
enhanced versions in the sorted order of their folders ('01', '02', ...). ``MultiGTDataset`` serves
them; ``iqa-plugin make-multigt`` writes synthetic sets in the HGGT layout.

Labels (the multi-GT contract, shared with the GT strategies and the models)::

    LABEL_NEGATIVE = -1, LABEL_SIMILAR = 0, LABEL_POSITIVE = 1, LABEL_ORIGINAL = 2 (index 0)

HGGT layout (Chen et al., CVPR 2023; the published Train/ and Test-100 folders)::

    images/<set>/original/<name>.png
    images/<set>/01/<name>_01.png ... images/<set>/04/<name>_04.png   (or <name>.png)
    labels/<set>/{A,B,C}/<name>.json

Each JSON (one per annotator A, B, C) maps ``Picture_2`` .. ``Picture_5`` to ``{"Name", "File",
"Label"}``; ``Picture_k`` is the candidate of folder ``0(k-1)`` and ``Label`` is one of 'Positive',
'Similar', 'Negative' (the strings HGGT's own loader compares against). HGGT's loader builds file names
by convention (``<name>_0k.png``) and never reads Name/File; here ``File`` (if present, else the
convention ``<name>_0k.png``, else ``<name>.png``) is the file inside the candidate folder, and both
``File`` and ``Name`` must stay inside the set's image folder. Majority vote over the three
annotators: two or three equal labels give that label; three different labels give Similar.

Generic layout: ``<root>/<original_folder>/<file>`` and one more folder per candidate with the same file
names; labels optional, from a CSV file of rows ``name,candidate,label`` (name: the file name or its
stem; candidate: the folder name; label: Positive/Similar/Negative, any case, or -1/0/1; a header row
is allowed). A candidate without a label is Similar.

Bad input is skipped per group, never fatal: a missing candidate or label file, malformed JSON (or a
bad CSV row), an unknown label, a File/Name (or a symlink) resolving outside the set's folder, an
unreadable image, mismatched candidate sizes. Each skipped group yields ONE ``Skip`` record naming
the offending file; ``ScanResult.skip_counts()`` counts them by reason for the start-up log.
"""
import csv
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

LABEL_NEGATIVE = -1
LABEL_SIMILAR = 0
LABEL_POSITIVE = 1
LABEL_ORIGINAL = 2

LABEL_STRINGS = {'Positive': LABEL_POSITIVE, 'Similar': LABEL_SIMILAR, 'Negative': LABEL_NEGATIVE}
LABEL_NAMES = {LABEL_POSITIVE: 'Positive', LABEL_SIMILAR: 'Similar', LABEL_NEGATIVE: 'Negative',
               LABEL_ORIGINAL: 'Original'}
ANNOTATORS = ('A', 'B', 'C')
ORIGINAL = 'original'
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm')

# skip reasons, in the order the start-up log lists them
SKIP_REASONS = {
    'missing_file': 'missing file',
    'bad_json': 'malformed label file',
    'unknown_label': 'unknown label',
    'outside': 'path outside the set',
    'unreadable': 'unreadable image',
    'size_mismatch': 'mismatched sizes',
    'missing_lq': 'missing LQ file',
    'too_small': 'smaller than gt_size',
}


class BadGroup(Exception):
    """One group cannot be used: ``reason`` (a key of ``SKIP_REASONS``), ``path`` (the file), message."""

    def __init__(self, reason, path, message):
        super().__init__(f'{message}: {path}')
        self.reason, self.path, self.message = reason, str(path), message


@dataclass
class Skip:
    group: str
    reason: str
    path: str
    message: str

    def line(self):
        """The one warning line for this group."""
        return f"skipped group '{self.group}' ({SKIP_REASONS[self.reason]}): {self.message}: {self.path}"


@dataclass
class Group:
    """One usable group: ``paths[i]``/``labels[i]`` for candidate ``i`` (0 = original, LABEL_ORIGINAL)."""
    name: str
    paths: list
    labels: list
    size: tuple = None  # (h, w) of the candidates when sizes were checked


@dataclass
class ScanResult:
    groups: list
    candidate_names: list  # ['original', '01', ...]: the same N for every group
    skipped: list = field(default_factory=list)  # Skip records, one per skipped group

    def skip_counts(self):
        """{reason: count} of the skipped groups."""
        return dict(Counter(s.reason for s in self.skipped))


# ------------------------------------------------------------------------------------------ labels
def parse_label(value):
    """A label string ('Positive', 'Similar', 'Negative', any case) or int (-1, 0, 1) -> the constant.

    Raises ValueError for anything else."""
    if isinstance(value, str):
        v = value.strip()
        for name, const in LABEL_STRINGS.items():
            if v.lower() == name.lower():
                return const
        if re.fullmatch(r'[+-]?\d+', v):
            value = int(v)
    if isinstance(value, int) and not isinstance(value, bool) and value in LABEL_NAMES and value != LABEL_ORIGINAL:
        return value
    raise ValueError(f'unknown label {value!r} (expected Positive, Similar or Negative)')


def majority_vote(labels):
    """HGGT's rule over the annotators' labels (strings or constants): a label given by at least two
    annotators wins; when all three differ the result is LABEL_SIMILAR.

    >>> majority_vote(['Positive', 'Negative', 'Positive'])
    1
    >>> majority_vote(['Positive', 'Negative', 'Similar'])
    0
    """
    consts = [parse_label(v) for v in labels]
    if not consts:
        raise ValueError('majority_vote needs at least one label')
    (top, count), = Counter(consts).most_common(1)
    if len(consts) > 1 and count == 1:
        return LABEL_SIMILAR
    return top


# ------------------------------------------------------------------------------------------ paths
def _inside(path, root_resolved):
    try:
        Path(os.path.realpath(path)).relative_to(root_resolved)
    except ValueError:
        return False
    return True


def _check_inside(value, folder, set_root, where):
    """``value`` (a JSON string) must be a relative path that stays inside ``set_root`` (lexical, unresolved)
    from ``folder``."""
    if not isinstance(value, str) or not value.strip():
        raise BadGroup('bad_json', where, f'empty or non-string file entry {value!r}')
    if os.path.isabs(value) or re.match(r'^[A-Za-z]:[\\/]', value) or value.startswith(('/', '\\')):
        raise BadGroup('outside', where, f'absolute path {value!r}')
    lexical = os.path.normpath(os.path.abspath(folder / value.replace('\\', '/')))
    try:  # lexical here ('../'); symlinks are resolved when the files themselves are checked
        Path(lexical).relative_to(os.path.abspath(set_root))
    except ValueError:
        raise BadGroup('outside', where, f'{value!r} resolves outside the set folder {set_root}') from None


def _find_image(folder, stem):
    """The file ``folder/stem.<ext>`` for the first image extension that exists, else None."""
    for ext in IMAGE_EXTENSIONS:
        p = folder / f'{stem}{ext}'
        if p.is_file():
            return p
    return None


def image_size(path):
    """(h, w) from the image header (PIL reads no pixels); raises BadGroup('unreadable')."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # noqa: BLE001  (any decoder error means the file cannot be used)
        raise BadGroup('unreadable', path, f'cannot read image ({type(e).__name__})') from None
    return h, w


def check_group_files(paths, set_root, check_sizes=True):
    """Existence, containment (symlinks resolved) and equal sizes of a group's files; returns (h, w) or None."""
    size = None
    for p in paths:
        if not os.path.lexists(p) or (os.path.islink(p) and not os.path.exists(p)):
            raise BadGroup('missing_file', p, 'missing candidate file')
        if not _inside(p, set_root):
            raise BadGroup('outside', p, f'file resolves outside the set folder {set_root}')
        if not Path(p).is_file():
            raise BadGroup('missing_file', p, 'not a file')
    if check_sizes:
        for p in paths:
            s = image_size(p)
            if size is None:
                size = s
            elif s != size:
                raise BadGroup('size_mismatch', p, f'size {s[0]}x{s[1]} differs from the original\'s '
                                                   f'{size[0]}x{size[1]}')
    return size


def list_image_stems(folder):
    """Sorted image files directly in ``folder`` (a dict stem -> path; the first extension wins)."""
    out = {}
    for p in sorted(Path(folder).iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS and (p.is_file() or p.is_symlink()):
            out.setdefault(p.stem, p)
    return out


# ------------------------------------------------------------------------------------------ HGGT
def resolve_hggt_dirs(dataroot=None, set_name=None, images=None, labels=None):
    """The (images_dir, labels_dir) of one HGGT set.

    Either ``images`` (the folder holding original/, 01/, ...) and ``labels`` (the folder holding A/, B/,
    C/), or ``dataroot`` holding images/ and labels/: with ``set_name`` -> images/<set>, labels/<set>;
    without, images/ itself when it holds original/ (HGGT's Test-100), else its only subfolder."""
    if images is not None or labels is not None:
        if images is None or labels is None:
            raise ValueError('MultiGTDataset (hggt): give both dataroot_gt (images) and dataroot_labels, '
                             'or dataroot (with images/ and labels/)')
        return Path(images), Path(labels)
    if dataroot is None:
        raise ValueError('MultiGTDataset (hggt): no data folder; set dataroot (with images/ and labels/) or '
                         'dataroot_gt + dataroot_labels')
    root = Path(dataroot)
    for sub in ('images', 'labels'):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f'MultiGTDataset (hggt): folder not found: {root / sub}')
    if set_name is None:
        if (root / 'images' / ORIGINAL).is_dir():
            return root / 'images', root / 'labels'
        sets = sorted(p.name for p in (root / 'images').iterdir() if p.is_dir())
        if len(sets) != 1:
            raise ValueError(f'MultiGTDataset (hggt): {root / "images"} holds {len(sets)} sets '
                             f'({", ".join(sets) or "none"}); choose one with the option set')
        set_name = sets[0]
    return root / 'images' / set_name, root / 'labels' / set_name


def candidate_folders(images_dir, original_folder=ORIGINAL, names=None):
    """Candidate folder names (the original excluded) in sorted order, or ``names`` checked to exist."""
    images_dir = Path(images_dir)
    if not (images_dir / original_folder).is_dir():
        raise FileNotFoundError(f'MultiGTDataset: folder of the originals not found: {images_dir / original_folder}')
    if names is not None:
        names = [str(n) for n in names]
        for n in names:
            if not (images_dir / n).is_dir():
                raise FileNotFoundError(f'MultiGTDataset: candidate folder not found: {images_dir / n}')
        return names
    found = sorted(p.name for p in images_dir.iterdir() if p.is_dir() and p.name != original_folder)
    if not found:
        raise ValueError(f'MultiGTDataset: no candidate folders next to {images_dir / original_folder}')
    return found


def read_hggt_json(path):
    """Parse one annotator's JSON; raises BadGroup('missing_file' | 'bad_json')."""
    if not Path(path).is_file():
        raise BadGroup('missing_file', path, 'missing label file')
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadGroup('bad_json', path, f'malformed JSON ({type(e).__name__})') from None
    if not isinstance(data, dict):
        raise BadGroup('bad_json', path, 'malformed JSON (not an object)')
    return data


def picture_key(folder):
    """HGGT's JSON key for candidate folder '0k': 'Picture_{k+1}'."""
    return f'Picture_{int(folder) + 1}'


def _hggt_group(name, orig, images_dir, labels_dir, folders, set_root, check_sizes):
    jsons = [(labels_dir / a / f'{name}.json') for a in ANNOTATORS]
    parsed = [read_hggt_json(p) for p in jsons]
    paths, labels = [orig], [LABEL_ORIGINAL]
    for folder in folders:
        key, cdir = picture_key(folder), images_dir / folder
        votes, file_entry = [], None
        for data, jpath in zip(parsed, jsons):
            entry = data.get(key)
            if not isinstance(entry, dict) or 'Label' not in entry:
                raise BadGroup('bad_json', jpath, f'malformed JSON (no {key} with a Label)')
            for k in ('Name', 'File'):
                if entry.get(k) not in (None, ''):
                    _check_inside(entry[k], cdir, images_dir, jpath)
            if file_entry is None and entry.get('File'):
                file_entry = entry['File']
            try:
                votes.append(parse_label(entry['Label']))
            except ValueError as e:
                raise BadGroup('unknown_label', jpath, f'{key}: {e}') from None
        if file_entry is not None:
            path = cdir / file_entry.replace('\\', '/')
        else:
            path = _find_image(cdir, f'{name}_{folder}') or _find_image(cdir, name) or cdir / f'{name}_{folder}.png'
        paths.append(path)
        labels.append(majority_vote(votes))
    size = check_group_files(paths, set_root, check_sizes)
    return Group(name, paths, labels, size)


def scan_hggt(images_dir, labels_dir, check_sizes=True):
    """Scan one HGGT set (see the module docstring); returns a ScanResult."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    if not labels_dir.is_dir():
        raise FileNotFoundError(f'MultiGTDataset (hggt): label folder not found: {labels_dir}')
    folders = candidate_folders(images_dir)
    bad = [f for f in folders if not re.fullmatch(r'\d+', f)]
    if bad:
        raise ValueError(f'MultiGTDataset (hggt): candidate folders must be numbered (01, 02, ...), found '
                         f'{", ".join(bad)} in {images_dir}')
    set_root = Path(os.path.realpath(images_dir))
    result = ScanResult([], [ORIGINAL] + folders)
    for name, orig in list_image_stems(images_dir / ORIGINAL).items():
        try:
            result.groups.append(_hggt_group(name, orig, images_dir, labels_dir, folders, set_root, check_sizes))
        except BadGroup as e:
            result.skipped.append(Skip(name, e.reason, e.path, e.message))
    return result


# ------------------------------------------------------------------------------------------ generic
def read_labels_csv(path, groups, folders):
    """Rows ``name,candidate,label`` -> ({group: {folder: label}}, {group: BadGroup}).

    A bad row (unknown label, unknown candidate, wrong number of fields) marks its group bad; rows
    naming no group are ignored. The first row may be a header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'MultiGTDataset: labels CSV not found: {path}')
    by_stem = {Path(g).stem: g for g in groups}
    labels, bad = {}, {}
    with open(path, newline='', encoding='utf-8') as f:
        for lineno, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row]
            if not row or not any(row) or row[0].startswith('#'):
                continue
            if lineno == 1 and [c.lower() for c in row[:3]] == ['name', 'candidate', 'label']:
                continue
            name = row[0] if row[0] in groups else by_stem.get(Path(row[0]).stem if row[0] else row[0])
            if name is None:
                continue
            where = f'{path}:{lineno}'
            if name in bad:
                continue
            if len(row) != 3:
                bad[name] = BadGroup('bad_json', where, f'expected 3 fields name,candidate,label, got {len(row)}')
            elif row[1] not in folders:
                bad[name] = BadGroup('bad_json', where, f'unknown candidate {row[1]!r} (folders: {", ".join(folders)})')
            else:
                try:
                    labels.setdefault(name, {})[row[1]] = parse_label(row[2])
                except ValueError as e:
                    bad[name] = BadGroup('unknown_label', where, str(e))
    return labels, bad


def scan_generic(root, original_folder=ORIGINAL, folders=None, labels_csv=None, check_sizes=True):
    """Scan a generic layout (see the module docstring); returns a ScanResult."""
    root = Path(root)
    folders = candidate_folders(root, original_folder, folders)
    set_root = Path(os.path.realpath(root))
    originals = {p.name: p for p in list_image_stems(root / original_folder).values()}
    labels, bad = ({}, {}) if labels_csv is None else read_labels_csv(labels_csv, originals, folders)
    result = ScanResult([], [original_folder] + folders)
    for fname, orig in originals.items():
        stem = Path(fname).stem
        try:
            if fname in bad:
                raise bad[fname]
            paths = [orig] + [root / f / fname for f in folders]
            size = check_group_files(paths, set_root, check_sizes)
            group_labels = [LABEL_ORIGINAL] + [labels.get(fname, {}).get(f, LABEL_SIMILAR) for f in folders]
            result.groups.append(Group(stem, paths, group_labels, size))
        except BadGroup as e:
            result.skipped.append(Skip(stem, e.reason, e.path, e.message))
    return result


def find_lq(lq_dir, name):
    """The LQ file of group ``name`` in ``lq_dir`` (same stem, any image extension), or None."""
    return _find_image(Path(lq_dir), name)
