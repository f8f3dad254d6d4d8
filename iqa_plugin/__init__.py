"""iqa-plugin: modern image-quality assessment for BasicSR training.

Importing the package applies the torchvision compatibility shim (see ``compat``) and then
registers the plugin's archs, losses, metrics, datasets and models into BasicSR's registries.
"""
from iqa_plugin import compat

compat.apply()

from iqa_plugin.version import __version__  # noqa: E402
from iqa_plugin import archs, data, losses, metrics, models  # noqa: E402,F401

__all__ = ['__version__']
