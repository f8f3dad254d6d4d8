"""Multi-GT SR training (HGGT; "Augmenting Perceptual SR via IQA Predictors", CVPR 2025).

Each training sample carries every ground-truth candidate of its image (``MultiGTDataset``: the original
and its enhanced versions, with labels). ``MultiGTMixin`` picks one candidate per sample every iteration with
the strategy of ``train.gt_sampling`` (``iqa_plugin.models.gt_sampling``: orig, rand, upos, sma, smp, amo) and
makes it the target of every loss: pixel, perceptual, the GAN's real input and the plugin's IQA losses,
because BasicSR's models all read ``self.gt``. The LQ stays the one made from the original.

    model_type: MultiGTRealESRGANModel      # or MultiGTSRModel, MultiGTESRGANModel
    train:
      gt_sampling: {type: amo, scorer: {type: nr-lite}}

Validation follows HGGT's protocol: when the validation data has labelled candidates, every full-reference
``val.metrics`` block is scored against each positive ground truth and averaged per image
(``calculate_multigt``); no-reference blocks are unchanged. The strategy's state (its RNG) is saved in the
training state, so a resumed run continues the same sequence of choices; the chosen-index histogram and the
chosen candidates' mean score go to the log and TensorBoard (``gt_sampling/...``).

All IQA features of ``IQAModelMixin`` (losses, validators, checkpoint selection) work unchanged.
"""
import inspect
import random

import torch
from basicsr.models.esrgan_model import ESRGANModel
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.registry import METRIC_REGISTRY, MODEL_REGISTRY

from iqa_plugin import scoring
from iqa_plugin.data.multigt_layout import LABEL_POSITIVE
from iqa_plugin.models.iqa_gan_model import IQARealESRGANModel
from iqa_plugin.models.iqa_mixins import IQAModelMixin
from iqa_plugin.models.selection import validator_metric


def is_full_reference(block):
    """True for a ``val.metrics`` block that compares with a ground truth."""
    found = validator_metric(block)
    if found is not None:
        return scoring.get_spec(found[0]).kind == 'fr'
    name = block.get('type')
    if name not in METRIC_REGISTRY:
        return False
    return 'img2' in inspect.signature(METRIC_REGISTRY.get(name)).parameters


def crop_candidates(data, size):
    """One random ``size`` window (BasicSR's ``random``) of every candidate and of 'gt', for a whole batch."""
    cands = data['gt_candidates']
    h, w = cands.shape[-2:]
    if h < size or w < size:
        raise ValueError(f'multi-GT candidates {h}x{w} are smaller than gt_size {size}')
    if (h, w) == (size, size):
        return data
    top, left = random.randint(0, h - size), random.randint(0, w - size)
    out = dict(data)
    out['gt_candidates'] = cands[..., top:top + size, left:left + size].contiguous()
    out['gt'] = out['gt_candidates'][:, 0].clone()
    return out


