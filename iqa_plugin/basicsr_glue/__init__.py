"""What ties the plugin to BasicSR 1.4.2: ``compat`` (the torchvision shim BasicSR needs, installed by
``import iqa_plugin`` before anything imports BasicSR), ``dist`` (resume without CUDA, gloo DDP on CPU),
``options_check`` (the option pre-flight), ``option_base`` (``base:`` in option files) and ``registry_scan``
(the package inits' registry imports). Imports nothing here: ``compat`` must be importable before torch.
"""
