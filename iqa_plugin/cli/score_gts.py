"""``iqa-plugin score-gts``: image-level scores of every GT candidate, the cache of the sma/smp strategies.

    iqa-plugin score-gts -opt YAML [--out PATH] [--device cpu|cuda]

Reads the option file (``base:`` files merged), builds its training dataset (``datasets.train``, a
``MultiGTDataset``) to get exactly the candidate files training will use, and scores each whole file with
the scorer of ``train.gt_sampling.scorer`` (a scoring-table NR metric, default nr-lite), oriented higher =
better. The cache (JSON, ``iqa_plugin.models.gt_sampling.write_score_cache``) is written to ``--out``, else
to ``train.gt_sampling.scores``; it is keyed by file content sha256 and records the scorer's name and
options, so the strategy refuses it when the scorer or any file's content changed. Files whose content is
already scored by the same scorer in an existing cache at that path are not scored again.
"""
from iqa_plugin.cli.common import UsageError, check_device

NAME = 'score-gts'
HELP = 'score every GT candidate of a multi-GT training set (the sma/smp score cache)'


def add_parser(sub):
    import argparse

    p = sub.add_parser(NAME, help=HELP, description=__doc__.split('\n\n')[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('-opt', required=True, metavar='YAML', help='the training option file')
    p.add_argument('--out', metavar='PATH', help='cache file (default: train.gt_sampling.scores)')
    p.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    return p


def train_dataset_options(opt, option_file):
    """(phase, dataset options) of the training dataset, with the keys BasicSR adds (phase, scale)."""
    datasets = opt.get('datasets') or {}
    phases = [k for k in datasets if str(k).split('_')[0] == 'train']
    if not phases:
        raise UsageError(f'{option_file} has no datasets.train block')
    dopt = dict(datasets[phases[0]])
    dopt.setdefault('phase', 'train')
    dopt.setdefault('scale', opt.get('scale', 1))
    return phases[0], dopt


def dataset_files(dopt, where):
    """Every candidate file of the dataset's usable groups, in dataset order (unique paths).

    The dataset is built from BasicSR's registry with these options, so its own scanning decides which
    groups and files are used; its ``ScanResult`` (``iqa_plugin.data.multigt_layout``) lists them."""
    import iqa_plugin
    from basicsr.utils.registry import DATASET_REGISTRY

    from iqa_plugin.data import multigt_layout as layout

    iqa_plugin.register()
    name = dopt.get('type')
    if name != 'MultiGTDataset':
        raise UsageError(f'{where}.type is {name!r}; score-gts scores the candidates of a MultiGTDataset')
    dataset = DATASET_REGISTRY.get(name)(dopt)
    scans = [v for v in vars(dataset).values() if isinstance(v, layout.ScanResult)]
    groups = scans[0].groups if scans else next(
        (v for v in vars(dataset).values() if isinstance(v, list) and v and isinstance(v[0], layout.Group)), None)
    if groups is None:
        raise RuntimeError(f'{type(dataset).__name__} holds no ScanResult or list of Group to read its files from')
    files, seen = [], set()
    for g in groups:
        for p in g.paths:
            if str(p) not in seen:
                seen.add(str(p))
                files.append(str(p))
    return files


def score_files(files, scorer_name, scorer_options, device, known=None, log=print):
    """({path: sha256}, {sha256: score higher = better}); contents in ``known`` {sha256: score} are reused."""
    from iqa_plugin.weights import sha256sum
    from iqa_plugin.scoring.scorer import score_candidates
    from iqa_plugin.scoring import get_cached_metric
    from iqa_plugin.utils.image import read_image

    hashes = {p: sha256sum(p) for p in files}
    scores = {h: s for h, s in (known or {}).items() if h in set(hashes.values())}
    todo = [p for p in files if hashes[p] not in scores]
    todo = list({hashes[p]: p for p in todo}.values())  # identical contents scored once
    log(f'{len(files)} candidate files, {len(set(hashes.values()))} distinct contents, '
        f'{len(scores)} already scored, {len(todo)} to score with {scorer_name}')
    if todo:
        scorer = get_cached_metric(scorer_name, device=device, **scorer_options)
        for i, p in enumerate(todo, 1):
            scores[hashes[p]] = float(score_candidates(scorer, read_image(p)[None])[0, 0])
            if i % 100 == 0 or i == len(todo):
                log(f'  scored {i}/{len(todo)}')
    return hashes, scores


def main(args):
    from pathlib import Path

    from iqa_plugin.models import gt_sampling as gs
    from iqa_plugin.basicsr_glue.option_base import load_with_bases

    check_device(args.device)
    option_file = Path(args.opt)
    if not option_file.is_file():
        raise FileNotFoundError(f'option file not found: {option_file}')
    opt = load_with_bases(option_file)
    block = (opt.get('train') or {}).get('gt_sampling') or {}
    if isinstance(block, str):
        block = {'type': block}
    out = args.out or block.get('scores')
    if not out:
        raise UsageError(f'give --out PATH, or set train.gt_sampling.scores in {option_file}')
    scorer_name, scorer_options = gs.scorer_spec(block.get('scorer'))
    phase, dopt = train_dataset_options(opt, option_file)
    files = dataset_files(dopt, f'datasets.{phase}')
    known = None
    if Path(out).is_file():  # reuse what the same scorer already scored
        try:
            old = gs.read_score_cache(out)
        except ValueError:
            old = None
        if old and old['scorer'].get('type') == scorer_name and \
                gs.same_options(old['scorer'].get('options') or {}, scorer_options):
            known = old.get('scores')
    import torch

    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    hashes, scores = score_files(files, scorer_name, scorer_options, device, known)
    gs.write_score_cache(out, scorer_name, scorer_options, hashes, scores, option_file=str(args.opt))
    print(f'wrote {out}: {len(hashes)} files scored by {scorer_name} {scorer_options} (higher is better)')
    return 0
