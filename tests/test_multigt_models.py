"""Multi-GT models (iqa_plugin/models/multigt_model.py) on synthetic batches of the contract's shape.

The chosen GT is the target of the pixel loss and the discriminator's real input; Real-ESRGAN's queue keeps
each chosen GT with its LQ; validation averages full-reference metrics over the positive GTs; a resumed run
continues the same sequence of choices.
"""
import os
import tempfile

import pytest
import torch
import yaml

import iqa_plugin  # noqa: F401

OPTIONS = """
scale: 4
num_gpu: 0
manual_seed: 0
is_train: true
dist: false
name: multigt
network_g: {type: MSRResNet, num_in_ch: 3, num_out_ch: 3, num_feat: 4, num_block: 1, upscale: 4}
network_d: {type: UNetDiscriminatorSN, num_in_ch: 3, num_feat: 4, skip_connection: true}
path: {pretrain_network_g: ~, strict_load_g: true, resume_state: ~}
train:
  ema_decay: 0
  optim_g: {type: Adam, lr: !!float 1e-4, betas: [0.9, 0.99]}
  optim_d: {type: Adam, lr: !!float 1e-4, betas: [0.9, 0.99]}
  scheduler: {type: MultiStepLR, milestones: [100], gamma: 0.5}
  total_iter: 10
  warmup_iter: -1
  pixel_opt: {type: L1Loss, loss_weight: 1.0, reduction: mean}
  gan_opt: {type: GANLoss, gan_type: vanilla, loss_weight: 0.1}
  gt_sampling: {type: rand, seed: 3}
val:
  val_freq: 5
  save_img: false
  metrics:
    psnr: {type: calculate_psnr, crop_border: 0, test_y_channel: false}
    milo: {type: calculate_iqa, metric: milo-pseudomos}
    nr: {type: calculate_iqa, metric: nr-lite}
"""
REALESRGAN = """
gt_size: 64
queue_size: 2
l1_gt_usm: false
percep_gt_usm: false
gan_gt_usm: false
resize_prob: [0.0, 0.0, 1.0]
resize_range: [1.0, 1.0]
gaussian_noise_prob: 1.0
noise_range: [1, 2]
poisson_scale_range: [0.05, 0.1]
gray_noise_prob: 0.0
jpeg_range: [95, 95]
second_blur_prob: 0.0
resize_prob2: [0.0, 0.0, 1.0]
resize_range2: [1.0, 1.0]
gaussian_noise_prob2: 1.0
noise_range2: [1, 2]
poisson_scale_range2: [0.05, 0.1]
gray_noise_prob2: 0.0
jpeg_range2: [95, 95]
"""


def build(cls_name, **train):
    from basicsr.utils.registry import MODEL_REGISTRY

    opt = yaml.safe_load(OPTIONS + (REALESRGAN if 'RealESRGAN' in cls_name else ''))
    if cls_name == 'MultiGTSRModel':
        opt.pop('network_d')
        for k in ('optim_d', 'gan_opt'):
            opt['train'].pop(k)
    opt['train'].update(train)
    return MODEL_REGISTRY.get(cls_name)(opt)


