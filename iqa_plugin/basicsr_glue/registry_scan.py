"""Import every module of a sub-package whose file name ends with a suffix.

BasicSR's registries are filled as a side effect of importing the modules that hold the
decorated classes; Real-ESRGAN and HAT scan their folders the same way.
"""
import importlib
import os


def import_modules(package_name, package_file, suffix):
    """Import ``<package_name>.<stem>`` for every ``<stem><suffix>`` next to ``package_file``."""
    folder = os.path.dirname(os.path.abspath(package_file))
    stems = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(suffix) and not f.startswith('.'))
    return [importlib.import_module(f'{package_name}.{stem}') for stem in stems]
