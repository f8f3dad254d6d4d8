"""The GAN models of BasicSR with the plugin's IQA training features (``IQAModelMixin``).

* ``IQASRGANModel``: ``SRGANModel`` (pixel/perceptual/GAN generator losses, a discriminator).
* ``IQAESRGANModel``: ``ESRGANModel`` (relativistic GAN of ESRGAN).
* ``IQARealESRGANModel``: ``RealESRGANModel`` (on-the-fly second-order degradations of ``RealESRGANDataset``
  batches, USM-sharpened targets, ``UNetDiscriminatorSN``), the model HGGT's recipe trains with.

The IQA losses of ``train.iqa_opt`` are added to the generator's pixel loss, so they see the same target as
it: in ``IQARealESRGANModel`` that is the USM-sharpened ground truth unless ``l1_gt_usm: false``.
"""
import torch
from basicsr.models.esrgan_model import ESRGANModel
from basicsr.models.realesrgan_model import RealESRGANModel
from basicsr.models.srgan_model import SRGANModel
from basicsr.utils.diffjpeg import DiffJPEG
from basicsr.utils.img_process_util import USMSharp
from basicsr.utils.registry import MODEL_REGISTRY

from iqa_plugin.models.iqa_mixins import IQAModelMixin


class ContiguousOutput(torch.nn.Module):
    """Calls the wrapped module and returns its output as a contiguous tensor."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs).contiguous()


@MODEL_REGISTRY.register()
class IQASRGANModel(IQAModelMixin, SRGANModel):
    """SRGANModel + IQA losses, tensor validators, checkpoint selection."""


@MODEL_REGISTRY.register()
class IQAESRGANModel(IQAModelMixin, ESRGANModel):
    """ESRGANModel + IQA losses, tensor validators, checkpoint selection."""


@MODEL_REGISTRY.register()
class IQARealESRGANModel(IQAModelMixin, RealESRGANModel):
    """RealESRGANModel + IQA losses, tensor validators, checkpoint selection; also runs on the CPU.

    BasicSR 1.4.2's ``RealESRGANModel.__init__`` puts its JPEG simulator and USM sharpener on CUDA
    unconditionally (``.cuda()``), so it cannot be built without a GPU and offers no seam to change that.
    This ``__init__`` is the one place where the plugin mirrors a BasicSR method instead of calling it:
    it runs ``SRGANModel.__init__`` and sets the same three attributes on ``self.device``
    (docs/architecture.md; ``tests/test_iqa_models.py::test_realesrgan_init_mirror`` fails when BasicSR's
    method changes). The training queue is allocated on ``self.device`` before BasicSR's
    ``_dequeue_and_enqueue`` would allocate it with ``.cuda()``.
    """

    def __init__(self, opt):
        SRGANModel.__init__(self, opt)  # RealESRGANModel.__init__ minus its .cuda() calls:
        # simulate JPEG compression artifacts; contiguous output: on the CPU DiffJPEG returns a strided tensor
        # that BasicSR's filter2D cannot .view()
        self.jpeger = ContiguousOutput(DiffJPEG(differentiable=False)).to(self.device)
        self.usm_sharpener = USMSharp().to(self.device)  # do usm sharpening
        self.queue_size = opt.get('queue_size', 180)

    @torch.no_grad()
    def _dequeue_and_enqueue(self):
        if not hasattr(self, 'queue_lr'):
            b, c, h, w = self.lq.size()
            if self.queue_size % b != 0:
                raise ValueError(f'queue_size {self.queue_size} must be divisible by the batch size {b}')
            self.queue_lr = torch.zeros(self.queue_size, c, h, w, device=self.device)
            self.queue_gt = torch.zeros(self.queue_size, *self.gt.shape[1:], device=self.device)
            self.queue_ptr = 0
        super()._dequeue_and_enqueue()
