"""``IQASRModel``: BasicSR's ``SRModel`` with the plugin's IQA training features.

The features (``train.iqa_opt`` losses, table-name validators, ``val.select_by``, progress bar, extra
training state) come from ``IQAModelMixin`` (``iqa_plugin.models.iqa_mixins``); nothing of ``SRModel`` is
copied, so the same YAML blocks work in ``IQASRGANModel``, ``IQAESRGANModel`` and ``IQARealESRGANModel``.
"""
from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import MODEL_REGISTRY

from iqa_plugin.models.iqa_mixins import IQAModelMixin


@MODEL_REGISTRY.register()
class IQASRModel(IQAModelMixin, SRModel):
    """SRModel + IQA losses, tensor validators, checkpoint selection (see ``IQAModelMixin``)."""
