"""Training entry, as thin as Real-ESRGAN's ``train.py``: register the plugin, check the option file,
run BasicSR's ``train_pipeline``.

    python -m iqa_plugin.train -opt options/xxx.yml [--launcher none|pytorch|slurm] [--auto_resume] [--debug]
    torchrun --nproc_per_node=2 -m iqa_plugin.train -opt options/xxx.yml --launcher pytorch
    iqa-plugin train -opt options/xxx.yml      (the same, with one-line errors for bad input)

Experiments are written under ``<cwd>/experiments/<name>`` (or ``path.experiments_root``), as with
BasicSR's own ``basicsr/train.py``.
"""
import os
import sys
import tempfile

import iqa_plugin
from iqa_plugin.utils.dist import enable_cpu_distributed
from iqa_plugin.utils.option_base import has_bases, write_resolved
from iqa_plugin.utils.options_check import OptionError, check_option_file

iqa_plugin.register()  # shim + registries before basicsr.train (a no-op when already registered)


def run(argv, root_path=None):
    """Check the option file of ``argv`` (the arguments of BasicSR's train.py), then run BasicSR's
    ``train_pipeline`` with them; experiments go under ``root_path`` (default: the current folder)."""
    from basicsr.train import train_pipeline

    path = option_path(argv)
    check_option_file(path)  # fails before anything is written
    enable_cpu_distributed()
    with tempfile.TemporaryDirectory(prefix='iqa_plugin_opt_') as tmp:
        if has_bases(path):  # BasicSR reads (and archives) the merged file
            resolved = str(write_resolved(path, tmp))
            argv = [resolved if a == path else f'-opt={resolved}' if a == f'-opt={path}' else a for a in argv]
        old_argv = sys.argv
        sys.argv = [old_argv[0]] + list(argv)
        try:
            train_pipeline(root_path or os.getcwd())
        finally:
            sys.argv = old_argv


def option_path(argv):
    """The ``-opt`` value of BasicSR's train.py arguments; OptionError when there is none."""
    for i, a in enumerate(argv):
        if a == '-opt' and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith('-opt='):
            return a.split('=', 1)[1]
    raise OptionError('missing option file: pass -opt path/to/options.yml')


if __name__ == '__main__':
    run(sys.argv[1:])
