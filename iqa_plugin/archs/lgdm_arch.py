"""LGDM-style no-reference quality from a frozen latent diffusion model (Stable Diffusion 1.x).

Why one file over 450 lines: one network per ``*_arch.py`` with its factory; the feature extractor, the guided DDIM
loop and the regressor are one scorer (its parts have no other user) and docs/lgdm.md describes them together.

After LGDM (Saini, Liao, Ye, Bovik: "Latent Guidance in Diffusion Models for Perceptual
Evaluations", ICML 2025, arXiv 2506.00327; no code released). Written from the paper's description;
its exact timesteps, layers and regressor are not public, so all of them are options here
(docs/lgdm.md says what the defaults are and why).

Pipeline of ``LGDMFeatures.forward`` for a batch ``x`` (B, 3, H, W) RGB in [0, 1]:

1. reflection-pad H and W up to a multiple of ``pad_multiple`` = VAE factor (8) x U-Net factor
   (2 ** (number of down blocks - 1), 8 for SD 1.x: 64 px), so any size >= ``MIN_SIZE`` works; the
   padding is mirrored image content, never zeros (which would read as a dark border);
2. encode with the VAE (posterior mean, times ``scaling_factor``): z0 (B, 4, H/8, W/8);
3. for every noise level t in ``timesteps`` (DDPM indices of the 1000-step schedule): draw noise
   from a ``torch.Generator`` seeded with ``seed`` for each image (so a score does not depend on the
   batch it was computed in), z_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps;
4. ``ddim_steps`` deterministic DDIM steps of ``ddim_stride`` timesteps each with Perceptual Manifold
   Guidance: the clean estimate z0_hat = (z_s - sqrt(1 - a_s) eps_hat) / sqrt(a_s) is decoded, a
   perceptual distance d(D(z0_hat), x) to the input is measured with ``guidance_metric`` (a
   full-reference table metric, default ``milo-pseudomos``, which ships and runs offline; or
   ``'mse'``) and z0_hat moves against its gradient by ``guidance_scale`` (in units of the
   gradient's RMS, so the scale is a step in latent units, independent of the metric's scale);
   the DDIM update then continues from the guided estimate;
5. one more U-Net pass at the reached time step, in which forward hooks on ``blocks`` (``'down.i'``,
   ``'mid'``, ``'up.i'``) record the activations, pooled over space (``pooling``: ``'avg'`` or
   ``'avgstd'``) and concatenated over blocks and noise levels: the hyperfeatures (B, F).

``LGDMRegressor`` maps them to quality (linear or two-layer MLP after a feature standardisation
fitted on the training features); ``build_lgdm_scorer`` is the scoring-table factory (``lgdm``:
no-reference, higher is better, about [0, 1] when trained with a target range).

The features are not differentiable with respect to the input (the U-Net passes run without a
graph; only the guidance takes gradients, with respect to the latent), so ``lgdm`` is refused as a
loss. diffusers is optional: importing this module does not need it; building the scorer does.
"""
import os
from collections import OrderedDict
from pathlib import Path

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn
from torch.nn import functional as F

from iqa_plugin import weights as wm
from iqa_plugin.scoring.scorer import NRScorer
from iqa_plugin.scoring import freeze
from iqa_plugin.utils.image import check_batch_shape

MIN_SIZE = 64
SD15_HUB_ID = 'stable-diffusion-v1-5/stable-diffusion-v1-5'
SD_URL = 'https://huggingface.co/{}'
# files of a diffusers Stable Diffusion folder the metric reads (the text encoder only for prompt='empty')
SD_FILES = ('unet/config.json', 'vae/config.json')
SD_DOWNLOAD_PATTERNS = ['model_index.json', 'unet/config.json', 'unet/diffusion_pytorch_model.safetensors',
                        'vae/config.json', 'vae/diffusion_pytorch_model.safetensors', 'scheduler/*',
                        'text_encoder/config.json', 'text_encoder/model.safetensors', 'tokenizer/*']
# SD 1.x's noise schedule, used when the folder has no scheduler/ config
SD1_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear')

