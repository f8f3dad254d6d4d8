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

Distributed training (docs/distributed.md): each rank's generator is seeded with ``seed + rank``, so the ranks
draw different sequences. Every rank keeps a ``GTChoiceRecord`` (how often it chose each candidate index, and
its last choices); at a checkpoint each rank's generator state and record are gathered to rank 0, which
writes them into the training state as ``gt_sampling: {world_size, ranks: [one entry per rank]}``; on resume
each rank restores its own entry. Resumed with another world size, ranks below the saved one restore the
saved rank of the same index and the others start from ``seed + rank`` (a warning says so).

All IQA features of ``IQAModelMixin`` (losses, validators, checkpoint selection) work unchanged.
"""
import inspect
import random

import torch
from basicsr.models.esrgan_model import ESRGANModel
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import get_dist_info
from basicsr.utils.registry import METRIC_REGISTRY, MODEL_REGISTRY

from iqa_plugin import scoring
from iqa_plugin.data.multigt_layout import LABEL_POSITIVE
from iqa_plugin.models.iqa_gan_model import IQARealESRGANModel
from iqa_plugin.models.iqa_mixins import IQAModelMixin
from iqa_plugin.models.selection import validator_metric
from iqa_plugin.basicsr_glue.dist import gather_to_rank0


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


class GTChoiceRecord:
    """One rank's GT choices: how often each candidate index was chosen over the whole run (``counts``) and
    the last ``keep`` choices (``recent_batch``: the number of the batch, from 1; ``recent_idx``: the index).
    Saved per rank in the training state (tensors and ints: safe for ``torch.load(weights_only=True)``)."""

    def __init__(self, keep=1024):
        self.keep = int(keep)
        self.batches = 0
        self.counts = torch.zeros(0, dtype=torch.int64)
        self.recent_batch = torch.zeros(0, dtype=torch.int64)
        self.recent_idx = torch.zeros(0, dtype=torch.int64)

    def add(self, idx, n):
        """Record one batch's chosen indices ``idx`` (B,) among ``n`` candidates."""
        idx = idx.detach().to('cpu', torch.int64).flatten()
        self.batches += 1
        if self.counts.numel() < n:
            self.counts = torch.cat([self.counts, self.counts.new_zeros(n - self.counts.numel())])
        self.counts += torch.bincount(idx, minlength=self.counts.numel())
        self.recent_batch = torch.cat([self.recent_batch, torch.full_like(idx, self.batches)])[-self.keep:]
        self.recent_idx = torch.cat([self.recent_idx, idx])[-self.keep:]

    def state_dict(self):
        return {'batches': self.batches, 'counts': self.counts.clone(), 'recent_batch': self.recent_batch.clone(),
                'recent_idx': self.recent_idx.clone()}

    def load_state_dict(self, state):
        self.batches = int(state['batches'])
        self.counts = state['counts'].to('cpu', torch.int64).clone()
        self.recent_batch = state['recent_batch'].to('cpu', torch.int64).clone()
        self.recent_idx = state['recent_idx'].to('cpu', torch.int64).clone()


class MultiGTMixin:
    """GT selection among candidates for training, HGGT's multi-GT protocol for validation."""

    def init_training_settings(self):
        from iqa_plugin.models.gt_sampling import build_gt_strategy

        super().init_training_settings()
        block = self.opt['train'].get('gt_sampling') or {'type': 'upos'}
        rank, world_size = get_dist_info()
        self.gt_strategy = build_gt_strategy(dict(block), device=self.device, rank=rank)
        self.gt_record = GTChoiceRecord()
        get_root_logger().info(f'GT sampling: {block}' + (f' (generator seed + rank on each of {world_size} ranks)'
                                                          if world_size > 1 else ''))

    # ------------------------------------------------------------------ training
    def choose_gt(self, data):
        """The chosen candidate per sample, (B, 3, H, W) on the model's device."""
        candidates = data['gt_candidates']
        idx = self.gt_strategy.choose(data)
        if hasattr(self, 'gt_record'):
            self.gt_record.add(idx, candidates.shape[1])
        idx = idx.to(candidates.device)
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
        """Adds ``gt_sampling: {world_size, ranks: [{strategy, record} per rank]}``; a collective in DDP (every
        rank's entry is gathered to rank 0, the writer)."""
        state = super().extra_training_state()
        if hasattr(self, 'gt_strategy'):
            mine = {'strategy': self.gt_strategy.state_dict(), 'record': self.gt_record.state_dict()}
            ranks = gather_to_rank0(mine)
            if ranks is not None:
                state['gt_sampling'] = {'world_size': len(ranks), 'ranks': ranks}
                get_root_logger().info('GT choices so far (count per candidate index): ' + '; '.join(
                    f"rank {r}: {e['record']['counts'].tolist()}" for r, e in enumerate(ranks)))
        return state

    def load_extra_training_state(self, state):
        super().load_extra_training_state(state)
        saved = state.get('gt_sampling')
        if not hasattr(self, 'gt_strategy') or saved is None:
            return
        if 'ranks' not in saved:  # a state written before the per-rank format: one rank's strategy state
            saved = {'world_size': 1, 'ranks': [{'strategy': saved}]}
        rank, world_size = get_dist_info()
        if saved['world_size'] != world_size and rank == 0:
            get_root_logger().warning(
                f"GT sampling: the training state holds {saved['world_size']} ranks' generators, this run has "
                f"{world_size} ranks: ranks below {min(saved['world_size'], world_size)} continue the saved rank "
                f"of the same index, the others start from seed + rank (the sequence differs from an "
                f"uninterrupted run)")
        if rank >= len(saved['ranks']):
            return
        entry = saved['ranks'][rank]
        self.gt_strategy.load_state_dict(entry['strategy'])
        if entry.get('record') is not None:
            self.gt_record.load_state_dict(entry['record'])


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
