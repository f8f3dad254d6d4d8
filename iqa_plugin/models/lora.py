"""LoRA adapters on an SR network's ``nn.Linear`` and ``nn.Conv2d`` layers, through ``peft``.

``inject_lora(net, rank, alpha, dropout, target_modules=None, preset=None)`` wraps the matching layers of
``net`` in place with peft's LoRA layers (``W x + (alpha / rank) * B A x``, B initialised to zero, so the
adapted net computes exactly what the pretrained one does until the first step) and freezes every other
parameter. Target patterns are regular expressions matched in full against module names
(``body\\.\\d+\\.rdb\\d\\.conv\\d``); presets name the layers of BasicSR's archs:

* ``rrdb`` (``RRDBNet``): the RRDB convolutions ``body.N.rdbM.convK``, the trunk ``conv_body`` and the
  upsampling ``conv_up1``, ``conv_up2``, ``conv_hr`` (not ``conv_first``/``conv_last``: 3 channels);
* ``swinir`` (``SwinIR``): attention ``qkv``/``proj``, MLP ``fc1``/``fc2``, the RSTB convolutions
  ``layers.N.conv``, ``conv_after_body`` and the upsampling convolutions (not ``conv_first``/``conv_last``);
* ``auto``: the preset of the net's class.

An adapter file (``save_adapter``) holds the LoRA tensors (``params_lora``) and ``lora`` metadata: rank,
alpha, dropout, the adapted module names, the arch block (``network_g``), the base weights' file, param key
and ``sha256`` of the base state dict (``state_sha256``), so an adapter is never applied to another base.
``merged_state_dict`` folds the adapters into plain weights that stock BasicSR loads.

Errors in the input (patterns that match nothing, a rank above what a layer allows, a base that does not fit
the arch, an adapter of another base) raise ``LoRAError``, a ValueError with one line.
"""
import copy
import hashlib
import logging
import re
from collections import OrderedDict

import torch
from torch import nn

ADAPTER_NAME = 'default'
ADAPTER_KEY = 'params_lora'
META_KEY = 'lora'

PRESETS = {
    'rrdb': [r'body\.\d+\.rdb\d+\.conv\d+', r'conv_body', r'conv_up\d+', r'conv_hr'],
    'swinir': [r'layers\.\d+\.residual_group\.blocks\.\d+\.attn\.(qkv|proj)',
               r'layers\.\d+\.residual_group\.blocks\.\d+\.mlp\.fc[12]',
               r'layers\.\d+\.conv(\.\d+)?', r'conv_after_body', r'conv_before_upsample\.\d+',
               r'upsample\.\d+', r'conv_up\d+', r'conv_hr'],
}
PRESET_OF_CLASS = {'RRDBNet': 'rrdb', 'SwinIR': 'swinir'}


class LoRAError(ValueError):
    """Bad LoRA input (one line)."""


def _peft():
    """peft's LoRA pieces; bitsandbytes' warning about an optional CPU kernel is silenced on import."""
    logging.getLogger('bitsandbytes').setLevel(logging.ERROR)
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer
    return LoraConfig, inject_adapter_in_model, LoraLayer


def adaptable_modules(net):
    """(name, layer) of every ``nn.Linear`` and ``nn.Conv2d`` of ``net``, by their names before injection
    (an adapted layer's ``x.base_layer`` is reported as ``x``; LoRA's own layers are left out)."""
    suffix = '.base_layer'
    return [(n.removesuffix(suffix), m) for n, m in net.named_modules()
            if type(m) in (nn.Linear, nn.Conv2d) and 'lora_' not in n]


def resolve_targets(net, target_modules=None, preset=None):
    """Names of the layers to adapt: ``target_modules`` (regexes, matched in full) or a preset's."""
    if target_modules:
        patterns = list(target_modules)
    else:
        preset = preset or 'auto'
        if preset == 'auto':
            preset = PRESET_OF_CLASS.get(type(net).__name__)
            if preset is None:
                raise LoRAError(f'LoRA preset auto: no preset for {type(net).__name__} (presets: '
                                f'{", ".join(PRESETS)}); give target_modules')
        if preset not in PRESETS:
            raise LoRAError(f"unknown LoRA preset '{preset}' (known: {', '.join(PRESETS)}, auto)")
        patterns = PRESETS[preset]
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as e:
        raise LoRAError(f'LoRA target_modules: bad regular expression: {e}') from e
    modules = adaptable_modules(net)
    names = [n for n, _ in modules if any(c.fullmatch(n) for c in compiled)]
    if not names:
        some = [n for n, _ in modules]
        shown = ', '.join(some[:8]) + (f', ... ({len(some)} in all)' if len(some) > 8 else '')
        raise LoRAError(f'LoRA target_modules {patterns} match no Linear/Conv2d module of {type(net).__name__}; '
                        f'its modules: {shown}')
    return names


