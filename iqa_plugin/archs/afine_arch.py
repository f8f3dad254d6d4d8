"""A-FINE: full-reference quality that does not assume a perfect reference (Chen et al., CVPR 2025).

Why one file over 450 lines: the repository's rule is one network per ``*_arch.py`` with its factory; A-FINE's
naturalness, fidelity and calibration heads are parts of that one network and load from one published state dict.

Score of a test image y against a reference x (lower is better)::

    N(.)   naturalness: an MLP on the token mean/variance of the raw pixels and of the
           ReLU'd patch tokens of the 12 CLIP ViT-B/32 blocks (each block's [mean, var]
           projected 1536 -> 128 by one shared linear layer), calibrated by
           4 * sigmoid((n - eta3) / |eta4|) - 2
    F(x,y) fidelity: 1 - sum_k (alpha_k * S1_k + beta_k * S2_k) over the same 13 feature sets,
           S1 = (2 mu_x mu_y + c) / (mu_x^2 + mu_y^2 + c), S2 = (2 cov_xy + c) / (var_x + var_y + c),
           c = 1e-10, alpha/beta = softplus(.) normalised to sum 1 (a DISTS-like measure),
           calibrated by 4 * sigmoid((f - eta3) / |eta4|) - 2 with eta3 in [0.05, 0.95] and
           eta4 in [0.01, 0.70]
    D(x,y) = F(x,y) + exp(k (N(x) - N(y))) * N(y),  k = softplus(k_raw)          ('afine_all')
    score  = 100 * sigmoid((D + 1.9710) / 2.3734)                                ('afine_all_scale')

Compatible with the published weights: ``afine.pth`` (keys ``finetuned_clip``, ``natural``,
``fidelity``, ``fidelity_scale``, ``natural_scale``, ``adapter``) and OpenAI's ``ViT-B-32.pt``,
both found through ``iqa_plugin.weights`` (entries ``afine`` and ``clip-vit-b-32``).

Differences from the reference implementation (pyiqa's ``AFINE``), none of which changes the
values for inputs it accepts:

* any batch size, per-image outputs (B,);
* differentiable with respect to the inputs (no ``no_grad``); inputs are never modified;
* any size: H or W not divisible by 32 are resized with bicubic interpolation (align_corners
  False) up to the next multiple of 32 before scoring (``size_mode='resize'``, the rule of the
  A-FINE authors' inference and validation code) or reflect-padded at the bottom/right
  (``size_mode='reflect'``); sizes that are multiples of 32 are scored as they are;
* a reference of batch 1 with a test batch of B is encoded once and shared; optionally
  (``ref_cache_mib``) reference encodings are kept across calls, so re-scoring a validation set
  re-encodes only the test images;
* only the terms a ``model_type`` needs are computed (``afine_nr`` runs CLIP once);
* optional autocast of the CLIP tower (``amp_dtype='bf16'`` or ``'fp16'``) on the inputs' device, CUDA
  or CPU (the same code path; tested on CPU with bf16); the heads always run in float32
  (``exp(k (N(x) - N(y)))`` overflows fp16). Default float32. On CPUs without native bf16 (AVX2 only)
  autocast is slower than float32: it is meant for GPUs.
"""
import hashlib
from collections import OrderedDict, namedtuple

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from iqa_plugin import weights as weights_mod
from iqa_plugin.archs.clip_vit_arch import (
    CLIP_MEAN,
    CLIP_STD,
    CLIPVisionTower,
    load_clip_state_dict,
    load_visual_weights,
    visual_state_dict,
    vit_config_from_state_dict,
)
from iqa_plugin.utils.image import prepare_image

MODEL_TYPES = ('afine_all_scale', 'afine_all', 'afine_fr', 'afine_nr')
SIZE_MODES = ('resize', 'reflect')
AMP_DTYPES = {None: None, 'none': None, 'fp32': None, 'float32': None, 'bf16': torch.bfloat16,
              'bfloat16': torch.bfloat16, 'fp16': torch.float16, 'float16': torch.float16}
