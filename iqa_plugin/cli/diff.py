"""``iqa-plugin diff``: what changed between two sets of images, or two checkpoints, axis by axis.

    iqa-plugin diff A B [--ref GT] [--out DIR] [--json] [--device cpu|cuda] [--weights PATH]
    iqa-plugin diff --nets NET_A NET_B -opt OPTIONS [--val NAME] [--out DIR] [--json]

A and B are two folders of outputs (at least two images each, matched by file name: the same name, else the same
stem, else the same name once each folder's common '_<suffix>' is removed, as BasicSR's '<name>_<iter>.png'; with
--ref, as 'iqa-plugin evaluate' matches results to GTs), or two image files. For B relative to A, the relational
network's signed maps P(B, A) on the 8 distortion axes give per axis the mean signed intensity over the images,
its share of the total change and whether it is above the axis's noise floor, and per image the axes that moved
most; first in one sentence, then as a table. --ref GT adds each side's relational score against the reference.
--nets runs two SR checkpoints (BasicSR net_g files, or LoRA adapters with their recorded base) on the validation
set of an option file (network_g and datasets.val) and diffs their outputs, the set's GTs as the reference.
--out DIR writes <image>_diff.png per image (A, B, the maps of the axes that moved), axes.png (the per-axis
means) and summary.json; --json prints one JSON object as the last line. Sign convention and noise floor:
docs/guides/diff.md.
"""
import json
from pathlib import Path

from iqa_plugin.cli.common import UsageError

NAME = 'diff'
HELP = 'what changed between two folders of outputs or two checkpoints, axis by axis (relational maps)'
MIN_SIDE = 16  # the relational network's minimum image side