# feature-extraction options and their defaults (see docs/lgdm.md); a trained head file records them
FEATURE_DEFAULTS = OrderedDict([
    ('timesteps', (50, 100, 200)),
    ('ddim_steps', 1),
    ('ddim_stride', 10),
    ('guidance_scale', 0.1),
    ('guidance_metric', 'milo-pseudomos'),
    ('blocks', ('down.1', 'mid', 'up.0', 'up.1')),
    ('pooling', 'avg'),
    ('seed', 0),
    ('prompt', 'auto'),
])
POOLINGS = ('avg', 'avgstd')
PROMPTS = ('auto', 'zeros', 'empty')
AMP_DTYPES = {None: None, 'none': None, 'fp32': None, 'float32': None,
              'fp16': torch.float16, 'float16': torch.float16, 'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16}


def import_diffusers():
    """The ``diffusers`` module, or ImportError with the one-line install hint."""
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("lgdm needs diffusers: pip install diffusers (or pip install 'iqa-plugin[latent]')") from e
    return diffusers


# ----------------------------------------------------------------------------------------- weights
def _is_sd_folder(path):
    return all((Path(path) / f).is_file() for f in SD_FILES)


def sd_search_paths(repo_id):
    """Folders a hub id ``org/name`` is looked for in (before the HuggingFace cache):
    ``$IQA_PLUGIN_WEIGHTS_DIR/<name>`` and ``<torch hub>/iqa_plugin/<name>``."""
    return wm.search_paths(repo_id.rstrip('/').split('/')[-1], wm.cache_dir())


def resolve_sd_folder(sd_path=SD15_HUB_ID, allow_download=True):
    """Local diffusers folder of a Stable Diffusion 1.x model (with ``unet/`` and ``vae/``).

    ``sd_path`` is a local folder, or a hub id looked for in ``sd_search_paths``, then in the
    HuggingFace cache, then downloaded (unet, vae, scheduler, text encoder; never when offline:
    ``IQA_PLUGIN_OFFLINE=1`` or ``allow_download=False``). Missing: ``WeightsError`` with the
    weights manager's one-line message naming the folders expected and the URL.
    """
    sd_path = str(sd_path)
    local = Path(os.path.expanduser(sd_path))
    looks_local = local.is_absolute() or sd_path.startswith(('.', '~')) or sd_path.count('/') != 1
    if local.is_dir() or looks_local:
        if not local.is_dir():
            raise wm.WeightsError(f'Stable Diffusion folder for lgdm not found: {local}')
        if not _is_sd_folder(local):
            missing = [f for f in SD_FILES if not (local / f).is_file()]
            raise wm.WeightsError(f'{local} is not a diffusers Stable Diffusion folder: it lacks {", ".join(missing)}')
        return local
    searched = sd_search_paths(sd_path)
    for p in searched:
        if _is_sd_folder(p):
            return p
    try:
        from huggingface_hub import snapshot_download
        cached = Path(snapshot_download(sd_path, allow_patterns=SD_DOWNLOAD_PATTERNS, local_files_only=True))
        if _is_sd_folder(cached):
            return cached
    except Exception:  # not in the HF cache (or huggingface_hub absent): the same for the user
        pass
    what, files, url = f"Stable Diffusion weights '{sd_path}' for lgdm", 'unet/ and vae/ folders', SD_URL.format(sd_path)
    hint = 'sd_path: a local diffusers folder also works'
    if wm.is_offline() or not allow_download:
        reason = 'offline (IQA_PLUGIN_OFFLINE=1)' if wm.is_offline() else 'locally'
        raise wm.WeightsError(wm.missing_message(what, files, url, searched, reason, hint))
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(sd_path, allow_patterns=SD_DOWNLOAD_PATTERNS))
    except Exception as e:
        reason = f'(download failed: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ""})'
        raise wm.WeightsError(wm.missing_message(what, files, url, searched, reason, hint)) from e