AFINE_KEYS = ('finetuned_clip', 'natural', 'fidelity', 'fidelity_scale', 'natural_scale', 'adapter')
# constants of the final mapping (A-FINE's scale_finalscore): 100 * sigmoid((D - eta3) / |eta4|)
FINAL_ETA3, FINAL_ETA4 = -1.9710, 2.3734
_C = 1e-10  # stabilisers of S1 and S2

Encoded = namedtuple('Encoded', ['pixels', 'feats'])
Encoded.__doc__ = """CLIP encoding of a batch: ``pixels`` (B, 3, H', W') the size-adjusted image in [0, 1];
``feats`` list of (B, N, C) ReLU'd patch tokens of every block, float32."""


class RefCache:
    """LRU cache of reference encodings keyed by a hash of the image, bounded in MiB (0: off)."""

    def __init__(self, mib=0):
        self.budget = int(float(mib or 0) * 2 ** 20)
        self.items = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    @property
    def enabled(self):
        return self.budget > 0

    @staticmethod
    def key(img, *extra):
        """Key of one (3, H, W) image: shape, dtype, device and a blake2b digest of its values."""
        data = img.detach().to('cpu', torch.float32).contiguous().numpy().tobytes()
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        return (tuple(img.shape), str(img.dtype), str(img.device), digest) + extra

    @staticmethod
    def _size(enc):
        return enc.pixels.numel() * enc.pixels.element_size() + sum(f.numel() * f.element_size() for f in enc.feats)

    def get(self, key):
        enc = self.items.get(key)
        if enc is None:
            self.misses += 1
            return None
        self.hits += 1
        self.items.move_to_end(key)
        return enc

    def put(self, key, enc):
        size = self._size(enc)
        if size > self.budget:
            return
        enc = Encoded(enc.pixels.detach().clone(), [f.detach().clone() for f in enc.feats])  # no views of a batch
        self.items[key] = enc
        self.bytes += size
        while self.bytes > self.budget:
            _, old = self.items.popitem(last=False)
            self.bytes -= self._size(old)

    def clear(self):
        self.items.clear()
        self.bytes = 0

    def ensure(self, mib):
        """Raise the budget to at least ``mib`` MiB (a shared network keeps the largest asked for)."""
        self.budget = max(self.budget, int(float(mib or 0) * 2 ** 20))


def _no_weights(name):
    return name is None or name is False or (isinstance(name, str) and name.strip().lower() in ('', 'none', 'null'))


def _mean_var(t, dims):
    m = t.mean(dims, keepdim=True)
    v = ((t - m) ** 2).mean(dims, keepdim=True)
    return m, v


class NaturalnessHead(nn.Module):
    """N(.) before calibration (A-FINE's ``natural`` weights).

    Args:
        width (int): CLIP token dimension (768).
        layers (int): CLIP blocks (12).
        hidden_dim (int): projection width (128).

    ``forward(enc)`` with an ``Encoded`` of batch B returns (B,) raw naturalness (lower = more natural).
    The buffers ``mean``/``std`` (CLIP's normalisation) are part of the published state dict.
    """

    def __init__(self, width=768, layers=12, hidden_dim=128):
        super().__init__()
        self.register_buffer('mean', torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor(CLIP_STD).view(1, 3, 1, 1))
        self.proj_feat = nn.Linear(2 * width, hidden_dim)
        self.proj_head = nn.Sequential(nn.Linear(2 * 3 + hidden_dim * layers, hidden_dim * 6), nn.GELU(),
                                       nn.Linear(hidden_dim * 6, 1))

    def forward(self, enc):
        pm, pv = _mean_var(enc.pixels.float(), (2, 3))  # (B, 3, 1, 1)
        stats = [torch.cat([f.mean(1), f.var(1, unbiased=False)], dim=1) for f in enc.feats]  # (B, 2C) each
        proj = self.proj_feat(torch.stack(stats, dim=1)).flatten(1)  # (B, L * hidden)
        x = torch.cat([pm.flatten(1), pv.flatten(1), proj], dim=1)
        return self.proj_head(x).squeeze(1)


