"""CLIP vision transformer (ViT) that returns the patch tokens of every block, for A-FINE.

The parameter names follow OpenAI CLIP's ``visual.*`` keys (``conv1.weight``, ``class_embedding``,
``positional_embedding``, ``ln_pre``, ``transformer.resblocks.{i}.attn.in_proj_weight``, ...), so
OpenAI's ``ViT-B-32.pt`` and A-FINE's ``finetuned_clip`` load into it directly. ``ln_post`` and
``proj`` (the image-embedding head) are not used by A-FINE and are not built.

Facts taken from CLIP / A-FINE (not their code):

* ViT-B/32: width 768, 12 blocks, 12 heads (width // 64), 32x32 patches, 7x7 grid at 224 px;
  blocks are pre-LayerNorm (eps 1e-5) with multi-head self-attention and a 4x MLP with
  QuickGELU (``x * sigmoid(1.702 x)``).
* OpenAI's ``ViT-B-32.pt`` is a TorchScript archive; its tensors are read without running its code.
* For inputs that are not 224x224, A-FINE resizes the 50 x width positional embedding with
  bicubic interpolation (align_corners=False) along the token axis only, class token included,
  to ``1 + (H/32)(W/32)`` rows. The result is reproduced here exactly, so any H, W that are
  multiples of the patch size give the same tokens as A-FINE's reference implementation.
"""
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from iqa_plugin import weights as weights_mod
from iqa_plugin.utils.onednn_linear import PackedLinear

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# keys of OpenAI's visual tower that A-FINE never uses
UNUSED_VISUAL_KEYS = ('ln_post.weight', 'ln_post.bias', 'proj')


class QuickGELU(nn.Module):
    """CLIP's activation ``x * sigmoid(1.702 x)``."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names (batch first).

    Args:
        width (int): token dimension C.
        heads (int): number of heads; C must be divisible by it.
    """

    def __init__(self, width, heads):
        super().__init__()
        if width % heads:
            raise ValueError(f'width {width} is not divisible by heads {heads}')
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x, linear=F.linear):
        """x: (B, L, C) -> (B, L, C); ``linear`` computes the projections (``F.linear`` or a packed one)."""
        b, n, c = x.shape
        qkv = linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return linear(out.transpose(1, 2).reshape(b, n, c), self.out_proj.weight, self.out_proj.bias)


class ResidualBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, width, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ('c_fc', nn.Linear(width, width * 4)),
            ('gelu', QuickGELU()),
            ('c_proj', nn.Linear(width * 4, width)),
        ]))

    def forward(self, x, linear=F.linear):
        x = x + self.attn(self.ln_1(x), linear)
        h = linear(self.ln_2(x), self.mlp.c_fc.weight, self.mlp.c_fc.bias)
        return x + linear(self.mlp.gelu(h), self.mlp.c_proj.weight, self.mlp.c_proj.bias)


class _Blocks(nn.Module):
    """Holds ``resblocks`` so the keys read ``transformer.resblocks.{i}.*`` as in CLIP."""

    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualBlock(width, heads) for _ in range(layers)])


class CLIPVisionTower(nn.Module):
    """CLIP ViT image tower returning the patch tokens after every block.

    Args:
        width (int): token dimension (768 for ViT-B/32).
        layers (int): number of blocks (12).
        heads (int | None): attention heads; default ``width // 64`` (at least 1) as in CLIP.
        patch_size (int): patch side in pixels (32).
        grid (int): positional-embedding grid side at the native resolution (7, i.e. 224 px).
        fast_cpu_linear (bool): run the frozen float32 linear layers on the CPU through oneDNN with
            pre-packed weights (``iqa_plugin.utils.onednn_linear``; same values to float32 rounding,
            about 1.5x faster matrix products on AVX2, one extra copy of the weights in memory).

    ``forward(x)`` takes a CLIP-normalised (B, 3, H, W) tensor with H and W multiples of
    ``patch_size`` and returns a list of ``layers`` tensors of shape (B, N, width), N = HW / p^2,
    the patch tokens (class token dropped) after each block, before any final LayerNorm.
    """

    def __init__(self, width=768, layers=12, heads=None, patch_size=32, grid=7, fast_cpu_linear=True):
        super().__init__()
        self.packed_linear = PackedLinear(fast_cpu_linear)
        heads = heads or max(1, width // 64)
        self.width, self.layers, self.heads = width, layers, heads
        self.patch_size, self.grid = patch_size, grid
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Blocks(width, layers, heads)

    @property
    def config(self):
        return dict(width=self.width, layers=self.layers, heads=self.heads, patch_size=self.patch_size,
                    grid=self.grid)

    def resized_positional_embedding(self, tokens):
        """Positional embedding for ``tokens`` tokens (class token included): (tokens, width).

        A-FINE's convention: bicubic interpolation of the (grid^2 + 1, width) table along the
        token axis only; the identity when ``tokens == grid^2 + 1``.
        """
        pos = self.positional_embedding
        if tokens == pos.shape[0]:
            return pos
        return F.interpolate(pos[None, None], size=(tokens, pos.shape[1]), mode='bicubic',
                             align_corners=False)[0, 0]

    def forward(self, x):
        """x: (B, 3, H, W) normalised, H and W multiples of ``patch_size`` -> list of (B, N, width)."""
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f'CLIP ViT input {x.shape[-2]}x{x.shape[-1]} is not a multiple of the patch size {p}')
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, N, C)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.resized_positional_embedding(x.shape[1]).to(x.dtype)
        x = self.ln_pre(x)
        feats = []
        linear = self.packed_linear.linear
        for block in self.transformer.resblocks:
            x = block(x, linear)
            feats.append(x[:, 1:])
        return feats