class MultiGTMixin:
    """GT selection among candidates for training, HGGT's multi-GT protocol for validation."""

    def init_training_settings(self):
        from iqa_plugin.models.gt_sampling import build_gt_strategy

        super().init_training_settings()
        block = self.opt['train'].get('gt_sampling') or {'type': 'upos'}
        self.gt_strategy = build_gt_strategy(dict(block), device=self.device)
        get_root_logger().info(f'GT sampling: {block}')

    # ------------------------------------------------------------------ training
    def choose_gt(self, data):
        """The chosen candidate per sample, (B, 3, H, W) on the model's device."""
        candidates = data['gt_candidates']
        idx = self.gt_strategy.choose(data).to(candidates.device)
        return candidates[torch.arange(candidates.shape[0], device=candidates.device), idx].to(self.device)

    def feed_data(self, data):
        training = self.is_train and not getattr(self, 'validating', False) and 'gt_candidates' in data
        self._chosen_gt = self.choose_gt(data) if training and hasattr(self, 'gt_strategy') else None
        self._val_positives = self.positives(data) if getattr(self, 'validating', False) else []
        super().feed_data(data)
        if self._chosen_gt is not None:
            if self._chosen_gt.shape != self.gt.shape:
                raise ValueError(f'chosen GT {tuple(self._chosen_gt.shape)} and original {tuple(self.gt.shape)} differ '
                                 'after the model\'s crop: set datasets.train.gt_size equal to gt_size')
            self.gt = self._chosen_gt
            if hasattr(self, 'gt_usm'):  # Real-ESRGAN: the sharpened target follows the chosen GT
                self.gt_usm = self.usm_sharpener(self.gt)

    def optimize_parameters(self, current_iter):
        super().optimize_parameters(current_iter)
        if hasattr(self, 'gt_strategy'):
            self.log_dict.update(self.gt_strategy.last_stats())

    # ------------------------------------------------------------------ validation
    @staticmethod
    def positives(data):
        """The positive candidates of a validation batch of one image: list of (1, 3, H, W) CPU tensors."""
        if 'gt_candidates' not in data or 'gt_labels' not in data:
            return []
        labels = data['gt_labels'][0]
        return [data['gt_candidates'][:1, k].float() for k in range(labels.shape[0]) if int(labels[k]) == LABEL_POSITIVE]

    def validation_extras(self):
        extras = super().validation_extras()
        extras['gt_positives'] = list(getattr(self, '_val_positives', []) or [])
        return extras

    def _iqa_normalise_metrics(self):
        super()._iqa_normalise_metrics()
        if (self.opt.get('val') or {}).get('multigt_protocol', 'positives') != 'positives':
            return
        for block in ((self.opt.get('val') or {}).get('metrics') or {}).values():
            if block.get('type') != 'calculate_multigt' and is_full_reference(block):
                block['metric_type'] = block['type']
                block['type'] = 'calculate_multigt'

    # ------------------------------------------------------------------ state
    def extra_training_state(self):
        state = super().extra_training_state()
        if hasattr(self, 'gt_strategy'):
            state['gt_sampling'] = self.gt_strategy.state_dict()
        return state

    def load_extra_training_state(self, state):
        super().load_extra_training_state(state)
        if hasattr(self, 'gt_strategy') and state.get('gt_sampling') is not None:
            self.gt_strategy.load_state_dict(state['gt_sampling'])


@MODEL_REGISTRY.register()
class MultiGTSRModel(MultiGTMixin, IQAModelMixin, SRModel):
    """SRModel trained on a GT chosen among candidates (SwinIR/RRDB with L1 + perceptual)."""


@MODEL_REGISTRY.register()
class MultiGTESRGANModel(MultiGTMixin, IQAModelMixin, ESRGANModel):
    """ESRGANModel trained on a GT chosen among candidates; the discriminator's real input is that GT."""


@MODEL_REGISTRY.register()
class MultiGTRealESRGANModel(MultiGTMixin, IQARealESRGANModel):
    """RealESRGANModel (HGGT's recipe: LQ degraded on the fly from the original) trained on a chosen GT.

    ``MultiGTDataset`` (``lq_mode: realesrgan``) returns the candidates padded to ``crop_pad_size`` as
    BasicSR's ``RealESRGANDataset`` does; here they are all cropped to ``gt_size`` at one random window
    before the degradation, so the LQ is made from that window of the original and BasicSR's crop after
    the degradation keeps it (the only difference to Real-ESRGAN: the blur sees the crop, not the padded
    image). The chosen GT travels through Real-ESRGAN's training queue with its LQ.
    """

    def feed_data(self, data):
        if self.is_train and not getattr(self, 'validating', False) and 'gt_candidates' in data:
            data = crop_candidates(data, int(self.opt['gt_size']))
        super().feed_data(data)

    @torch.no_grad()
    def _dequeue_and_enqueue(self):
        chosen = getattr(self, '_chosen_gt', None)
        if chosen is None:
            return super()._dequeue_and_enqueue()
        c = self.gt.shape[1]
        self.gt = torch.cat([self.gt, chosen], dim=1)  # the queue shuffles (lq, gt) pairs: keep the chosen GT
        super()._dequeue_and_enqueue()
        self.gt, self._chosen_gt = self.gt[:, :c].contiguous(), self.gt[:, c:].contiguous()