def max_rank(module):
    """The largest useful rank of a layer: min(in, out) for Linear; min(in_channels*k*k/groups, out) for Conv2d."""
    if isinstance(module, nn.Linear):
        return min(module.in_features, module.out_features)
    kh, kw = module.kernel_size
    return min(module.in_channels // module.groups * kh * kw, module.out_channels)


def check_rank(net, names, rank):
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise LoRAError(f'LoRA rank must be a positive integer, got {rank!r}')
    modules = dict(adaptable_modules(net))
    for name in names:
        limit = max_rank(modules[name])
        if rank > limit:
            m = modules[name]
            shape = (f'Linear {m.in_features}->{m.out_features}' if isinstance(m, nn.Linear) else
                     f'Conv2d {m.in_channels}->{m.out_channels} k{m.kernel_size[0]}x{m.kernel_size[1]}')
            raise LoRAError(f'LoRA rank {rank} is larger than layer {name} allows ({shape}: at most {limit}); '
                            f'lower the rank or leave the layer out of target_modules')


def inject_lora(net, rank=8, alpha=8, dropout=0.0, target_modules=None, preset=None):
    """Wrap the target layers of ``net`` (in place) in LoRA layers; freeze all non-LoRA parameters.

    Returns the list of adapted module names. Raises ``LoRAError`` on bad input before changing ``net``.
    """
    names = resolve_targets(net, target_modules, preset)
    check_rank(net, names, rank)
    if is_lora(net):
        raise LoRAError(f'{type(net).__name__} already has LoRA adapters')
    if not 0 <= float(dropout) < 1:
        raise LoRAError(f'LoRA dropout must be in [0, 1), got {dropout}')
    LoraConfig, inject, _ = _peft()
    pattern = '^(?:' + '|'.join(re.escape(n) for n in names) + ')$'
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=float(dropout), target_modules=pattern,
                        init_lora_weights=True, bias='none')
    inject(config, net, adapter_name=ADAPTER_NAME)
    for n, p in net.named_parameters():
        p.requires_grad_('lora_' in n)
    return names


def lora_layers(net):
    """(name, peft LoRA layer) of an adapted net."""
    _, _, LoraLayer = _peft()
    return [(n, m) for n, m in net.named_modules() if isinstance(m, LoraLayer)]


def is_lora(net):
    return any('lora_' in n for n, _ in net.named_parameters())


def adapter_state_dict(net):
    """The LoRA tensors of ``net`` (CPU copies), keyed by their names in the adapted net."""
    return OrderedDict((k, v.detach().cpu().clone()) for k, v in net.state_dict().items() if 'lora_' in k)


def load_adapter_state_dict(net, state):
    """Load LoRA tensors into an adapted net; every LoRA tensor of the net must be given, nothing else."""
    own = {k for k in net.state_dict() if 'lora_' in k}
    missing, extra = sorted(own - set(state)), sorted(set(state) - own)
    if missing or extra:
        raise LoRAError(f'adapter does not fit the adapted net: missing {missing[:3]}, unexpected {extra[:3]}')
    net.load_state_dict(state, strict=False)


def base_state_dict(net):
    """The plain (unadapted) state dict of a net, adapted or not: ``x.base_layer.w`` -> ``x.w``, no LoRA."""
    return OrderedDict((k.replace('.base_layer.', '.'), v) for k, v in net.state_dict().items() if 'lora_' not in k)


def merged_state_dict(net):
    """Plain state dict with each adapter folded into its layer's weight (``W + scale * B A``); ``net`` unchanged."""
    state = OrderedDict((k, v.detach().clone()) for k, v in base_state_dict(net).items())
    for name, layer in lora_layers(net):
        if ADAPTER_NAME in getattr(layer, 'lora_A', {}):
            key = f'{name}.weight'
            with torch.no_grad():
                state[key] = state[key] + layer.get_delta_weight(ADAPTER_NAME).to(state[key].dtype)
    return state


def state_sha256(state):
    """sha256 of a state dict's names, dtypes, shapes and values (independent of file format and param key)."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f'{k}|{v.dtype}|{tuple(v.shape)}|'.encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b'')
    return h.hexdigest()


def read_weights(path):
    """A weights file read with ``weights_only=True``; LoRAError (one line) when it cannot be read."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError as e:
        raise LoRAError(f'weights file not found: {path}') from e
    except Exception as e:
        raise LoRAError(f'cannot read weights file {path}: {type(e).__name__}: {str(e).splitlines()[0]}') from e


def is_adapter(obj):
    return isinstance(obj, dict) and META_KEY in obj and ADAPTER_KEY in obj