# ---------------------------------------------------------------------------------------------
# loading


def vit_config_from_state_dict(sd):
    """ViT config (width, layers, heads, patch_size, grid) inferred from a visual state dict."""
    try:
        conv = sd['conv1.weight']
        pos = sd['positional_embedding']
    except KeyError as e:
        raise weights_mod.WeightsError(f'not a CLIP ViT visual state dict: missing {e}') from None
    layers = len({k.split('.')[2] for k in sd if k.startswith('transformer.resblocks.')})
    grid = round((pos.shape[0] - 1) ** 0.5)
    if grid * grid + 1 != pos.shape[0]:
        raise weights_mod.WeightsError(f'positional_embedding has {pos.shape[0]} rows, not 1 + a square')
    width = conv.shape[0]
    return dict(width=width, layers=layers, heads=max(1, width // 64), patch_size=conv.shape[-1], grid=grid)


def visual_state_dict(sd):
    """The ``visual.*`` entries of a full CLIP state dict with the prefix removed (unused keys dropped).

    A dict that has no ``visual.`` keys is taken to be a visual state dict already.
    """
    if not isinstance(sd, dict):
        raise weights_mod.WeightsError(f'expected a state dict, got {type(sd).__name__}')
    if any(k.startswith('visual.') for k in sd):
        sd = {k[len('visual.'):]: v for k, v in sd.items() if k.startswith('visual.')}
    return {k: v for k, v in sd.items() if k not in UNUSED_VISUAL_KEYS}


def load_clip_state_dict(path):
    """Full CLIP state dict from OpenAI's TorchScript archive or a plain state-dict file.

    TorchScript archives are read by ``iqa_plugin.utils.torchscript_tensors`` (tensors only, none of the
    archive's code runs); every other file goes through ``weights.load_state_dict``
    (``weights_only=True``). Tensors keep their dtype (OpenAI's file is fp16); ``load_visual_weights``
    converts them.
    """
    from iqa_plugin.utils.torchscript_tensors import is_torchscript_archive, read_torchscript_tensors

    path = Path(path)
    if is_torchscript_archive(path):
        try:
            sd = read_torchscript_tensors(path)
        except ValueError as e:
            raise weights_mod.WeightsError(f'cannot read TorchScript CLIP archive {path}: {e}') from e
    else:
        sd = weights_mod.load_state_dict(path)
        if isinstance(sd, dict) and 'state_dict' in sd and isinstance(sd['state_dict'], dict):
            sd = sd['state_dict']
    if not isinstance(sd, dict):
        raise weights_mod.WeightsError(f'{path} does not hold a CLIP state dict')
    return sd


def load_visual_weights(tower, sd, source='state dict', ignore_extra=False):
    """Load a visual state dict into ``tower`` strictly (unused CLIP keys ignored); clear errors.

    ``ignore_extra`` drops keys the tower does not have (a TorchScript archive also holds tensors
    that are not parameters); missing keys and shape mismatches always raise ``WeightsError``.
    """
    sd = visual_state_dict(sd)
    own = tower.state_dict()
    if ignore_extra:
        sd = {k: v for k, v in sd.items() if k in own}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise weights_mod.WeightsError(f'{source} does not match the CLIP ViT {tower.config}: '
                                       f'missing {missing[:5]}, unexpected {unexpected[:5]}')
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise weights_mod.WeightsError(f'{source}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}')
    tower.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return tower
