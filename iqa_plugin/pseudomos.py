"""Pseudo-MOS: quality labels without human ratings, from an ensemble of full-reference metrics.

Each member is a full-reference metric that models some form of visual masking and runs offline
(no download): pyiqa's ``nlpd``, ``gmsd``, ``fsim``, ``vsi``, ``ms_ssim`` and ``mad``; ``lpips``
(the ``lpips`` package) and ``dists`` (pyiqa's architecture) join only when their weight files are
already on disk. Scores are

1. oriented so that higher = worse: lower-is-better metrics as they are, higher-is-better similarity
   indices (value 1 for identical images) as ``1 - score``;
2. normalised per member, ``'zscore'`` or ``'rank'`` within each group of distortions of the same
   reference (content bias removed), or ``'global'`` z-score over all pairs;
3. averaged over members.

The resulting pseudo-MOS is unitless, **higher = worse**: with ``'zscore'`` each group has mean 0,
with ``'rank'`` values lie in [0, 1] (0 = best of its group). See ``docs/distortions.md``.

Command line (``python -m iqa_plugin.pseudomos``):
  ``build --dataroot DIR [DIR ...] --out FILE.pt --num G ...``  precompute a training cache;
  ``speed [--size 256] [--members ...]``                        time each member per pair.
"""
import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

CACHE_FORMAT = 'iqa_plugin.pseudomos/1'
NORMALIZATIONS = ('zscore', 'rank', 'global', 'none')


@dataclass(frozen=True)
class Member:
    """One ensemble member.

    Attributes:
        name: member name (also the pyiqa metric name for pyiqa members).
        lower_better: direction of the raw score (checked against pyiqa's at build time).
        min_size: smallest image side the implementation accepts.
        source: 'pyiqa', 'lpips' (pip package ``lpips``) or 'pyiqa-dists'.
        description: what it measures / how it models masking.
    """
    name: str
    lower_better: bool
    min_size: int = 16
    source: str = 'pyiqa'
    description: str = ''


MEMBERS = {m.name: m for m in [
    Member('nlpd', True, 16, 'pyiqa',
           'normalised Laplacian pyramid distance (Laparra et al. 2016): divisive normalisation = contrast masking'),
    Member('gmsd', True, 16, 'pyiqa',
           'gradient magnitude similarity deviation (Xue et al. 2014), luma'),
    Member('fsim', False, 16, 'pyiqa',
           'feature similarity, phase congruency + gradient + chroma (Zhang et al. 2011)'),
    Member('vsi', False, 16, 'pyiqa',
           'visual saliency-induced index, saliency + gradient + chroma (Zhang et al. 2014)'),
    Member('ms_ssim', False, 176, 'pyiqa',
           'multi-scale SSIM (Wang et al. 2003), luma; needs sides >= 176 px'),
    Member('mad', True, 16, 'pyiqa',
           'most apparent distortion (Larson & Chandler 2010): masking-based detection + appearance; slow'),
    Member('lpips', True, 16, 'lpips',
           'LPIPS v0.1 AlexNet (Zhang et al. 2018); needs torchvision AlexNet weights in the torch hub cache'),
    Member('dists', True, 16, 'pyiqa-dists',
           'DISTS (Ding et al. 2020); needs torchvision VGG16 weights and pyiqa DISTS weights in the cache'),
]}

DEFAULT_MEMBERS = ('nlpd', 'gmsd', 'fsim')
"""Default ensemble: fast on CPU, contrast masking (NLPD), structure (GMSD) and colour (FSIM, chromatic)."""


# ----------------------------------------------------------------------------------------------
# Availability (nothing is ever downloaded from here)
# ----------------------------------------------------------------------------------------------
def _torchvision_file(weights_enum):
    return Path(torch.hub.get_dir()) / 'checkpoints' / os.path.basename(weights_enum.url)


def _required_files(name):
    """Local files member ``name`` needs (empty for the pure-formula pyiqa members)."""
    if name == 'lpips':
        from torchvision.models import AlexNet_Weights

        return [_torchvision_file(AlexNet_Weights.IMAGENET1K_V1)]
    if name == 'dists':
        from torchvision.models import VGG16_Weights

        return [_torchvision_file(VGG16_Weights.IMAGENET1K_V1),
                Path(torch.hub.get_dir()) / 'pyiqa' / 'DISTS_weights-f5e65c96.pth']
    return []