def resolve_lgdm_weights(allow_download=True, sd_path=None, weights_path=None, pretrained=True, **_):
    """Everything ``build_lgdm_scorer`` with these options loads, resolved without building it (the option
    pre-flight and ``score --help`` call this through ``scoring.resolve_weights``): diffusers, the regressor
    file and the Stable Diffusion folder. Returns [regressor file, SD folder]; raises as the factory would."""
    import_diffusers()
    paths = []
    if weights_path:
        path = Path(os.path.expanduser(str(weights_path)))
        if not path.is_file():
            raise wm.WeightsError(f"weights file for 'lgdm' not found: {path}")
        cfg = wm.unwrap_state_dict(wm.load_state_dict(path), path)[1] or {}
        sd_path = sd_path or (cfg.get('features') or {}).get('sd_path')
        paths.append(path)
    elif pretrained:
        raise wm.WeightsError("lgdm needs a trained regressor: give weights_path (a file written by "
                              "LGDMRegressorModel, options/metrics/train_lgdm.yml)")
    paths.append(resolve_sd_folder(sd_path or SD15_HUB_ID, allow_download=allow_download))
    return paths


def load_sd_components(folder, prompt='auto'):
    """(unet, vae, alphas_cumprod (1000,), text embedding (1, 77, D) or None) from a diffusers folder.

    The scheduler's ``alphas_cumprod`` come from ``scheduler/`` (``DDIMScheduler``) when present,
    else from SD 1.x's schedule. ``prompt``: 'zeros' (no text embedding: zeros are used), 'empty'
    (the CLIP embedding of the empty prompt, as classifier-free guidance's unconditional branch;
    needs ``text_encoder/`` and ``tokenizer/`` and transformers), 'auto' ('empty' when those are
    there, else 'zeros').
    """
    diffusers = import_diffusers()
    folder = Path(folder)
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder='unet', local_files_only=True)
    vae = diffusers.AutoencoderKL.from_pretrained(folder, subfolder='vae', local_files_only=True)
    if (folder / 'scheduler').is_dir():
        sched = diffusers.DDIMScheduler.from_pretrained(folder, subfolder='scheduler', local_files_only=True)
    else:
        sched = diffusers.DDIMScheduler(**SD1_SCHEDULE)
    text = None
    has_text = (folder / 'text_encoder' / 'config.json').is_file() and (folder / 'tokenizer').is_dir()
    if prompt == 'empty' and not has_text:
        raise wm.WeightsError(f"prompt='empty' needs text_encoder/ and tokenizer/ in {folder}; use prompt='zeros'")
    if prompt == 'empty' or (prompt == 'auto' and has_text):
        from transformers import CLIPTextModel, CLIPTokenizer
        tok = CLIPTokenizer.from_pretrained(folder, subfolder='tokenizer', local_files_only=True)
        enc = CLIPTextModel.from_pretrained(folder, subfolder='text_encoder', local_files_only=True).eval()
        ids = tok([''], padding='max_length', max_length=tok.model_max_length, return_tensors='pt').input_ids
        with torch.no_grad():
            text = enc(ids)[0].float()
    return unet, vae, sched.alphas_cumprod.float().clone(), text


# ----------------------------------------------------------------------------------------- features
def _block_modules(unet, blocks):
    """[(name, module)] for block names 'down.i', 'mid', 'up.i'; ValueError naming the valid ones."""
    valid = [f'down.{i}' for i in range(len(unet.down_blocks))] + ['mid'] + \
        [f'up.{i}' for i in range(len(unet.up_blocks))]
    out = []
    for name in blocks:
        if name not in valid:
            raise ValueError(f"lgdm: unknown U-Net block '{name}'; this U-Net has {', '.join(valid)}")
        if name == 'mid':
            out.append((name, unet.mid_block))
        else:
            part, i = name.split('.')
            out.append((name, (unet.down_blocks if part == 'down' else unet.up_blocks)[int(i)]))
    return out


def _block_channels(module):
    """Output channels of a U-Net block (its last resnet's)."""
    return module.resnets[-1].out_channels


def pool_features(h, pooling):
    """(B, C, h, w) -> (B, C) spatial mean ('avg') or (B, 2C) mean and standard deviation ('avgstd')."""
    h = h.float().flatten(2)
    if pooling == 'avg':
        return h.mean(2)
    return torch.cat([h.mean(2), h.var(2, unbiased=False).add(1e-6).sqrt()], 1)