def base_params(obj, param_key='params', path='base'):
    """The state dict of a BasicSR net_g file (``params``/``params_ema``, as BasicSR picks), ``module.`` removed."""
    if is_adapter(obj):
        raise LoRAError(f'{path} is a LoRA adapter, not a base net_g')
    if isinstance(obj, dict) and param_key in obj:
        state = obj[param_key]
    elif isinstance(obj, dict) and 'params' in obj:
        state = obj['params']
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        raise LoRAError(f'{path}: no {param_key!r} or params state dict in the file')
    return OrderedDict((k.removeprefix('module.'), v) for k, v in state.items())


def load_base(net, state, path='base'):
    """Load a plain state dict into an unadapted net strictly; LoRAError naming the mismatch otherwise."""
    check_fits(net, state, path)
    net.load_state_dict(state, strict=True)


def check_fits(net, state, path='base'):
    """LoRAError (one line) unless ``state`` has exactly the names and shapes of the unadapted ``net``."""
    own = base_state_dict(net)
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or extra or shapes:
        parts = ([f'missing {missing[:3]}'] if missing else []) + ([f'unexpected {extra[:3]}'] if extra else []) + \
            ([f'shape {shapes[:2]}'] if shapes else [])
        raise LoRAError(f'{path} does not match {type(net).__name__}: {"; ".join(parts)}')


def lora_options(block):
    """The LoRA block with defaults: ``{enabled, rank, alpha, dropout, preset, target_modules}``."""
    block = dict(block or {})
    allowed = {'enabled', 'rank', 'alpha', 'dropout', 'preset', 'target_modules'}
    extra = sorted(set(block) - allowed)
    if extra:
        raise LoRAError(f"unknown key{'s' if len(extra) > 1 else ''} {extra} in train.lora (known: {sorted(allowed)})")
    out = {'enabled': bool(block.get('enabled', True)), 'rank': block.get('rank', 8),
           'alpha': block.get('alpha', block.get('rank', 8)), 'dropout': float(block.get('dropout', 0.0)),
           'preset': block.get('preset', 'auto'), 'target_modules': block.get('target_modules')}
    if isinstance(out['target_modules'], str):
        out['target_modules'] = [out['target_modules']]
    return out


def make_meta(net, names, options, network_opt, base_state, base_path=None, base_param_key='params'):
    return {'rank': options['rank'], 'alpha': options['alpha'], 'dropout': options['dropout'],
            'target_modules': list(names), 'network_g': copy.deepcopy(dict(network_opt)),
            'base_sha256': state_sha256(base_state), 'base_path': base_path, 'base_param_key': base_param_key,
            'arch': type(net).__name__}


def save_adapter(path, net, meta):
    """Write ``{params_lora: adapter tensors, lora: meta}`` to ``path`` (atomically)."""
    import os

    tmp = f'{path}.tmp'
    torch.save({ADAPTER_KEY: adapter_state_dict(net), META_KEY: meta}, tmp)
    os.replace(tmp, path)


def apply_adapter(net, adapter, base_state, path='adapter'):
    """Inject the adapter's LoRA layout into an unadapted net holding ``base_state`` and load its tensors.

    Raises LoRAError when the adapter's recorded base hash differs from ``base_state``'s.
    """
    meta = adapter[META_KEY]
    got = state_sha256(base_state)
    if got != meta['base_sha256']:
        raise LoRAError(f'{path} was trained on another base (recorded base sha256 {meta["base_sha256"][:12]}..., '
                        f'this base {got[:12]}...)')
    inject_lora(net, meta['rank'], meta['alpha'], meta['dropout'],
                target_modules=[re.escape(n) for n in meta['target_modules']])
    load_adapter_state_dict(net, adapter[ADAPTER_KEY])
    return meta


def build_network_cpu(network_opt):
    """The net of a BasicSR ``network_g`` block, from the arch registry. Not ``basicsr.archs.build_network``:
    it logs through BasicSR's root logger, and a first call before ``train_pipeline`` (the pre-flight) would
    set that logger up without the run's log file."""
    from basicsr.utils.registry import ARCH_REGISTRY

    block = copy.deepcopy(dict(network_opt))
    return ARCH_REGISTRY.get(block.pop('type'))(**block)


def merge_files(base_path, adapter_path, out_path):
    """``iqa-plugin lora merge``: base net_g + adapter -> plain BasicSR net_g file ``{params: merged}``.

    Every check (adapter file, arch, base hash) runs before ``out_path`` is written. Returns the adapter meta.
    """
    adapter = read_weights(adapter_path)
    if not is_adapter(adapter):
        raise LoRAError(f'{adapter_path} is not a LoRA adapter file (no {ADAPTER_KEY!r}/{META_KEY!r} entries)')
    meta = adapter[META_KEY]
    base = base_params(read_weights(base_path), meta.get('base_param_key') or 'params', base_path)
    net = build_network_cpu(meta['network_g'])
    load_base(net, base, base_path)
    apply_adapter(net, adapter, base_state_dict(net), adapter_path)
    merged = OrderedDict((k, v.cpu()) for k, v in merged_state_dict(net).items())
    torch.save({'params': merged}, out_path)
    return meta
