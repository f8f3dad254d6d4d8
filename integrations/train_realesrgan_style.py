"""A Real-ESRGAN/HAT-style training script that imports both packages and the plugin.

    python integrations/train_realesrgan_style.py -opt options/xxx.yml [--launcher pytorch] [--auto_resume]

Real-ESRGAN's and HAT's own ``train.py`` are three lines: import the package (which registers its
archs/models/datasets), then ``basicsr.train.train_pipeline(root_path)``. This does the same with
iqa-plugin imported first (torchvision shim, plugin registries) and Real-ESRGAN / HAT imported when
installed, so one option file can mix e.g. ``RealESRGANModel`` or ``HAT`` with the plugin's losses.
Experiments go under the repository root, as in those projects.
"""
import importlib
import importlib.util
import os.path as osp
import sys
import warnings

import iqa_plugin  # noqa: F401  (first: shim + plugin registries)
from iqa_plugin.train import run

OPTIONAL_PACKAGES = ('realesrgan', 'hat')


def _installed(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package that cannot be imported counts as absent
        return False


def import_optional(names=OPTIONAL_PACKAGES):
    """Import the installed ones of ``names`` (registering their classes); returns those imported.

    A package that is not installed is skipped quietly. One that is installed but fails to import
    (e.g. Real-ESRGAN's ``basicsr.data.degradations`` import of a removed torchvision module) is
    skipped with a ``RuntimeWarning`` naming the package and the exception, so an option file that
    then names one of its classes is not left to fail on a bare "not found" registry error.
    """
    found = []
    for name in names:
        if not _installed(name):
            continue
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001  (any failure of an optional package: report and go on)
            warnings.warn(f'{name} is installed but importing it failed ({type(e).__name__}: {e}); '
                          f'its classes are not registered', RuntimeWarning, stacklevel=2)
            continue
        found.append(name)
    return found


if __name__ == '__main__':
    import_optional()
    run(sys.argv[1:], root_path=osp.abspath(osp.join(__file__, osp.pardir, osp.pardir)))
