"""``NRIQAFinetuneModel``: direct NR-IQA fine-tuning of a pretrained SR net, regularised by LoRA.

Optimises pixel + perceptual (+ GAN only when ``train.gan_opt`` is given, the paper's "IG" ablation) − λ_Q·Q(Î)
(``train.iqa_opt``, e.g. ``{nr: {type: NRIQALoss, metric: nr-lite, loss_weight: 0.1}}``) on top of a pretrained
net_g (``path.pretrain_network_g``, BasicSR ``params``/``params_ema``), training only LoRA adapters
(arXiv 2504.18524: a frozen base bounds how far the net can drift towards the scorer's adversarial
artefacts)::

    model_type: NRIQAFinetuneModel
    path: {pretrain_network_g: experiments/pretrained_models/RRDB_ESRGAN_x4.pth, param_key_g: params_ema}
    train:
      lora: {enabled: true, rank: 8, alpha: 8, dropout: 0, preset: auto}   # or target_modules: [regex, ...]
      gt_sampling: {type: amo, scorer: {type: nr-lite}}                   # optional: multi-GT (MultiGTMixin)
      amp: bf16            # optional (GPU): autocast bf16|fp16 (fp16 with dynamic loss scaling)
      channels_last: true  # optional (GPU)

* ``train.amp`` autocasts the forward passes of the trained networks (net_g, and net_d with ``gan_opt``; their
  outputs are cast back to float32) and nothing else: the losses and every backward pass run outside autocast
  (PyTorch's AMP recipe; a backward called under autocast would run the frozen scorers' backward in reduced
  precision too). The plugin's frozen scorers (the ``iqa_opt`` losses, AMO's GT choice) also switch autocast
  off themselves and score in float32 (``scoring.float32_scoring``), so their values do not depend on ``amp``
  or the device.
* ``train.lora`` absent = LoRA with the defaults above; ``lora: {enabled: false}`` = full fine-tuning with the
  same loop (for comparison). ``ema_decay`` must be 0 with LoRA (the adapters are the trained state).
* Checkpoints (``net_g_<iter>.pth``, ``net_g_best.pth``) hold only the adapters and ``lora`` metadata (rank,
  alpha, layers, arch block, base file and the base weights' sha256, ``iqa_plugin.models.lora``); the
  training state holds the adapters' optimizer state. On resume BasicSR points ``pretrain_network_g`` at the
  adapter; the model loads the recorded base, checks its hash, injects and loads the adapter.
  ``iqa-plugin lora merge`` folds an adapter into a plain net_g for stock BasicSR.
* The model is ``IQAModelMixin`` + BasicSR's ``SRModel`` (``SRGANModel`` with ``gan_opt``), plus
  ``MultiGTMixin`` when ``train.gt_sampling`` is given; ``NRIQAFinetuneModel(opt)`` builds the matching one.
"""
import math
import os

import torch
from basicsr.models.sr_model import SRModel
from basicsr.models.srgan_model import SRGANModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import MODEL_REGISTRY

from iqa_plugin.models import lora
from iqa_plugin.models.iqa_mixins import IQAModelMixin
from iqa_plugin.models.multigt_model import MultiGTMixin

AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def amp_dtype(amp):
    """The autocast dtype of ``train.amp``: None for none/fp32, else bf16 or fp16; LoRAError otherwise."""
    if amp in (None, False, 'none', 'fp32'):
        return None
    if amp in AMP_DTYPES:
        return AMP_DTYPES[amp]
    raise lora.LoRAError(f"train.amp must be bf16, fp16 or none, got {amp!r}")


def check_train_options(train):
    """The checks of the ``train`` block that the pre-flight and the model share (``train.lora``, ``train.amp``,
    no EMA with LoRA); returns the LoRA options (``lora.lora_options``)."""
    opts = lora.lora_options(train.get('lora'))
    amp_dtype(train.get('amp'))
    if opts['enabled'] and float(train.get('ema_decay', 0) or 0) > 0:
        raise lora.LoRAError('train.ema_decay must be 0 with LoRA (the adapters are the trained state); '
                             'set ema_decay: 0 or lora.enabled: false')
    return opts