class FidelityHead(nn.Module):
    """F(x, y) before calibration (A-FINE's ``fidelity`` weights): DISTS-like, 1 - weighted similarity.

    ``forward(enc_dist, enc_ref)`` returns (B,) (0 for identical inputs, larger = less faithful); the
    reference encoding may have batch 1 and is then shared by the whole test batch.
    """

    def __init__(self, width=768, layers=12):
        super().__init__()
        self.chns = (3,) + (width,) * layers
        total = sum(self.chns)
        self.alpha = nn.Parameter(torch.empty(1, 1, total).normal_(0.1, 0.01))
        self.beta = nn.Parameter(torch.empty(1, 1, total).normal_(0.1, 0.01))
        self.register_buffer('mean', torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor(CLIP_STD).view(1, 3, 1, 1))

    def weights(self):
        """(alpha, beta) after softplus, normalised jointly to sum 1; each (sum(chns),)."""
        a, b = F.softplus(self.alpha).flatten(), F.softplus(self.beta).flatten()
        total = a.sum() + b.sum() + _C
        return a / total, b / total

    @staticmethod
    def _similarities(x, y, dims):
        mx, vx = _mean_var(x, dims)
        my, vy = _mean_var(y, dims)
        cov = ((x - mx) * (y - my)).mean(dims, keepdim=True)
        s1 = (2 * mx * my + _C) / (mx ** 2 + my ** 2 + _C)
        s2 = (2 * cov + _C) / (vx + vy + _C)
        return s1, s2

    def forward(self, enc_dist, enc_ref):
        a, b = self.weights()
        n_pix = self.chns[0]
        s1, s2 = self._similarities(enc_dist.pixels.float(), enc_ref.pixels.float(), (2, 3))  # (B, 3, 1, 1)
        sim = s1.flatten(1) @ a[:n_pix] + s2.flatten(1) @ b[:n_pix]
        a_f = a[n_pix:].view(len(enc_dist.feats), -1)
        b_f = b[n_pix:].view(len(enc_dist.feats), -1)
        for k, (fx, fy) in enumerate(zip(enc_dist.feats, enc_ref.feats)):
            s1, s2 = self._similarities(fx, fy, 1)  # (B, 1, C)
            sim = sim + s1[:, 0] @ a_f[k] + s2[:, 0] @ b_f[k]
        return 1 - sim


class ScaledSigmoid(nn.Module):
    """``(hi - lo) * sigmoid((x - eta3) / |eta4|) + lo`` with trainable eta3, eta4 (A-FINE's calibrators).

    With ``eta3_range``/``eta4_range`` given, eta3/eta4 are clamped to them (the fidelity calibrator).
    """

    def __init__(self, eta3, eta4, lo=-2.0, hi=2.0, eta3_range=None, eta4_range=None):
        super().__init__()
        # A-FINE's state-dict names: yita3, yita4
        self.yita3 = nn.Parameter(torch.tensor(float(eta3)))
        self.yita4 = nn.Parameter(torch.tensor(float(eta4)))
        self.lo, self.hi = lo, hi
        self.eta3_range, self.eta4_range = eta3_range, eta4_range

    def forward(self, x):
        e3, e4 = self.yita3, self.yita4
        if self.eta3_range is not None:
            e3 = e3.clamp(*self.eta3_range)
        if self.eta4_range is not None:
            e4 = e4.clamp(*self.eta4_range)
        return (self.hi - self.lo) * torch.sigmoid((x - e3) / (e4.abs() + _C)) + self.lo


class AdaptiveFusion(nn.Module):
    """D = F + exp(k (N(ref) - N(dist))) * N(dist), k = softplus(k_raw) (A-FINE's ``adapter``)."""

    def __init__(self, k=5.0):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(float(k)))

    def forward(self, nat_dist, nat_ref, fid):
        return torch.exp(F.softplus(self.k) * (nat_ref - nat_dist)) * nat_dist + fid


def final_scale(d):
    """A-FINE's bounded score in (0, 100): ``100 * sigmoid((D + 1.9710) / 2.3734)``."""
    return 100.0 * torch.sigmoid((d - FINAL_ETA3) / (FINAL_ETA4 + _C))