def add_parser(sub):
    import argparse

    p = sub.add_parser(NAME, help=HELP, description=__doc__.split('\n\n')[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('paths', nargs='*', metavar='A B', help='two folders of outputs, or two images')
    p.add_argument('--ref', metavar='GT', help='reference image or folder: each side\'s relational score against it')
    p.add_argument('--nets', nargs=2, metavar=('NET_A', 'NET_B'), help='two checkpoints (net_g or LoRA adapter)')
    p.add_argument('-opt', '--opt', dest='opt', metavar='OPTIONS', help='option file of --nets (network_g, datasets.val)')
    p.add_argument('--val', metavar='NAME', help='--nets: the validation set by name (default: the first)')
    p.add_argument('--out', metavar='DIR', help='write a figure per image, axes.png and summary.json here')
    p.add_argument('--json', action='store_true', help='print one JSON object as the last line')
    p.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    p.add_argument('--weights', metavar='PATH', help='relational weights file (default: the packaged one)')
    return p


# ---------------------------------------------------------------------------------------- matching
def _common_suffix(files):
    """'_<token>' that every file's stem ends with (BasicSR's '<name>_<iter>'), else ''."""
    tails = {p.stem.rsplit('_', 1)[1] if '_' in p.stem else None for p in files}
    return f'_{tails.pop()}' if len(tails) == 1 and None not in tails else ''


def _keyed(files, key):
    out = {}
    for p in files:
        k = key(p)
        if k in out or not k:
            return None  # two files for one key: this rule cannot match them
        out[k] = p
    return out


def match_folders(a_dir, a_files, b_dir, b_files):
    """{key: (a_path, b_path)}: same file name, else same stem, else same stem without each folder's common
    '_<suffix>'. UsageError naming the unmatched files when no rule pairs every file of both folders."""
    sa, sb = _common_suffix(a_files), _common_suffix(b_files)
    rules = [(lambda p: p.name, lambda p: p.name), (lambda p: p.stem, lambda p: p.stem)]
    for x, y in ((sa, sb), (sa, ''), ('', sb)):
        if x or y:
            rules.append((lambda p, s=x: p.stem[:len(p.stem) - len(s)], lambda p, s=y: p.stem[:len(p.stem) - len(s)]))
    for ka, kb in rules:
        ma, mb = _keyed(a_files, ka), _keyed(b_files, kb)
        if ma is not None and mb is not None and set(ma) == set(mb):
            return {k: (ma[k], mb[k]) for k in sorted(ma)}
    ma, mb = _keyed(a_files, lambda p: p.stem) or {}, _keyed(b_files, lambda p: p.stem) or {}
    only_a = sorted(ma[k].name for k in set(ma) - set(mb))
    only_b = sorted(mb[k].name for k in set(mb) - set(ma))
    raise UsageError(f'{a_dir} and {b_dir} do not match by file name: {len(only_a)} image(s) of A without a partner '
                     f'in B ({", ".join(only_a[:3])}{", ..." if len(only_a) > 3 else ""}), {len(only_b)} of B without '
                     f'one in A ({", ".join(only_b[:3])}{", ..." if len(only_b) > 3 else ""})')


def _match_to_gt(folder, ref_dir):
    """{GT stem: result file} of ``folder`` by ``iqa-plugin evaluate``'s rule; every file must match."""
    from iqa_plugin.apps.evaluate import EvaluateError, match_results
    from iqa_plugin.utils.image import list_images

    gt_names = [p.stem for p in list_images(ref_dir)]
    if not gt_names:
        raise UsageError(f'no images in reference folder {ref_dir}')
    try:
        matched, unmatched = match_results(folder, gt_names)
    except EvaluateError as e:
        raise UsageError(str(e)) from None
    if unmatched:
        p, why = unmatched[0]
        raise UsageError(f'{len(unmatched)} image(s) of {folder} match no reference in {ref_dir}: {p.name} ({why})')
    return matched


def image_pairs(a, b, ref=None):
    """[(name, a_path, b_path, ref_path or None)] of the command's A, B (and --ref); checks names, not images."""
    from iqa_plugin.utils.image import list_images

    a, b = Path(a), Path(b)
    for p in (a, b) + ((Path(ref),) if ref else ()):
        if not p.exists():
            raise FileNotFoundError(f'not found: {p}')
    if a.is_dir() != b.is_dir():
        raise UsageError(f'A and B must both be folders or both be image files: {a}, {b}')
    if not a.is_dir():
        if ref and Path(ref).is_dir():
            raise UsageError(f'A and B are image files, so --ref must be one too: {ref}')
        return [(b.name, a, b, Path(ref) if ref else None)]
    files = {}
    for side, folder in (('A', a), ('B', b)):
        found = list_images(folder)
        if not found:
            raise UsageError(f'no images in folder {folder} ({side})')
        if len(found) == 1:
            raise UsageError(f'folder {folder} ({side}) holds one image ({found[0].name}); diff averages over a set of '
                             f'outputs: give at least two, or the two image files to compare one pair')
        files[side] = found
    if ref:
        ref = Path(ref)
        if not ref.is_dir():
            raise UsageError(f'A and B are folders, so --ref must be a folder of references: {ref}')
        ma, mb = _match_to_gt(a, ref), _match_to_gt(b, ref)
        if set(ma) != set(mb):
            only_a, only_b = sorted(set(ma) - set(mb)), sorted(set(mb) - set(ma))
            raise UsageError(f'A and B cover different references: only in A {only_a[:3]}, only in B {only_b[:3]}')
        by_stem = {p.stem: p for p in list_images(ref)}
        return [(ma[k].name if ma[k].stem == k else f'{k}{ma[k].suffix}', ma[k], mb[k], by_stem[k]) for k in sorted(ma)]
    return [(pa.name, pa, pb, None) for pa, pb in match_folders(a, files['A'], b, files['B']).values()]


def _size(path):
    """(height, width) of an image file, from its header where PIL reads it, else by decoding it."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
        return h, w
    except Exception:  # noqa: BLE001  (a format PIL does not know: OpenCV decides below)
        from iqa_plugin.utils.image import read_image

        return tuple(read_image(path).shape[-2:])


def check_sizes(pairs):
    """ValueError (one line) for a pair of different sizes or an image smaller than the network's minimum."""
    for name, pa, pb, pr in pairs:
        sa, sb = _size(pa), _size(pb)
        if sa != sb:
            raise ValueError(f'size mismatch for {name}: A {pa} is {sa[0]}x{sa[1]}, B {pb} is {sb[0]}x{sb[1]}')
        if min(sa) < MIN_SIDE:
            raise ValueError(f'{pa} is {sa[0]}x{sa[1]}: smaller than the relational network\'s minimum side of '
                             f'{MIN_SIDE} px')
        if pr is not None and _size(pr) != sa:
            sr = _size(pr)
            raise ValueError(f'size mismatch for {name}: reference {pr} is {sr[0]}x{sr[1]}, A and B are {sa[0]}x{sa[1]}')


# ---------------------------------------------------------------------------------------- networks (--nets)
def _load_options(opt_path):
    from iqa_plugin.basicsr_glue.options_check import load_yaml

    opt = load_yaml(opt_path)
    if not isinstance(opt.get('network_g'), dict) or 'type' not in opt['network_g']:
        raise UsageError(f'{opt_path} has no network_g block with a type')
    return opt


def val_pairs(opt_path, val_name=None):
    """([(name, lq (1, 3, h, w), gt (1, 3, H, W) or None)], dataset name) of the option file's validation set."""
    from basicsr.utils.registry import DATASET_REGISTRY

    import iqa_plugin
    from iqa_plugin.basicsr_glue.options_check import lookup

    iqa_plugin.register()
    opt = _load_options(opt_path)
    sets = [(k, d) for k, d in (opt.get('datasets') or {}).items() if k.split('_')[0] == 'val' and isinstance(d, dict)]
    if not sets:
        raise UsageError(f'{opt_path} has no datasets.val block')
    if val_name is not None:
        chosen = [(k, d) for k, d in sets if val_name in (k, d.get('name'))]
        if not chosen:
            raise UsageError(f"no validation set named '{val_name}' in {opt_path}; its sets: "
                             f"{', '.join(str(d.get('name', k)) for k, d in sets)}")
        sets = chosen
    key, dopt = sets[0]
    dopt = dict(dopt, phase='val', scale=opt.get('scale', 1))
    dopt.setdefault('io_backend', {'type': 'disk'})
    for k, v in dopt.items():
        if k.startswith('dataroot'):
            for p in (v if isinstance(v, list) else [v]):
                if isinstance(p, str) and not Path(p).expanduser().exists():
                    raise FileNotFoundError(f'datasets.{key}.{k}: not found: {p}')
    cls = lookup(DATASET_REGISTRY, dopt.get('type'))
    if cls is None:
        raise UsageError(f"datasets.{key}: unknown dataset type '{dopt.get('type')}'")
    try:
        dataset = cls(dopt)
    except (AssertionError, KeyError, ValueError, TypeError) as e:  # BasicSR checks its folders with assert
        raise UsageError(f"datasets.{key}: cannot build {dopt.get('type')}: {' '.join(str(e).split()) or type(e).__name__}")
    out = []
    for i in range(len(dataset)):
        item = dataset[i]
        name = Path(item.get('lq_path') or item.get('gt_path') or f'{i:04d}.png').name
        gt = item.get('gt')
        out.append((name, item['lq'][None].float(), None if gt is None else gt[None].float()))
    if not out:
        raise UsageError(f'the validation set {dopt.get("name", key)} of {opt_path} is empty')
    return out, dopt.get('name', key)


def _build(network_opt, where):
    """The network of a ``network_g`` block; UsageError (one line) for an unknown type or wrong arguments."""
    from basicsr.utils.registry import ARCH_REGISTRY

    from iqa_plugin.models import lora
    from iqa_plugin.basicsr_glue.options_check import lookup

    if lookup(ARCH_REGISTRY, network_opt.get('type')) is None:
        raise UsageError(f"{where}: unknown network type '{network_opt.get('type')}'")
    try:
        return lora.build_network_cpu(network_opt)
    except TypeError as e:
        raise UsageError(f'{where}: {e}') from e


def load_net(path, opt_path, device='cpu'):
    """(network in eval mode on ``device``, how it was loaded) from a BasicSR net_g file or a LoRA adapter.

    A net_g file: ``network_g`` of the option file, weights ``path.param_key_g`` when set, else ``params_ema`` when
    the file has it (the EMA that BasicSR validates), else ``params``. A LoRA adapter: the arch and the base file
    recorded in it (``iqa_plugin.models.lora``), its hash checked, the adapter folded in.
    """
    import iqa_plugin
    from iqa_plugin.models import lora

    iqa_plugin.register()
    opt = _load_options(opt_path)
    if not Path(path).is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        obj = lora.read_weights(path)
        if lora.is_adapter(obj):
            meta = obj[lora.META_KEY]
            base_path = meta.get('base_path')
            if not base_path or not Path(base_path).is_file():
                raise UsageError(f'{path} is a LoRA adapter whose recorded base net_g is not found: {base_path}')
            base = lora.base_params(lora.read_weights(base_path), meta.get('base_param_key') or 'params', base_path)
            net = _build(meta['network_g'], f'network_g recorded in {path}')
            lora.load_base(net, base, base_path)
            lora.apply_adapter(net, obj, lora.base_state_dict(net), path)
            merged = lora.merged_state_dict(net)
            net = _build(meta['network_g'], f'network_g recorded in {path}')
            net.load_state_dict(merged, strict=True)
            how = f'LoRA adapter (rank {meta["rank"]}) on {base_path}'
        else:
            key = (opt.get('path') or {}).get('param_key_g') or ('params_ema' if 'params_ema' in obj else 'params')
            state = lora.base_params(obj, key, path)
            net = _build(opt['network_g'], f'network_g of {opt_path}')
            lora.load_base(net, state, path)
            how = f'{key if key in obj else "params"} of {opt["network_g"]["type"]}'
    except lora.LoRAError as e:
        raise UsageError(str(e)) from e
    return net.eval().to(device), how


# ---------------------------------------------------------------------------------------- report
def table(summary):
    """The per-axis table and the per-image lines (text)."""
    from iqa_plugin.labels.distortions import AXES

    lines = [f'{"axis":<13}{"mean B-A":>10}{"share":>8}{"floor":>8}  changed']
    for a in AXES:
        lines.append(f'{a:<13}{summary["axes"][a]:>+10.3f}{summary["share"][a]:>8.0%}{summary["floor"][a]:>8.3f}  '
                     f'{"yes" if summary["changed"][a] else "-"}')
    ref = summary.get('reference')
    if ref:
        lines.append(f'relational score vs the reference (higher is better): A {ref["relational_a"]:.3f}, '
                     f'B {ref["relational_b"]:.3f} (B - A {ref["difference"]:+.3f}, floor {ref["score_floor"]:.3f})')
    lines.append('per image, the axes that moved most (above the noise floor):')
    width = max(len(n) for n in summary['per_image'])
    for name, e in summary['per_image'].items():
        moved = ', '.join(f'{a} {v:+.3f}' for a, v in e['moved']) or 'none'
        score = f'   relational A {e["relational_a"]:.3f} B {e["relational_b"]:.3f}' if 'relational_a' in e else ''
        lines.append(f'  {name:<{width}}  {moved}{score}')
    return '\n'.join(lines)


class _Staging:
    """Figures are written to a temporary folder and moved into --out only when the whole run succeeded."""

    def __init__(self, out):
        import tempfile

        self.out = Path(out) if out else None
        self.dir = Path(tempfile.mkdtemp(prefix='iqa-plugin-diff-')) if out else None
        self.files = []

    def write(self, name, rgb):
        if self.dir is not None:
            from iqa_plugin.scoring.axes import write_png

            write_png(self.dir / name, rgb)
            self.files.append(name)

    def write_json(self, name, obj):
        if self.dir is not None:
            (self.dir / name).write_text(json.dumps(obj, indent=1) + '\n')
            self.files.append(name)

    def commit(self):
        import os
        import shutil

        if self.dir is None:
            return []
        self.out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in self.files:
            tmp = self.out / f'.{name}.tmp{os.getpid()}'
            shutil.copyfile(self.dir / name, tmp)
            os.replace(tmp, self.out / name)  # each file is either the old one or the new one, never half
            written.append(str(self.out / name))
        return written

    def cleanup(self):
        import shutil

        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


def _figure_axes(diff, item):
    from iqa_plugin.labels.distortions import AXES

    moved = [a for a, _ in diff.moved(item)]
    if moved:
        return moved, ''
    order = sorted(range(len(AXES)), key=lambda k: -abs(item.means[k]))
    return [AXES[k] for k in order[:2]], ' (no axis above its noise floor: the two largest shown)'


def _stem(name):
    return Path(name).stem


def main(args):
    if args.nets:
        if args.paths:
            raise UsageError('give either A B or --nets NET_A NET_B, not both')
        if not args.opt:
            raise UsageError('--nets needs -opt OPTIONS (the network_g and datasets.val of the checkpoints)')
        if args.ref:
            raise UsageError('--nets takes the references from the validation set; --ref is for A B')
    else:
        if args.opt or args.val:
            raise UsageError('-opt and --val are options of --nets')
        if len(args.paths) != 2:
            raise UsageError(f'diff needs two folders or images A B (got {len(args.paths)}), or --nets NET_A NET_B')
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f'--out exists and is not a folder: {args.out}')
    import torch

    from iqa_plugin.scoring.axes import AxisDiff, bar_chart, diff_figure, relational_scorer, sentence
    from iqa_plugin.cli.common import check_device

    device = check_device(args.device) or ('cuda' if torch.cuda.is_available() else 'cpu')
    if args.nets:
        for p in args.nets:
            if not Path(p).is_file():
                raise FileNotFoundError(f'checkpoint not found: {p}')
        items, set_name = val_pairs(args.opt, args.val)
        net_a, how_a = load_net(args.nets[0], args.opt, device)
        net_b, how_b = load_net(args.nets[1], args.opt, device)
        header = [f'A: {args.nets[0]} ({how_a})', f'B: {args.nets[1]} ({how_b})',
                  f'on the validation set {set_name} of {args.opt} ({len(items)} images; reference: its GT)']
        names = {'a': str(args.nets[0]), 'b': str(args.nets[1]), 'options': str(args.opt), 'val': set_name}
    else:
        pairs = image_pairs(args.paths[0], args.paths[1], args.ref)
        check_sizes(pairs)  # every name and size checked before any network runs or anything is written
        header = [f'A: {args.paths[0]}', f'B: {args.paths[1]}'] + ([f'reference: {args.ref}'] if args.ref else [])
        names = {'a': str(args.paths[0]), 'b': str(args.paths[1]), 'ref': args.ref}
    scorer = relational_scorer(device, args.weights)
    diff = AxisDiff()
    staging = _Staging(args.out)
    try:
        if args.nets:
            for name, lq, gt in items:
                with torch.no_grad():
                    a = net_a(lq.to(device)).float().clamp(0, 1)
                    b = net_b(lq.to(device)).float().clamp(0, 1)
                if gt is not None and tuple(gt.shape) != tuple(a.shape):
                    raise ValueError(f'{name}: the networks output {a.shape[-2]}x{a.shape[-1]}, its GT is '
                                     f'{gt.shape[-2]}x{gt.shape[-1]}')
                if min(a.shape[-2:]) < MIN_SIDE:
                    raise ValueError(f'{name}: the output is {a.shape[-2]}x{a.shape[-1]}, smaller than the relational '
                                     f'network\'s minimum side of {MIN_SIDE} px')
                _one(diff, scorer, staging, name, a, b, gt, diff_figure,
                     labels=(f'A {Path(args.nets[0]).stem}', f'B {Path(args.nets[1]).stem}'))
        else:
            from iqa_plugin.utils.image import read_image

            for name, pa, pb, pr in pairs:
                _one(diff, scorer, staging, name, read_image(pa), read_image(pb),
                     read_image(pr) if pr is not None else None, diff_figure)
        summary = diff.summary()
        text = sentence(summary)
        who = f' (A {Path(args.nets[0]).stem}, B {Path(args.nets[1]).stem})' if args.nets else ''
        staging.write('axes.png', bar_chart(summary, title=f'B relative to A{who}: mean over {summary["images"]} images'))
        result = {**names, **summary, 'sentence': text}
        staging.write_json('summary.json', result)
        written = staging.commit()
    finally:
        staging.cleanup()
    print('\n'.join(header))
    print(f'{text}.')
    print()
    print(table(summary))
    if written:
        print(f'wrote {len(written)} files to {args.out} ({len(written) - 2} figures, axes.png, summary.json)')
    if args.json:
        print(json.dumps({**result, 'files': written}))
    return 0


def _one(diff, scorer, staging, name, a, b, ref, diff_figure, labels=('A', 'B')):
    item, maps = diff.add(scorer, name, a, b, ref)
    if staging.dir is not None:
        axes, note = _figure_axes(diff, item)
        title = f'{name}: B relative to A{note}'
        fname = f'{_stem(name)}_diff.png'
        if fname in staging.files:  # two inputs with one stem (x.png, x.jpg)
            fname = f'{name.replace(".", "_")}_diff.png'
        staging.write(fname, diff_figure(a, b, maps, axes, title=title, labels=labels))