def batch(b=2, n=3, side=32, labels=None, seed=0):
    """Candidates: constant images of distinct values (candidate k of sample i = 0.1 + 0.2 k + 0.05 i)."""
    g = torch.Generator().manual_seed(seed)
    cands = torch.stack([torch.stack([torch.full((3, side, side), 0.1 + 0.2 * k + 0.05 * i) for k in range(n)])
                         for i in range(b)])
    if labels is None:
        labels = [2] + [1] * (n - 1)
    data = {'gt_candidates': cands, 'gt': cands[:, 0].clone(), 'lq': torch.rand((b, 3, side // 4, side // 4), generator=g),
            'gt_labels': torch.tensor([labels] * b)}
    delta = torch.zeros(b, 21, 21)
    delta[:, 10, 10] = 1.0
    data.update(kernel1=delta.clone(), kernel2=delta.clone(), sinc_kernel=delta.clone())
    return data


class FixedChoice:
    """A strategy that always picks candidate ``k`` (stands in for a scorer with known outputs)."""

    def __init__(self, k):
        self.k = k

    def choose(self, data):
        return torch.full((data['gt_candidates'].shape[0],), self.k, dtype=torch.long)

    def last_stats(self):
        return {'gt_sampling/idx_fixed': float(self.k)}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize('cls_name', ['MultiGTSRModel', 'MultiGTESRGANModel'])
def test_chosen_gt_is_the_target_and_the_real_input(cls_name):
    model = build(cls_name)
    model.gt_strategy = FixedChoice(2)
    seen = []
    if hasattr(model, 'net_d'):
        model.net_d.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    data = batch()
    model.feed_data(data)
    assert torch.equal(model.gt, data['gt_candidates'][:, 2])
    model.optimize_parameters(1)
    pix = 'l_pix' if cls_name == 'MultiGTSRModel' else 'l_g_pix'
    want = float((model.output.detach() - data['gt_candidates'][:, 2]).abs().mean())
    assert model.log_dict[pix] == pytest.approx(want, rel=1e-4)
    assert model.log_dict['gt_sampling/idx_fixed'] == 2.0
    if seen:  # the discriminator's real input is the chosen GT, never the original
        assert any(torch.equal(x, data['gt_candidates'][:, 2]) for x in seen)
        assert not any(torch.equal(x, data['gt_candidates'][:, 0]) for x in seen)


def test_realesrgan_queue_keeps_each_chosen_gt_with_its_lq():
    model = build('MultiGTRealESRGANModel')
    model.gt_strategy = FixedChoice(1)
    for step in range(4):  # the queue (size 2, batch 1) fills, then swaps shuffled pairs
        data = batch(b=1, n=2, side=64, seed=step)
        data['gt_candidates'][0, 0].fill_(0.2 + 0.15 * step)  # original: constant per step
        data['gt_candidates'][0, 1] = data['gt_candidates'][0, 0] + 0.05  # chosen: original + 0.05
        data['gt'] = data['gt_candidates'][:, 0].clone()
        model.feed_data(data)
        # the LQ is the degraded original of the same pair: its mean is the chosen GT's minus 0.05
        assert float(model.lq.mean()) == pytest.approx(float(model.gt.mean()) - 0.05, abs=0.03)
        assert model.gt.shape == (1, 3, 64, 64)


def test_validation_averages_full_reference_metrics_over_positives(tmp_path):
    from basicsr.metrics import calculate_metric
    from basicsr.utils import tensor2img

    model = build('MultiGTSRModel')
    model.opt['path'].update(visualization=str(tmp_path), models=str(tmp_path))
    data = batch(b=1, n=4, labels=[2, 1, -1, 1])
    data['lq_path'] = ['x.png']
    loader = [data]

    class Loader(list):
        dataset = type('D', (), {'opt': {'name': 'val'}})()
    model.nondist_validation(Loader(loader), 1, None, save_img=False)
    assert model.opt['val']['metrics']['psnr']['type'] == 'calculate_multigt'
    assert model.opt['val']['metrics']['nr']['type'] == 'calculate_iqa'  # no-reference: unchanged
    model.feed_data(data)
    model.test()
    sr = tensor2img([model.output.detach().cpu()])
    want = sum(calculate_metric({'img': sr, 'img2': tensor2img([data['gt_candidates'][0, k]])},
                                {'type': 'calculate_psnr', 'crop_border': 0, 'test_y_channel': False})
               for k in (1, 3)) / 2
    assert model.metric_results['psnr'] == pytest.approx(want, rel=1e-6)


def test_resume_continues_the_same_choices():
    a = build('MultiGTSRModel')
    for _ in range(3):
        a.gt_strategy.choose(batch(b=4))
    with tempfile.TemporaryDirectory() as tmp:
        a.opt['path'].update(models=tmp, training_states=tmp)
        a.save(0, 3)
        from iqa_plugin.basicsr_glue.dist import read_training_state
        state = read_training_state(os.path.join(tmp, '3.state'))
    assert 'gt_sampling' in state
    expected = [a.gt_strategy.choose(batch(b=4)).tolist() for _ in range(5)]
    b = build('MultiGTSRModel')
    b.resume_training(state)
    assert [b.gt_strategy.choose(batch(b=4)).tolist() for _ in range(5)] == expected
    fresh = build('MultiGTSRModel')
    assert [fresh.gt_strategy.choose(batch(b=4)).tolist() for _ in range(5)] != expected