@ARCH_REGISTRY.register()
class AFINE(nn.Module):
    """A-FINE, batched and differentiable.

    Args:
        model_type (str): primary output: ``'afine_all_scale'`` (0-100), ``'afine_all'`` (D),
            ``'afine_fr'`` (calibrated fidelity, -2..2) or ``'afine_nr'`` (calibrated naturalness
            of the test image, -2..2; the reference is ignored). Lower is better for all.
        weights (str | None): weights entry for the A-FINE file (``'afine'``); ``None``/``'none'``
            keeps freshly initialised heads (for training).
        weights_path (str | None): explicit A-FINE file (``afine.pth`` layout).
        clip_weights (str | None): weights entry for the base CLIP (``'clip-vit-b-32'``);
            ``None``/``'none'`` skips it (the ViT config then comes from ``finetuned_clip`` or ``vit``).
        clip_weights_path (str | None): explicit CLIP file (OpenAI TorchScript archive or a state dict);
            the string ``'none'`` means ``clip_weights='none'`` (for ``iqa-plugin score --clip-weights none``).
        vit (dict | None): ``CLIPVisionTower`` config used when no weights are loaded, e.g.
            ``{'width': 64, 'layers': 2, 'patch_size': 16}`` for tests; default ViT-B/32.
        hidden_dim (int): naturalness projection width (128 in the published model; taken from the
            A-FINE file when one is loaded).
        size_mode (str): ``'resize'`` or ``'reflect'`` for sizes that are not multiples of the patch.
        amp_dtype (str | None): ``'bf16'``/``'fp16'`` autocast of the CLIP tower (on the inputs' device).
        out_of_range (str): ``prepare_image`` policy for values outside [0, 1] (``'clamp'``).
        ref_cache_mib (float): keep the CLIP encodings of up to this many MiB of reference images
            (least recently used dropped), keyed by a hash of the image: a validation set scored
            again re-encodes only its test images. 0 (default) disables it; never used while
            gradients are recorded.
        fast_cpu_linear (bool): on the CPU, run the frozen ViT's float32 linear layers through oneDNN
            with pre-packed weights (default True; ``iqa_plugin.utils.onednn_linear``): the same scores
            to float32 rounding, faster, one extra copy of the ViT weights (about 340 MB) in memory.

    ``forward(dist, ref=None)`` takes (B, 3, H, W) RGB tensors in [0, 1] (ref may have batch 1) and
    returns an ordered dict of (B,) tensors, the ``model_type`` term first.
    """

    def __init__(self, model_type='afine_all_scale', weights='afine', weights_path=None, clip_weights='clip-vit-b-32',
                 clip_weights_path=None, vit=None, hidden_dim=128, size_mode='resize', amp_dtype=None,
                 out_of_range='clamp', ref_cache_mib=0, fast_cpu_linear=True):
        super().__init__()
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got '{model_type}'")
        if size_mode not in SIZE_MODES:
            raise ValueError(f"size_mode must be one of {', '.join(SIZE_MODES)}, got '{size_mode}'")
        key = amp_dtype.lower() if isinstance(amp_dtype, str) else amp_dtype
        if key not in AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of bf16, fp16 or None, got '{amp_dtype}'")
        self.model_type, self.size_mode, self.amp_dtype = model_type, size_mode, AMP_DTYPES[key]
        self.out_of_range = out_of_range
        self.ref_cache = RefCache(ref_cache_mib)

        if isinstance(clip_weights_path, str) and _no_weights(clip_weights_path):  # '--clip-weights none'
            clip_weights_path, clip_weights = None, 'none'
        use_afine = weights_path is not None or not _no_weights(weights)
        use_clip = clip_weights_path is not None or not _no_weights(clip_weights)
        # resolve both files first, so a missing file is reported before any large read
        afine_entry = 'afine' if _no_weights(weights) else weights
        clip_entry = 'clip-vit-b-32' if _no_weights(clip_weights) else clip_weights
        afine_file = weights_mod.resolve(afine_entry, weights_path) if use_afine else None
        clip_file = weights_mod.resolve(clip_entry, clip_weights_path) if use_clip else None

        # only the image towers are kept (CLIP's text tower is never used)
        clip_sd = visual_state_dict(load_clip_state_dict(clip_file)) if clip_file else None
        afine_sd = self._read_afine_file(afine_file) if afine_file else None
        if afine_sd is not None:
            afine_sd['finetuned_clip'] = visual_state_dict(afine_sd['finetuned_clip'])
        if clip_sd is not None:
            config = vit_config_from_state_dict(clip_sd)
        elif afine_sd is not None:
            config = vit_config_from_state_dict(afine_sd['finetuned_clip'])
        else:
            config = dict(vit or {})
        self.clip = CLIPVisionTower(**config, fast_cpu_linear=fast_cpu_linear)
        width, layers = self.clip.width, self.clip.layers
        if afine_sd is not None and 'proj_feat.weight' in afine_sd['natural']:
            hidden_dim = afine_sd['natural']['proj_feat.weight'].shape[0]  # the file decides (128 when published)
        self.natural = NaturalnessHead(width, layers, hidden_dim)
        self.fidelity = FidelityHead(width, layers)
        self.natural_scale = ScaledSigmoid(4.9592, 21.5968)
        self.fidelity_scale = ScaledSigmoid(0.5, 0.15, eta3_range=(0.05, 0.95), eta4_range=(0.01, 0.70))
        self.adapter = AdaptiveFusion(5.0)
        if clip_sd is not None:
            load_visual_weights(self.clip, clip_sd, source=str(clip_file), ignore_extra=True)
        if afine_sd is not None:
            self.load_afine_state_dict(afine_sd, source=str(afine_file))
        self.register_buffer('clip_mean', torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('clip_std', torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.kind = 'nr' if model_type == 'afine_nr' else 'fr'
        self.lower_better = True
        self.output_names = self._output_names(model_type)

    # ------------------------------------------------------------------ weights
    @staticmethod
    def _read_afine_file(path):
        sd = weights_mod.load_state_dict(path)
        missing = [k for k in AFINE_KEYS if not isinstance(sd, dict) or k not in sd]
        if missing:
            raise weights_mod.WeightsError(f'A-FINE weights file {path} lacks keys {missing} '
                                           f'(expected {", ".join(AFINE_KEYS)})')
        return sd

    def load_afine_state_dict(self, sd, source='A-FINE state dict'):
        """Load the ``afine.pth`` layout (``finetuned_clip`` may be a full CLIP or a visual-only dict)."""
        load_visual_weights(self.clip, sd['finetuned_clip'], source=f"{source}['finetuned_clip']")
        for key, module in (('natural', self.natural), ('fidelity', self.fidelity),
                            ('fidelity_scale', self.fidelity_scale), ('natural_scale', self.natural_scale),
                            ('adapter', self.adapter)):
            try:
                module.load_state_dict(sd[key], strict=True)
            except RuntimeError as e:
                raise weights_mod.WeightsError(f"{source}['{key}'] does not fit: {str(e).splitlines()[0]}") from e

    def afine_state_dict(self):
        """The ``afine.pth`` layout of this model (``finetuned_clip`` holds ``visual.*`` keys only)."""
        return {
            'finetuned_clip': {f'visual.{k}': v.detach().cpu().clone() for k, v in self.clip.state_dict().items()},
            **{key: {k: v.detach().cpu().clone() for k, v in getattr(self, key).state_dict().items()}
               for key in ('natural', 'fidelity', 'fidelity_scale', 'natural_scale', 'adapter')},
        }

    @staticmethod
    def _output_names(model_type):
        if model_type == 'afine_nr':
            return ('afine_nr',)
        if model_type == 'afine_fr':
            return ('afine_fr',)
        rest = ('afine_fr', 'afine_nr', 'afine_nr_ref')
        if model_type == 'afine_all':
            return ('afine_all', 'afine_all_scale') + rest
        return ('afine_all_scale', 'afine_all') + rest

    # ------------------------------------------------------------------ encoding
    def fit_size(self, x):
        """Make H and W multiples of the patch size (see ``size_mode``); unchanged when they already are."""
        p = self.clip.patch_size
        h, w = x.shape[-2:]
        th, tw = -(-h // p) * p, -(-w // p) * p
        if (th, tw) == (h, w):
            return x
        if self.size_mode == 'resize':
            return F.interpolate(x, size=(th, tw), mode='bicubic', align_corners=False)
        return F.pad(x, (0, tw - w, 0, th - h), mode='reflect')

    def encode(self, x):
        """(B, 3, H, W) in [0, 1] (already validated) -> ``Encoded`` (size-adjusted pixels, ReLU'd tokens)."""
        x = self.fit_size(x)
        z = (x - self.clip_mean) / self.clip_std
        use_amp = self.amp_dtype is not None
        with torch.autocast(z.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=use_amp):
            feats = self.clip(z)
        return Encoded(x, [F.relu(f.float()) for f in feats])

    def _check(self, x, name):
        return prepare_image(x, name=name, min_size=self.clip.patch_size, out_of_range=self.out_of_range)

    def prepare(self, dist, ref=None):
        """Validate inputs: dist (B, 3, H, W); ref (B or 1, 3, H, W) with the same H, W; returns tensors."""
        dist = self._check(dist, 'dist')
        if ref is None:
            return dist, None
        ref = self._check(ref, 'ref')
        if ref.shape[-2:] != dist.shape[-2:] or ref.shape[0] not in (1, dist.shape[0]):
            raise ValueError(f'dist and ref shapes differ: dist {tuple(dist.shape)} vs ref {tuple(ref.shape)} '
                             '(ref must have the same size and batch B or 1)')
        return dist, ref

    # ------------------------------------------------------------------ terms
    def terms(self, enc_dist, enc_ref=None, which=None):
        """All A-FINE terms from encodings; ``which`` limits them to what a model type needs.

        Returns a dict of (B,) tensors among ``nat_dist_raw``, ``nat_ref_raw``, ``fid_raw`` (head
        outputs), ``afine_nr``, ``afine_nr_ref``, ``afine_fr`` (calibrated), ``afine_all`` and
        ``afine_all_scale``.
        """
        which = which or self.model_type
        out = {}
        if which in ('afine_nr', 'afine_all', 'afine_all_scale'):
            out['nat_dist_raw'] = self.natural(enc_dist)
            out['afine_nr'] = self.natural_scale(out['nat_dist_raw'])
        if which == 'afine_nr':
            return out
        if enc_ref is None:
            raise ValueError(f"'{which}' is a full-reference score: give a reference image")
        out['fid_raw'] = self.fidelity(enc_dist, enc_ref)
        out['afine_fr'] = self.fidelity_scale(out['fid_raw'])
        if which == 'afine_fr':
            return out
        out['nat_ref_raw'] = self.natural(enc_ref).expand_as(out['nat_dist_raw'])
        out['afine_nr_ref'] = self.natural_scale(out['nat_ref_raw'])
        out['afine_all'] = self.adapter(out['afine_nr'], out['afine_nr_ref'], out['afine_fr'])
        out['afine_all_scale'] = final_scale(out['afine_all'])
        return out

    def encode_pair(self, dist, ref):
        """Encode validated dist and ref; one CLIP pass over both when their batches match.

        A reference of batch 1 is encoded once for the whole batch. When gradients are recorded for
        ``dist`` only (a loss), the reference is encoded without a graph in a separate pass.
        """
        if ref is None or self.model_type == 'afine_nr':
            return self.encode(dist), None
        if self.ref_cache.enabled and not torch.is_grad_enabled():
            return self.encode(dist), self._encode_cached(ref)
        if (torch.is_grad_enabled() and dist.requires_grad and not ref.requires_grad
                and not any(p.requires_grad for p in self.parameters())):
            with torch.no_grad():
                enc_ref = self.encode(ref)
            return self.encode(dist), enc_ref
        if ref.shape[0] != dist.shape[0]:  # shared reference: encode it once
            return self.encode(dist), self.encode(ref)
        enc = self.encode(torch.cat([dist, ref], dim=0))
        b = dist.shape[0]
        return (Encoded(enc.pixels[:b], [f[:b] for f in enc.feats]),
                Encoded(enc.pixels[b:], [f[b:] for f in enc.feats]))

    def _encode_cached(self, ref):
        """Encode a reference batch through ``ref_cache`` (per image; misses are encoded together)."""
        keys = [self.ref_cache.key(ref[i], self.size_mode) for i in range(ref.shape[0])]
        found = [self.ref_cache.get(k) for k in keys]
        missing = [i for i, e in enumerate(found) if e is None]
        if missing:
            enc = self.encode(ref[missing])
            for j, i in enumerate(missing):
                found[i] = Encoded(enc.pixels[j:j + 1], [f[j:j + 1] for f in enc.feats])
                self.ref_cache.put(keys[i], found[i])
        if len(found) == 1:
            return found[0]
        return Encoded(torch.cat([e.pixels for e in found]),
                       [torch.cat([e.feats[k] for e in found]) for k in range(len(found[0].feats))])

    def forward(self, dist, ref=None):
        """dist (B, 3, H, W), ref (B or 1, 3, H, W), RGB in [0, 1] -> ordered dict of (B,) scores."""
        if self.model_type != 'afine_nr' and ref is None:
            raise ValueError(f"'{self.model_type}' is a full-reference score: give a reference image")
        dist, ref = self.prepare(dist, None if self.model_type == 'afine_nr' else ref)
        enc_dist, enc_ref = self.encode_pair(dist, ref)
        t = self.terms(enc_dist, enc_ref)
        return OrderedDict((k, t[k]) for k in self.output_names)

    def score(self, dist, ref=None):
        """The primary score only: (B,) tensor."""
        return self.forward(dist, ref)[self.output_names[0]]


def build_afine_scorer(device, model_type='afine_all_scale', weights='afine', weights_path=None, clip_weights_path=None,
                       clip_weights='clip-vit-b-32', size_mode='resize', amp_dtype=None, ref_cache_mib=0,
                       out_of_range='clamp', **kwargs):
    """Scoring-table factory (``afine``, ``afine_fr``, ``afine_nr``): a frozen ``AFINE`` in eval mode."""
    from iqa_plugin.scoring import freeze

    net = AFINE(model_type=model_type, weights=weights, weights_path=weights_path, clip_weights=clip_weights,
                clip_weights_path=clip_weights_path, size_mode=size_mode, amp_dtype=amp_dtype,
                ref_cache_mib=ref_cache_mib, out_of_range=out_of_range, **kwargs)
    return freeze(net.to(device))


def get_frozen_afine(device='cpu', model_type='afine_all_scale', weights='afine', weights_path=None,
                     clip_weights='clip-vit-b-32', clip_weights_path=None, size_mode='resize', amp_dtype=None,
                     out_of_range='clamp'):
    """The frozen A-FINE for these options on ``device``, built once per process and shared by the loss
    and the validator (``scoring.get_cached_metric``); do not move or modify it."""
    from iqa_plugin.scoring import get_cached_metric

    return get_cached_metric('afine', device=torch.device(device), model_type=model_type, weights=weights,
                             weights_path=weights_path, clip_weights=clip_weights,
                             clip_weights_path=clip_weights_path, size_mode=size_mode, amp_dtype=amp_dtype,
                             out_of_range=out_of_range)


def fidelity_loss(p, g, eps=1e-8):
    """Fidelity loss between predicted and target preference probabilities: (B,) each -> (B,).

    ``1 - sqrt(p g) - sqrt((1 - p)(1 - g))`` (eps inside the roots keeps gradients finite).
    """
    return 1 - torch.sqrt(p * g + eps) - torch.sqrt((1 - p) * (1 - g) + eps)


def thurstone_prob(d_first, d_second):
    """P(first image better) for lower-is-better scores under Thurstone case V: Phi((D2 - D1) / sqrt 2)."""
    return 0.5 * (1 + torch.erf((d_second - d_first) / 2.0))  # Phi(z/sqrt2) = (1 + erf(z/2)) / 2


__all__ = [
    'AFINE',
    'MODEL_TYPES',
    'AdaptiveFusion',
    'FidelityHead',
    'NaturalnessHead',
    'RefCache',
    'ScaledSigmoid',
    'build_afine_scorer',
    'fidelity_loss',
    'final_scale',
    'get_frozen_afine',
    'thurstone_prob',
]