class DynamicLossScale:
    """fp16 loss scaling through the optimizer's step pre-hook (BasicSR's step has no GradScaler seam).

    ``scale_output(out)`` multiplies the gradient flowing back from the net's output by ``scale``; the
    pre-hook divides the gradients by it before ``step`` or, when one is not finite, drops every gradient
    (``grad = None``: the optimizer skips those parameters) and halves the scale; after ``growth_interval``
    good steps the scale doubles (torch.amp.GradScaler's schedule).
    """

    def __init__(self, params, init_scale=2.0 ** 16, growth_interval=2000):
        self.params = list(params)
        self.scale = float(init_scale)
        self.growth_interval = growth_interval
        self.good_steps = 0
        self.skipped = 0

    def scale_output(self, out):
        return _ScaleGrad.apply(out, self.scale)

    def pre_step(self, optimizer, args, kwargs):
        grads = [p.grad for p in self.params if p.grad is not None]
        if any(not torch.isfinite(g).all() for g in grads):
            for p in self.params:
                p.grad = None
            self.scale /= 2.0
            self.good_steps, self.skipped = 0, self.skipped + 1
            return
        for g in grads:
            g.div_(self.scale)
        self.good_steps += 1
        if self.good_steps % self.growth_interval == 0:
            self.scale *= 2.0


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def _float32_outputs(out):
    """A network's output with its floating tensors (also in tuples and lists) cast to float32."""
    if torch.is_tensor(out):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple) and hasattr(out, '_fields'):  # a named tuple
        return type(out)(*(_float32_outputs(o) for o in out))
    if isinstance(out, (tuple, list)):
        return type(out)(_float32_outputs(o) for o in out)
    return out


