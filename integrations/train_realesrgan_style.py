"""A Real-ESRGAN/HAT-style training script that imports both packages and the plugin.

    python integrations/train_realesrgan_style.py -opt options/xxx.yml [--launcher pytorch] [--auto_resume]

Real-ESRGAN's and HAT's own ``train.py`` are three lines: import the package (which registers its
archs/models/datasets), then ``basicsr.train.train_pipeline(root_path)``. This does the same with
iqa-plugin imported first (torchvision shim, plugin registries) and Real-ESRGAN / HAT imported when
installed, so one option file can mix e.g. ``RealESRGANModel`` or ``HAT`` with the plugin's losses.
Experiments go under the repository root, as in those projects.
"""
import importlib
import os.path as osp
import sys

import iqa_plugin  # noqa: F401  (first: shim + plugin registries)
from iqa_plugin.train import run

OPTIONAL_PACKAGES = ('realesrgan', 'hat')


def import_optional(names=OPTIONAL_PACKAGES):
    """Import the installed ones of ``names`` (registering their classes); returns those imported."""
    found = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        found.append(name)
    return found


if __name__ == '__main__':
    import_optional()
    run(sys.argv[1:], root_path=osp.abspath(osp.join(__file__, osp.pardir, osp.pardir)))