def member_status(name):
    """(available, reason) for member ``name``; never downloads."""
    if name not in MEMBERS:
        raise ValueError(f"unknown pseudo-MOS member '{name}'; known: {', '.join(MEMBERS)}")
    if name == 'lpips':
        try:
            import lpips  # noqa: F401
        except ImportError:
            return False, "the 'lpips' package is not installed"
    missing = [str(p) for p in _required_files(name) if not p.is_file()]
    if missing:
        return False, 'missing weight files: ' + ', '.join(missing)
    return True, 'ok'


def available_members():
    """Names of the members that can be built now, offline."""
    return [n for n in MEMBERS if member_status(n)[0]]


def resolve_members(members=None):
    """Member names from None (``DEFAULT_MEMBERS``), 'auto' (defaults + lpips/dists when present),
    a comma-separated string or a sequence. Unknown or unavailable names raise."""
    if members is None:
        return tuple(DEFAULT_MEMBERS)
    if isinstance(members, str):
        if members == 'auto':
            return tuple(DEFAULT_MEMBERS) + tuple(n for n in ('lpips', 'dists') if member_status(n)[0])
        members = [m.strip() for m in members.split(',') if m.strip()]
    members = tuple(members)
    if not members:
        raise ValueError('the pseudo-MOS ensemble needs at least one member')
    if len(set(members)) != len(members):
        raise ValueError(f'duplicate pseudo-MOS members: {members}')
    for n in members:
        ok, reason = member_status(n)
        if not ok:
            raise FileNotFoundError(f"pseudo-MOS member '{n}' is not available offline: {reason}")
    return members


def _build_member(name, device):
    """A callable ``f(dist, ref) -> (B,) raw scores`` and its ``lower_better``."""
    spec = MEMBERS[name]
    if spec.source == 'pyiqa':
        import pyiqa

        metric = pyiqa.create_metric(name, device=device, as_loss=False).eval()
        if bool(metric.lower_better) != spec.lower_better:
            raise RuntimeError(f"pyiqa reports lower_better={metric.lower_better} for '{name}', "
                               f'the ensemble table says {spec.lower_better}')
        return (lambda d, r: metric(d, r).reshape(-1)), bool(metric.lower_better)
    if spec.source == 'lpips':
        import lpips

        net = lpips.LPIPS(net='alex', version='0.1', verbose=False).to(device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return (lambda d, r: net(d, r, normalize=True).reshape(-1)), True
    if spec.source == 'pyiqa-dists':
        from pyiqa.archs.dists_arch import DISTS

        from iqa_plugin.weights import WeightsError, load_state_dict

        net = DISTS(pretrained=False)
        path = _required_files('dists')[1]
        sd = load_state_dict(path)  # torch.load(weights_only=True)
        if not isinstance(sd, dict) or not {'alpha', 'beta'} <= set(sd):
            raise WeightsError(f'{path} does not hold the DISTS alpha/beta parameters')
        net.load_state_dict({'alpha': sd['alpha'], 'beta': sd['beta']}, strict=False)
        net = net.to(device).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return (lambda d, r: net(d, r).reshape(-1)), True
    raise ValueError(f'unknown member source {spec.source}')  # pragma: no cover


# ----------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------
def _ranks(x):
    """Average ranks (0-based) of a 1-D tensor, ties share their mean rank."""
    n = x.numel()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = torch.arange(n, dtype=torch.float64)
    uniq, inv = torch.unique(x, return_inverse=True)
    if uniq.numel() < n:  # average ties
        sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, ranks)
        counts = torch.bincount(inv, minlength=uniq.numel()).to(torch.float64)
        ranks = (sums / counts)[inv]
    return ranks