class LoRAFinetuneMixin:
    """Pretrained net_g + LoRA adapters (or full fine-tuning), adapter-only checkpoints, optional autocast."""

    _lora_meta = None   # set once net_g carries adapters
    _lora_base = None   # (path, param key) of the plain base loaded from path.pretrain_network_g

    # ------------------------------------------------------------------ options
    def lora_options(self):
        return lora.lora_options((self.opt.get('train') or {}).get('lora'))

    def _is_net_g(self, net):
        return hasattr(self, 'net_g') and self.get_bare_model(net) is self.get_bare_model(self.net_g)

    # ------------------------------------------------------------------ loading
    def load_network(self, net, load_path, strict=True, param_key='params'):
        """A plain base goes to BasicSR's loader (after a one-line arch check); an adapter file loads its
        recorded base, checks the base hash, injects LoRA and loads the adapter (resume, testing)."""
        if not self._is_net_g(net):
            return super().load_network(net, load_path, strict, param_key)
        bare = self.get_bare_model(net)
        obj = lora.read_weights(load_path)
        if lora.is_adapter(obj):
            meta = obj[lora.META_KEY]
            base_path = meta.get('base_path')
            if not base_path or not os.path.isfile(base_path):
                raise lora.LoRAError(f'{load_path}: its base net_g {base_path!r} is not a file (the adapter needs '
                                     'the base it was trained on)')
            self.load_network(net, base_path, strict, meta.get('base_param_key') or 'params')
            self._lora_meta = lora.apply_adapter(bare, obj, lora.base_state_dict(bare), load_path)
            get_root_logger().info(f'Loaded LoRA adapter {load_path} (rank {meta["rank"]}, '
                                   f'{len(meta["target_modules"])} layers) on base {base_path}')
            return None
        if param_key not in obj:
            param_key = 'params'  # BasicSR's fall-back from params_ema
        if strict:
            lora.check_fits(bare, lora.base_params(obj, param_key, load_path), load_path)
        super().load_network(net, load_path, strict, param_key)
        self._lora_base = (os.path.abspath(load_path), param_key)
        return None

    # ------------------------------------------------------------------ training set-up
    def init_training_settings(self):
        train_opt = self.opt['train']
        opts = check_train_options(train_opt)
        if opts['enabled']:
            self._inject_or_check(opts)
        elif self._lora_meta is not None:
            raise lora.LoRAError('path.pretrain_network_g is a LoRA adapter but train.lora.enabled is false; '
                                 'merge it first (iqa-plugin lora merge) for full fine-tuning')
        self._setup_precision(train_opt)
        super().init_training_settings()
        n_train = sum(p.numel() for p in self.net_g.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in self.net_g.parameters())
        get_root_logger().info(f"{'LoRA' if opts['enabled'] else 'Full'} fine-tuning: {n_train:,d} of {n_all:,d} "
                               f'net_g parameters trainable')
        if self._loss_scale is not None:
            self._loss_scale.params = [p for p in self.net_g.parameters() if p.requires_grad]
            self.optimizer_g.register_step_pre_hook(self._loss_scale.pre_step)

    def _inject_or_check(self, opts):
        bare = self.get_bare_model(self.net_g)
        if self._lora_meta is None:
            base = lora.base_state_dict(bare)
            names = lora.inject_lora(bare, opts['rank'], opts['alpha'], opts['dropout'], opts['target_modules'],
                                     opts['preset'])
            path, key = self._lora_base or (None, 'params')
            self._lora_meta = lora.make_meta(bare, names, opts, self.opt['network_g'], base, path, key)
        else:  # resumed adapter: the option file must describe the same adapter
            names = lora.resolve_targets(bare, opts['target_modules'], opts['preset'])
            meta = self._lora_meta
            if (opts['rank'], opts['alpha'], sorted(names)) != (meta['rank'], meta['alpha'],
                                                                sorted(meta['target_modules'])):
                raise lora.LoRAError(f"train.lora (rank {opts['rank']}, alpha {opts['alpha']}, {len(names)} layers) "
                                     f"differs from the resumed adapter (rank {meta['rank']}, alpha {meta['alpha']}, "
                                     f"{len(meta['target_modules'])} layers)")
        if self.opt.get('dist'):  # DDP registered the parameters before the adapters existed: wrap again
            self.net_g = self.model_to_device(bare)

    def _setup_precision(self, train_opt):
        self._amp = amp_dtype(train_opt.get('amp'))
        self._loss_scale = DynamicLossScale([]) if self._amp is torch.float16 else None
        self._channels_last = bool(train_opt.get('channels_last', False)) and self.device.type == 'cuda'
        if self._channels_last:
            self.net_g.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ steps
    def feed_data(self, data):
        super().feed_data(data)
        if getattr(self, '_channels_last', False):
            self.lq = self.lq.contiguous(memory_format=torch.channels_last)

    def optimize_parameters(self, current_iter):
        if getattr(self, '_amp', None) is None:
            return super().optimize_parameters(current_iter)
        entered = []  # autocast contexts opened by a forward pre-hook and not yet closed by its forward hook

        def enter(module, args):
            ctx = torch.autocast(device_type=self.device.type, dtype=self._amp)
            ctx.__enter__()
            entered.append(ctx)

        def leave(module, args, out):  # the losses get float32 outputs (a differentiable cast)
            entered.pop().__exit__(None, None, None)
            return _float32_outputs(out)

        # autocast around the trained networks' forwards only: losses and backward stay outside (module docstring)
        handles = []
        for net in (self.net_g, getattr(self, 'net_d', None)):
            if net is not None:
                handles += [net.register_forward_pre_hook(enter), net.register_forward_hook(leave)]
        if self._loss_scale is not None:
            handles.append(self.net_g.register_forward_hook(lambda m, i, out: self._loss_scale.scale_output(out)))
        try:
            super().optimize_parameters(current_iter)
        finally:
            for handle in handles:
                handle.remove()
            while entered:  # a forward that raised never reached its forward hook
                entered.pop().__exit__(None, None, None)
        if self._loss_scale is not None:
            self.log_dict['loss_scale'] = math.log2(self._loss_scale.scale)
        return None

    # ------------------------------------------------------------------ saving
    @master_only  # as BasicSR's: in DDP every rank would write (and rename) the same file
    def save_network(self, net, net_label, current_iter, param_key='params'):
        """net_g with adapters: the adapter file (adapters + metadata); anything else: BasicSR's."""
        if net_label != 'net_g' or self._lora_meta is None or isinstance(net, list):
            return super().save_network(net, net_label, current_iter, param_key)
        name = f"net_g_{'latest' if current_iter == -1 else current_iter}.pth"
        lora.save_adapter(os.path.join(self.opt['path']['models'], name), self.get_bare_model(net), self._lora_meta)
        return None


