"""Modules named `*_arch.py` in this folder are imported here, which registers them with BasicSR."""
from iqa_plugin.basicsr_glue.registry_scan import import_modules

_modules = import_modules(__name__, __file__, '_arch.py')