def normalize_scores(raw, groups=None, method='zscore', eps=1e-8):
    """Normalise oriented member scores.

    Args:
        raw (Tensor): (N, M) scores, higher = worse.
        groups (Tensor | None): (N,) integer reference ids; None = one group.
        method (str): 'zscore' (per group and member: mean 0, std 1; 0 for a constant column),
            'rank' (per group and member: average rank / (n - 1) in [0, 1]; 0.5 for a single item),
            'global' (z-score over all N, groups ignored) or 'none'.

    Returns:
        (N, M) float32 tensor.
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got '{method}'")
    raw = torch.as_tensor(raw)
    if raw.ndim != 2:
        raise ValueError(f'raw scores must have shape (N, M), got {tuple(raw.shape)}')
    x = raw.to(torch.float64)
    if method == 'none':
        return x.float()
    n = x.shape[0]
    if groups is None or method == 'global':
        groups = torch.zeros(n, dtype=torch.long)
    groups = torch.as_tensor(groups).reshape(-1)
    if groups.numel() != n:
        raise ValueError(f'groups has {groups.numel()} entries for {n} scores')
    out = torch.zeros_like(x)
    for g in torch.unique(groups):
        idx = (groups == g).nonzero().reshape(-1)
        xg = x[idx]
        if method in ('zscore', 'global'):
            std = xg.std(0, unbiased=False)
            z = (xg - xg.mean(0)) / std.clamp_min(eps)
            out[idx] = torch.where(std > eps, z, torch.zeros_like(z))
        else:
            k = len(idx)
            for m in range(x.shape[1]):
                out[idx, m] = _ranks(xg[:, m]) / (k - 1) if k > 1 else torch.full((k,), 0.5, dtype=torch.float64)
    return out.float()


# ----------------------------------------------------------------------------------------------
# The ensemble
# ----------------------------------------------------------------------------------------------
class PseudoMOS:
    """Ensemble of full-reference metrics giving pseudo-MOS labels (higher = worse).

    Args:
        members (None | str | sequence): see ``resolve_members``; default ``DEFAULT_MEMBERS``.
        normalize (str): default normalisation, see ``normalize_scores``.
        device (str | torch.device): where the metrics run.
        batch_size (int): pairs per metric call.

    Call ``ens(dist, ref, groups=None)`` with dist (N, 3, H, W) and ref (N, 3, H, W) or one (3, H, W)
    reference shared by all, RGB in [0, 1]; returns ``(pmos (N,), raw (N, M))``, raw oriented so that
    higher = worse and 0 = identical.
    """

    def __init__(self, members=None, normalize='zscore', device='cpu', batch_size=16):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got '{normalize}'")
        if int(batch_size) < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}')
        self.members = resolve_members(members)
        self.normalize = normalize
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.min_size = max(MEMBERS[n].min_size for n in self.members)
        self._fns = {}
        self.lower_better = {}
        for n in self.members:
            self._fns[n], self.lower_better[n] = _build_member(n, self.device)

    def _inputs(self, dist, ref):
        from iqa_plugin.utils.image import prepare_image

        dist = prepare_image(dist, name='dist', min_size=self.min_size)
        ref = prepare_image(ref, name='ref', min_size=self.min_size)
        if ref.shape[0] == 1 and dist.shape[0] > 1:
            ref = ref.expand(dist.shape[0], -1, -1, -1)
        if dist.shape != ref.shape:
            raise ValueError(f'dist and ref shapes differ: dist {tuple(dist.shape)} vs ref {tuple(ref.shape)}')
        return dist, ref

    @torch.no_grad()
    def member_scores(self, dist, ref):
        """(N, M) float32 oriented member scores (higher = worse, 0 = identical), on the CPU."""
        dist, ref = self._inputs(dist, ref)
        cols = []
        for n in self.members:
            fn, lower = self._fns[n], self.lower_better[n]
            vals = []
            for i in range(0, dist.shape[0], self.batch_size):
                d = dist[i:i + self.batch_size].to(self.device, torch.float32)
                r = ref[i:i + self.batch_size].to(self.device, torch.float32)
                vals.append(fn(d, r).detach().to('cpu', torch.float64))
            v = torch.cat(vals)
            cols.append(v if lower else 1.0 - v)
        return torch.stack(cols, 1).float()

    def __call__(self, dist, ref, groups=None, normalize=None):
        raw = self.member_scores(dist, ref)
        return combine(raw, groups, normalize or self.normalize), raw


def combine(raw, groups=None, normalize='zscore'):
    """Pseudo-MOS (N,) = mean over members of the normalised oriented scores (higher = worse)."""
    return normalize_scores(raw, groups, normalize).mean(1)


# ----------------------------------------------------------------------------------------------
# Cache files (plain tensors; read back with torch.load(weights_only=True))
# ----------------------------------------------------------------------------------------------
def build_cache(dataroot, out, num_groups, patch_size=128, group_size=8, mode='tiers', chains=1, members=None,
                store_maps=False, seed=0, engine=None, workers=0, log=print):
    """Generate ``num_groups`` groups with the distortion engine, score them and save a cache file.

    The groups are exactly the items ``PseudoMOSDataset`` would produce on the fly with the same
    options (same seed -> same file). Stored: 'ref' uint8 (G, 3, P, P), 'dist' uint8 (G, N, 3, P, P),
    'raw' float32 (G, N, M) oriented member scores, 'tier' and 'chain' int64 (G, N), optionally
    'maps' float16 (G, N, K, P, P), plus 'members', 'lower_better', 'axes', 'ref_paths' (G source
    image paths) and 'meta' (the build options).
    Normalisation is not stored: the dataset applies it when reading.

    Returns:
        Path of the written file.
    """
    from iqa_plugin.data.pseudomos_dataset import PseudoMOSDataset

    if int(num_groups) < 1:
        raise ValueError(f'num_groups must be >= 1, got {num_groups}')
    opt = {'name': 'pseudomos_build', 'type': 'PseudoMOSDataset', 'phase': 'build', 'dataroot': dataroot,
           'length': int(num_groups), 'patch_size': int(patch_size), 'group_size': int(group_size), 'mode': mode,
           'chains': int(chains), 'members': list(resolve_members(members)), 'pmos': True, 'return_maps': store_maps,
           'seed': int(seed), 'engine': dict(engine or {})}
    ds = PseudoMOSDataset(opt)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=int(workers))
    keys = ['ref', 'dist', 'raw', 'tier', 'chain'] + (['maps'] if store_maps else [])
    acc = {k: [] for k in keys}
    ref_paths = []
    t0 = time.perf_counter()
    for i, item in enumerate(loader):
        acc['ref'].append(_to_uint8(item['ref']))
        acc['dist'].append(_to_uint8(item['dist']))
        acc['raw'].append(item['raw'].float())
        acc['tier'].append(item['tier'].long())
        acc['chain'].append(item['chain'].long())
        ref_paths.append(item['ref_path'])
        if store_maps:
            acc['maps'].append(item['maps'].half())
        if log and (i + 1) % max(1, len(ds) // 10) == 0:
            el = time.perf_counter() - t0
            log(f'[pseudomos] {i + 1}/{len(ds)} groups, {el:.1f} s, {(i + 1) * ds.group_size / el:.1f} pairs/s')
    data = {k: torch.stack(v) for k, v in acc.items()}
    data.update({
        'format': CACHE_FORMAT,
        'members': list(ds.ensemble_members),
        'lower_better': [MEMBERS[m].lower_better for m in ds.ensemble_members],
        'axes': list(ds.axes),
        'ref_paths': ref_paths,
        'meta': {k: v for k, v in opt.items() if k not in ('dataroot', 'engine', 'members')}
        | {'engine': json.dumps(opt['engine'], sort_keys=True),
           'dataroot': json.dumps(dataroot if isinstance(dataroot, (list, tuple)) else [dataroot])},
    })
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + '.part')
    torch.save(data, tmp)
    os.replace(tmp, out)
    if log:
        log(f'[pseudomos] wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MiB, {len(ds)} groups of {ds.group_size}, '
            f'members {",".join(ds.ensemble_members)}) in {time.perf_counter() - t0:.1f} s')
    return out


def _to_uint8(x):
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def load_cache(path):
    """Read a cache file written by ``build_cache`` (``torch.load(weights_only=True)``) and check it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'pseudo-MOS cache not found: {path}')
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise ValueError(f'cannot read pseudo-MOS cache {path}: {e.__class__.__name__}: {str(e).splitlines()[0]}') from e
    if not isinstance(data, dict) or data.get('format') != CACHE_FORMAT:
        raise ValueError(f'{path} is not a pseudo-MOS cache (format {CACHE_FORMAT})')
    missing = [k for k in ('ref', 'dist', 'raw', 'tier', 'chain', 'members', 'axes') if k not in data]
    if missing:
        raise ValueError(f'pseudo-MOS cache {path} lacks keys: {", ".join(missing)}')
    g, n = data['dist'].shape[:2]
    if data['ref'].shape[0] != g or data['raw'].shape != (g, n, len(data['members'])) or data['tier'].shape != (g, n):
        raise ValueError(f'pseudo-MOS cache {path} has inconsistent shapes: ref {tuple(data["ref"].shape)}, '
                         f'dist {tuple(data["dist"].shape)}, raw {tuple(data["raw"].shape)}')
    return data


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _speed(args):
    import numpy as np

    from iqa_plugin.distortions import DistortionEngine, smooth_test_image

    torch.set_num_threads(args.threads)
    img = smooth_test_image(args.size)
    eng = DistortionEngine(seed=0)
    dist = torch.stack([torch.from_numpy(eng.sample(img)[0].transpose(2, 0, 1)) for _ in range(args.pairs)])
    ref = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    names = resolve_members(args.members) if args.members else available_members()
    res = {}
    for n in names:
        if args.size < MEMBERS[n].min_size:
            print(f'{n:8s} skipped: needs sides >= {MEMBERS[n].min_size}')
            continue
        ens = PseudoMOS([n], batch_size=args.pairs)
        ens.member_scores(dist[:1], ref)  # warm-up
        pairs = dist[:2] if n == 'mad' else dist
        c, w = time.process_time(), time.perf_counter()
        ens.member_scores(pairs, ref)
        res[n] = ((time.process_time() - c) / pairs.shape[0], (time.perf_counter() - w) / pairs.shape[0])
        print(f'{n:8s} {res[n][0] * 1000:9.1f} ms CPU time per {args.size}x{args.size} pair '
              f'({res[n][1] * 1000:.1f} ms wall; {pairs.shape[0]} pairs in a batch, {args.threads} thread(s))')
    print(json.dumps({'size': args.size, 'threads': args.threads,
                      'cpu_s_per_pair': {k: round(v[0], 4) for k, v in res.items()},
                      'wall_s_per_pair': {k: round(v[1], 4) for k, v in res.items()}}))
    return res


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m iqa_plugin.pseudomos', description=__doc__.split('\n')[0])
    sub = p.add_subparsers(dest='cmd', required=True)
    b = sub.add_parser('build', help='precompute a pseudo-MOS training cache')
    b.add_argument('--dataroot', nargs='+', required=True, help='folder(s) of reference images')
    b.add_argument('--out', required=True, help='output .pt file')
    b.add_argument('--num', type=int, required=True, help='number of groups (reference patches)')
    b.add_argument('--patch-size', type=int, default=128)
    b.add_argument('--group-size', type=int, default=8, help='distorted versions per reference')
    b.add_argument('--mode', choices=('tiers', 'random'), default='tiers')
    b.add_argument('--chains', type=int, default=1, help='tiers mode: independent chains per group')
    b.add_argument('--members', default=None, help="comma-separated members, or 'auto' (default: "
                   + ','.join(DEFAULT_MEMBERS) + ')')
    b.add_argument('--store-maps', action='store_true', help='also store the (K, H, W) maps (float16; large)')
    b.add_argument('--seed', type=int, default=0)
    b.add_argument('--workers', type=int, default=0)
    b.add_argument('--max-ops', type=int, default=3)
    b.add_argument('--spatial-prob', type=float, default=0.5)
    b.add_argument('--threads', type=int, default=1, help='torch threads of the main process (parallelise with '
                   '--workers; several threads per process are slower on a busy CPU)')
    s = sub.add_parser('speed', help='time each ensemble member per image pair')
    s.add_argument('--size', type=int, default=256)
    s.add_argument('--pairs', type=int, default=8)
    s.add_argument('--threads', type=int, default=1, help='torch threads')
    s.add_argument('--members', default=None, help='comma-separated (default: all available)')
    args = p.parse_args(argv)
    if args.cmd == 'build':
        torch.set_num_threads(args.threads)
        path = build_cache(args.dataroot if len(args.dataroot) > 1 else args.dataroot[0], args.out, args.num,
                           patch_size=args.patch_size, group_size=args.group_size, mode=args.mode,
                           chains=args.chains, members=args.members, store_maps=args.store_maps, seed=args.seed,
                           engine={'max_ops': args.max_ops, 'spatial_prob': args.spatial_prob},
                           workers=args.workers)
        print(json.dumps({'out': str(path)}))
        return 0
    _speed(args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