class NRIQAFinetuneSRModel(LoRAFinetuneMixin, IQAModelMixin, SRModel):
    """LoRA/full fine-tuning on SRModel (no GAN term)."""


class NRIQAFinetuneGANModel(LoRAFinetuneMixin, IQAModelMixin, SRGANModel):
    """LoRA/full fine-tuning on SRGANModel (GAN term on: ``train.gan_opt`` and ``network_d`` given)."""


class NRIQAFinetuneMultiGTSRModel(LoRAFinetuneMixin, MultiGTMixin, IQAModelMixin, SRModel):
    """As NRIQAFinetuneSRModel, target chosen among GT candidates (``train.gt_sampling``)."""


class NRIQAFinetuneMultiGTGANModel(LoRAFinetuneMixin, MultiGTMixin, IQAModelMixin, SRGANModel):
    """As NRIQAFinetuneGANModel, target chosen among GT candidates (``train.gt_sampling``)."""


VARIANTS = {(False, False): NRIQAFinetuneSRModel, (True, False): NRIQAFinetuneGANModel,
            (False, True): NRIQAFinetuneMultiGTSRModel, (True, True): NRIQAFinetuneMultiGTGANModel}


@MODEL_REGISTRY.register()
class NRIQAFinetuneModel:
    """``model_type: NRIQAFinetuneModel``: builds the variant the options ask for (see the module docstring)."""

    iqa_options = True  # the pre-flight accepts iqa_opt, table-name validators and select_by

    def __new__(cls, opt):
        return variant_for(opt)(opt)

    @staticmethod
    def check_options(opt, is_train=True):
        """Pre-flight (before anything is written): LoRA block, targets, ranks, base vs arch, EMA, amp."""
        check_options(opt, is_train)


def variant_for(opt):
    train = (opt.get('train') or {}) if opt.get('is_train', True) else {}
    return VARIANTS[(bool(train.get('gan_opt')), train.get('gt_sampling') is not None)]


def check_options(opt, is_train=True):
    """Raises LoRAError (one line) for what would fail at model construction; builds net_g on the CPU."""
    train = opt.get('train') or {}
    if not is_train:
        return
    opts = check_train_options(train)
    if train.get('gan_opt') and not opt.get('network_d'):
        raise lora.LoRAError('train.gan_opt needs a network_d block (the GAN term trains a discriminator)')
    if not opts['enabled']:
        return
    net = lora.build_network_cpu(opt['network_g'])
    path = (opt.get('path') or {}).get('pretrain_network_g')
    if path:
        obj = lora.read_weights(path)
        if lora.is_adapter(obj):
            return  # a resume: checked against its recorded base when the model loads it
        key = (opt.get('path') or {}).get('param_key_g', 'params')
        lora.check_fits(net, lora.base_params(obj, key, path), path)
    names = lora.resolve_targets(net, opts['target_modules'], opts['preset'])
    lora.check_rank(net, names, opts['rank'])