class LGDMFeatures(nn.Module):
    """Frozen SD 1.x U-Net + VAE -> hyperfeatures (see the module docstring).

    Args:
        unet, vae: diffusers ``UNet2DConditionModel`` and ``AutoencoderKL`` (frozen here).
        alphas_cumprod (Tensor): (T,) cumulative products of the noise schedule.
        text_embedding (Tensor | None): (1, L, D) conditioning, None for zeros (L = 77).
        timesteps, ddim_steps, ddim_stride, guidance_scale, guidance_metric, blocks, pooling, seed:
            see ``FEATURE_DEFAULTS`` and the module docstring.
        amp (str | None): 'fp16' / 'bf16' autocast (GPU), None for float32.
    Forward: (B, 3, H, W) RGB in [0, 1], min side >= ``MIN_SIZE`` -> (B, ``dim``) float32.
    """

    def __init__(self, unet, vae, alphas_cumprod, text_embedding=None, timesteps=(50, 100, 200), ddim_steps=1,
                 ddim_stride=10, guidance_scale=0.1, guidance_metric='milo-pseudomos',
                 blocks=('down.1', 'mid', 'up.0', 'up.1'), pooling='avg', seed=0, amp=None):
        super().__init__()
        self.unet, self.vae = freeze(unet), freeze(vae)
        self.timesteps = tuple(int(t) for t in timesteps)
        self.ddim_steps, self.ddim_stride = int(ddim_steps), int(ddim_stride)
        self.guidance_scale = float(guidance_scale)
        self.guidance_metric = str(guidance_metric)
        self.pooling, self.seed = pooling, int(seed)
        if pooling not in POOLINGS:
            raise ValueError(f"lgdm: pooling must be one of {POOLINGS}, got {pooling!r}")
        if str(amp).lower() not in AMP_DTYPES and amp is not None:
            raise ValueError(f"lgdm: amp must be None, 'fp16' or 'bf16', got {amp!r}")
        self.amp = AMP_DTYPES[None if amp is None else str(amp).lower()]
        n_t = alphas_cumprod.numel()
        if not self.timesteps:
            raise ValueError('lgdm: timesteps is empty')
        if self.ddim_steps < 0 or self.ddim_stride < 1:
            raise ValueError(f'lgdm: ddim_steps must be >= 0 and ddim_stride >= 1, got {ddim_steps}, {ddim_stride}')
        for t in self.timesteps:
            if not (0 < t - self.ddim_steps * self.ddim_stride and t < n_t):
                raise ValueError(f'lgdm: timestep {t} must be in 1..{n_t - 1} and exceed ddim_steps x ddim_stride '
                                 f'= {self.ddim_steps * self.ddim_stride}')
        if self.guidance_scale < 0:
            raise ValueError(f'lgdm: guidance_scale must be >= 0, got {guidance_scale}')
        self.register_buffer('alphas_cumprod', alphas_cumprod.float().clone(), persistent=False)
        cross = unet.config.cross_attention_dim
        if text_embedding is None:
            text_embedding = torch.zeros(1, 77, cross)
        if text_embedding.shape[-1] != cross:
            raise ValueError(f'lgdm: text embedding width {text_embedding.shape[-1]} != U-Net cross_attention_dim {cross}')
        self.register_buffer('text_embedding', text_embedding.float(), persistent=False)
        self.blocks = tuple(blocks)
        self._block_mods = _block_modules(unet, self.blocks)
        per_block = [_block_channels(m) * (2 if pooling == 'avgstd' else 1) for _, m in self._block_mods]
        self.dim = sum(per_block) * len(self.timesteps)
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.pad_multiple = self.vae_factor * 2 ** (len(unet.down_blocks) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        self._record = None  # list collecting pooled block outputs during the feature pass
        for _, m in self._block_mods:
            m.register_forward_hook(self._hook)
        self._guide = []  # the guidance metric (a shared cached scorer: not a submodule)
        if self.guidance_scale > 0 and self.ddim_steps > 0 and self.guidance_metric != 'mse':
            from iqa_plugin.scoring import get_cached_metric, get_spec
            if get_spec(self.guidance_metric).kind != 'fr':
                raise ValueError(f"lgdm: guidance_metric must be a full-reference metric or 'mse', "
                                 f"got '{self.guidance_metric}' (no-reference)")
            self._guide.append(get_cached_metric(self.guidance_metric, device=self.text_embedding.device))

    def train(self, mode=True):
        return super().train(False)

    def _hook(self, module, inputs, output):
        if self._record is not None:
            h = output[0] if isinstance(output, (tuple, list)) else output
            self._record.append(pool_features(h, self.pooling))

    def config(self):
        """The feature options (recorded in a trained head's file)."""
        return {'timesteps': list(self.timesteps), 'ddim_steps': self.ddim_steps, 'ddim_stride': self.ddim_stride,
                'guidance_scale': self.guidance_scale, 'guidance_metric': self.guidance_metric,
                'blocks': list(self.blocks), 'pooling': self.pooling, 'seed': self.seed}

    # -- pieces ------------------------------------------------------------------------------------
    def pad(self, x):
        """Reflection-pad (B, 3, H, W) on the bottom/right to multiples of ``pad_multiple``."""
        m = self.pad_multiple
        ph, pw = (-x.shape[-2]) % m, (-x.shape[-1]) % m
        if ph or pw:
            if ph >= x.shape[-2] or pw >= x.shape[-1]:
                raise ValueError(f'lgdm: image {x.shape[-2]}x{x.shape[-1]} too small to pad to a multiple of {m}')
            x = F.pad(x, (0, pw, 0, ph), mode='reflect')
        return x

    def noise(self, b, shape, device):
        """(len(timesteps), B, *shape) standard normal noise, each image from its own generator seeded
        with ``seed`` (independent of the batch)."""
        out = []
        for _ in range(b):
            g = torch.Generator(device='cpu').manual_seed(self.seed)
            out.append(torch.randn((len(self.timesteps), *shape), generator=g))
        return torch.stack(out, 1).to(device)

    def _unet(self, z, t):
        cond = self.text_embedding.expand(z.shape[0], -1, -1).to(z.dtype)
        tt = torch.full((z.shape[0],), int(t), device=z.device, dtype=torch.long)
        return self.unet(z, tt, encoder_hidden_states=cond).sample.float()

    def decode(self, z0):
        """Latent clean estimate (B, 4, h, w) -> image (B, 3, H, W) in [0, 1] (clamped)."""
        return ((self.vae.decode(z0 / self.scaling_factor).sample.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def distance(self, img, target):
        """(B,) perceptual distance (higher = farther) of decoded ``img`` to the input ``target``."""
        if self.guidance_metric == 'mse':
            return (img - target).pow(2).flatten(1).mean(1)
        scorer = self._guide[0]
        d = scorer(img, ref=target)[scorer.output_names[0]].float()
        return d if scorer.lower_better else -d

    def guide(self, z0_hat, target):
        """Perceptual Manifold Guidance: z0_hat - scale * g / rms(g), g = grad of ``distance`` w.r.t. z0_hat."""
        with torch.enable_grad(), torch.autocast(z0_hat.device.type, enabled=False):
            z = z0_hat.detach().float().requires_grad_(True)
            d = self.distance(self.decode(z), target)
            g, = torch.autograd.grad(d.sum(), z)
        rms = g.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        return z0_hat - self.guidance_scale * g / rms

    # -- forward -----------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, x):
        check_batch_shape(x, 'lgdm', MIN_SIZE)
        x = self.pad(x.float())
        dev = x.device
        use_amp = self.amp is not None
        with torch.autocast(dev.type, dtype=self.amp, enabled=use_amp):
            z0 = self.vae.encode(2.0 * x - 1.0).latent_dist.mean.float() * self.scaling_factor
            eps_all = self.noise(x.shape[0], z0.shape[1:], dev)
            a = self.alphas_cumprod.to(dev)
            feats = []
            for k, t in enumerate(self.timesteps):
                z = a[t].sqrt() * z0 + (1 - a[t]).sqrt() * eps_all[k]
                s = t
                for _ in range(self.ddim_steps):
                    eps = self._unet(z, s)
                    z0_hat = (z - (1 - a[s]).sqrt() * eps) / a[s].sqrt()
                    if self.guidance_scale > 0:
                        z0_hat = self.guide(z0_hat, x)
                        eps = (z - a[s].sqrt() * z0_hat) / (1 - a[s]).sqrt()
                    s_next = s - self.ddim_stride
                    z = a[s_next].sqrt() * z0_hat + (1 - a[s_next]).sqrt() * eps
                    s = s_next
                self._record = []
                try:
                    self._unet(z, s)
                    feats.extend(self._record)
                finally:
                    self._record = None
        return torch.cat(feats, 1)


# ----------------------------------------------------------------------------------------- regressor
class LGDMRegressor(nn.Module):
    """Hyperfeatures (B, in_features) -> (B,) quality.

    A non-affine ``BatchNorm1d`` (cumulative statistics) standardises the features with the mean and
    variance of every training batch seen (the blocks' scales differ by orders of magnitude), then a
    ``'linear'`` layer or an ``'mlp'`` (Linear, GELU, dropout, Linear) regresses. Training batches need
    >= 2 items; in eval the stored statistics are used.
    """

    def __init__(self, in_features, regressor='linear', hidden=256, dropout=0.0):
        super().__init__()
        if regressor not in ('linear', 'mlp'):
            raise ValueError(f"LGDMRegressor: regressor must be 'linear' or 'mlp', got {regressor!r}")
        self.in_features, self.regressor, self.hidden, self.dropout = int(in_features), regressor, int(hidden), \
            float(dropout)
        self.norm = nn.BatchNorm1d(self.in_features, affine=False, momentum=None)
        if regressor == 'linear':
            self.head = nn.Linear(self.in_features, 1)
        else:
            self.head = nn.Sequential(nn.Linear(self.in_features, self.hidden), nn.GELU(), nn.Dropout(self.dropout),
                                      nn.Linear(self.hidden, 1))

    def config(self):
        return {'in_features': self.in_features, 'regressor': self.regressor, 'hidden': self.hidden,
                'dropout': self.dropout}

    def forward(self, f):
        return self.head(self.norm(f.float())).squeeze(1)


if 'LGDMRegressor' not in ARCH_REGISTRY:  # (``python -m`` of this file runs it a second time)
    ARCH_REGISTRY.register(LGDMRegressor)


class LGDMNet(nn.Module):
    """Features + regressor: (B, 3, H, W) in [0, 1] -> (B,) quality."""

    def __init__(self, features, regressor):
        super().__init__()
        self.features, self.regressor = features, regressor

    def forward(self, x):
        return self.regressor(self.features(x))


# ----------------------------------------------------------------------------------------- factory
def build_feature_extractor(device=None, sd_path=SD15_HUB_ID, amp=None, allow_download=True, **feature_opts):
    """A frozen ``LGDMFeatures`` on ``device``; ``feature_opts`` override ``FEATURE_DEFAULTS``."""
    unknown = set(feature_opts) - set(FEATURE_DEFAULTS)
    if unknown:
        raise TypeError(f"lgdm: unknown option(s) {', '.join(sorted(unknown))}")
    opts = {**FEATURE_DEFAULTS, **{k: v for k, v in feature_opts.items() if v is not None}}
    if opts['prompt'] not in PROMPTS:
        raise ValueError(f"lgdm: prompt must be one of {PROMPTS}, got {opts['prompt']!r}")
    import_diffusers()
    folder = resolve_sd_folder(sd_path, allow_download=allow_download)
    unet, vae, alphas, text = load_sd_components(folder, opts.pop('prompt'))
    device = torch.device(device) if device is not None else torch.device('cpu')
    return LGDMFeatures(unet.to(device), vae.to(device), alphas.to(device),
                        None if text is None else text.to(device), amp=amp, **opts).to(device)


def build_lgdm_scorer(device=None, sd_path=None, weights_path=None, pretrained=True, timesteps=None,
                      ddim_steps=None, ddim_stride=None, guidance_scale=None, guidance_metric=None, blocks=None,
                      pooling=None, seed=None, prompt=None, regressor='linear', hidden=256, amp=None,
                      as_loss=False):
    """Scoring-table factory for ``lgdm``: a frozen ``NRScorer`` around ``LGDMNet``.

    Args:
        device: torch device (default CPU).
        sd_path (str | None): local diffusers SD 1.x folder or hub id (default: the one the head was
            trained with, else ``SD15_HUB_ID``), resolved by ``resolve_sd_folder``.
        weights_path (str | None): a trained regressor file (``LGDMRegressorModel``'s
            ``lgdm_<iter>.pth``: ``params`` + ``config`` holding the feature options it was trained with).
        pretrained (bool): False builds an untrained regressor (structure and timing only) when no
            ``weights_path`` is given.
        timesteps, ddim_steps, ddim_stride, guidance_scale, guidance_metric, blocks, pooling, seed, prompt:
            feature options (``FEATURE_DEFAULTS``); with ``weights_path`` they default to the file's and
            a different value is refused (the head would not fit the features).
        regressor, hidden: the untrained head's form (``pretrained=False`` only).
        amp (str | None): 'fp16' / 'bf16' autocast for GPUs.
        as_loss (bool): accepted for the common factory signature (lgdm is refused as a loss).
    Raises:
        ImportError (diffusers missing), iqa_plugin.weights.WeightsError (SD folder or head file missing).
    """
    import_diffusers()
    given = dict(timesteps=timesteps, ddim_steps=ddim_steps, ddim_stride=ddim_stride, guidance_scale=guidance_scale,
                 guidance_metric=guidance_metric, blocks=blocks, pooling=pooling, seed=seed, prompt=prompt)
    given = {k: v for k, v in given.items() if v is not None}
    sd, head_cfg, feat_cfg = None, None, {}
    if weights_path:
        path = Path(os.path.expanduser(str(weights_path)))
        if not path.is_file():
            raise wm.WeightsError(f"weights file for 'lgdm' not found: {path}")
        raw = wm.load_state_dict(path)
        sd, cfg = wm.unwrap_state_dict(raw, path)
        if not cfg or 'regressor' not in cfg or 'features' not in cfg:
            raise wm.WeightsError(f'{path} is not an lgdm regressor file (no config with features and regressor)')
        head_cfg, feat_cfg = cfg['regressor'], dict(cfg['features'])
        for k, v in given.items():
            if k in feat_cfg and _norm(feat_cfg[k]) != _norm(v):
                raise ValueError(f'lgdm: {path} was trained with {k}={feat_cfg[k]!r}; got {k}={v!r}')
        sd_path = sd_path or feat_cfg.pop('sd_path', None)
        feat_cfg.pop('sd_path', None)
    elif pretrained:
        raise wm.WeightsError("lgdm needs a trained regressor: give weights_path (a file written by "
                              "options/metrics/train_lgdm.yml), or pretrained=False for an untrained head")
    feats = build_feature_extractor(device, sd_path or SD15_HUB_ID, amp=amp, **{**feat_cfg, **given})
    head = LGDMRegressor(**(head_cfg or {'in_features': feats.dim, 'regressor': regressor, 'hidden': hidden}))
    if head.in_features != feats.dim:
        raise ValueError(f'lgdm: the regressor expects {head.in_features} features, the extractor gives {feats.dim}')
    if sd is not None:
        missing, unexpected = head.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise wm.WeightsError(f'weights file {weights_path} does not fit LGDMRegressor: missing '
                                  f'{list(missing)[:3]}, unexpected {list(unexpected)[:3]}')
    scorer = NRScorer.for_row('lgdm', LGDMNet(feats, head))  # direction, range, minimum side: the table's
    scorer.pretrained = sd is not None
    return scorer.to(feats.text_embedding.device)


def _norm(v):
    """Option values compared as the YAML/JSON forms they were stored in (tuples as lists)."""
    return [_norm(x) for x in v] if isinstance(v, (tuple, list)) else v


# ----------------------------------------------------------------------------------------- configurations
# Stable Diffusion 1.5's U-Net and VAE configurations, written from the values of its published
# config.json files (unet/, vae/), for random-weight timing without a download.
SD15_UNET_CONFIG = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                        down_block_types=('CrossAttnDownBlock2D',) * 3 + ('DownBlock2D',),
                        up_block_types=('UpBlock2D',) + ('CrossAttnUpBlock2D',) * 3, norm_num_groups=32,
                        act_fn='silu', flip_sin_to_cos=True, freq_shift=0, downsample_padding=1)
SD15_VAE_CONFIG = dict(sample_size=512, in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                       block_out_channels=(128, 256, 512, 512), down_block_types=('DownEncoderBlock2D',) * 4,
                       up_block_types=('UpDecoderBlock2D',) * 4, norm_num_groups=32, act_fn='silu',
                       scaling_factor=0.18215)
# A tiny configuration with SD's geometry (VAE factor 8, U-Net factor 2) for tests and timing.
TINY_UNET_CONFIG = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                        down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
                        up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'))
TINY_VAE_CONFIG = dict(block_out_channels=(16, 16, 32, 32), latent_channels=4, norm_num_groups=16, layers_per_block=1,
                       down_block_types=('DownEncoderBlock2D',) * 4, up_block_types=('UpDecoderBlock2D',) * 4)
CONFIGS = {'sd15': (SD15_UNET_CONFIG, SD15_VAE_CONFIG), 'tiny': (TINY_UNET_CONFIG, TINY_VAE_CONFIG)}


def random_components(config='tiny', seed=0):
    """(unet, vae, alphas_cumprod) with random weights for ``config`` ('tiny' or 'sd15'); no download."""
    diffusers = import_diffusers()
    unet_cfg, vae_cfg = CONFIGS[config]
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**unet_cfg)
    vae = diffusers.AutoencoderKL(**vae_cfg)
    return unet, vae, diffusers.DDIMScheduler(**SD1_SCHEDULE).alphas_cumprod.float()


def bench(config='tiny', size=512, batch=1, device='cpu', threads=None, amp=None, **feature_opts):
    """Seconds per image of ``LGDMFeatures`` (random weights of ``config``) at ``size``² plus the parts:
    one VAE encode, one U-Net pass, one guidance step (decode, distance, backward). Returns a dict."""
    import sys
    import time

    if threads:
        torch.set_num_threads(int(threads))
    device = torch.device(device)
    unet, vae, alphas = random_components(config)
    opts = {**FEATURE_DEFAULTS, **feature_opts}
    opts.pop('prompt')
    feats = LGDMFeatures(unet.to(device), vae.to(device), alphas.to(device), amp=amp, **opts).to(device)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

    def timed(fn):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        dt = time.perf_counter() - t0
        print(f'lgdm bench: {getattr(fn, "__name__", "step")} {dt:.2f} s', file=sys.stderr, flush=True)
        return out, dt

    res = OrderedDict(config=config, size=size, batch=batch, device=str(device), threads=torch.get_num_threads(),
                      **{k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.items()})
    with torch.no_grad():
        z0, res['encode_s'] = timed(lambda: feats.vae.encode(2 * x - 1).latent_dist.mean * feats.scaling_factor)
        _, res['unet_s'] = timed(lambda: feats._unet(z0, opts['timesteps'][0]))
    if opts['guidance_scale'] > 0 and opts['ddim_steps'] > 0:
        _, res['guidance_step_s'] = timed(lambda: feats.guide(z0, x))
    _, total = timed(lambda: feats(x))
    res['total_s'] = total
    res['s_per_image'] = total / batch
    res['feature_dim'] = feats.dim
    return res


if __name__ == '__main__':  # python -m iqa_plugin.archs.lgdm_arch --config sd15 --size 512 --threads 2
    import argparse
    import json

    ap = argparse.ArgumentParser(description='Time LGDM features with random weights (no download).')
    ap.add_argument('--config', choices=sorted(CONFIGS), default='tiny')
    ap.add_argument('--size', type=int, default=512)
    ap.add_argument('--batch', type=int, default=1)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--threads', type=int, default=None)
    ap.add_argument('--guidance-metric', default='milo-pseudomos')
    ap.add_argument('--guidance-scale', type=float, default=0.1)
    ap.add_argument('--ddim-steps', type=int, default=1)
    ap.add_argument('--amp', default=None)
    a = ap.parse_args()
    print(json.dumps(bench(a.config, a.size, a.batch, a.device, a.threads, guidance_metric=a.guidance_metric,
                           guidance_scale=a.guidance_scale, ddim_steps=a.ddim_steps, amp=a.amp)))
