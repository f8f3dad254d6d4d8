"""Training entry: register the plugin, check the option file, then run BasicSR's train_pipeline.

    iqa-plugin train -opt options/xxx.yml [--launcher none|pytorch|slurm] [--auto_resume] [--debug]
    python -m iqa_plugin.train -opt options/xxx.yml
    torchrun --nproc_per_node=2 -m iqa_plugin.train -opt options/xxx.yml --launcher pytorch

Experiments are written under ``<cwd>/experiments/<name>`` (or ``path.experiments_root``), as with
BasicSR's own ``basicsr/train.py``.
"""
import os
import sys

import iqa_plugin  # noqa: F401  (shim + registries, before basicsr.train)
from iqa_plugin.utils.dist import enable_cpu_distributed
from iqa_plugin.utils.options_check import check_option_file


def run(argv, root_path=None):
    """Run BasicSR's train_pipeline with ``argv`` (the arguments after ``train``)."""
    from basicsr.train import train_pipeline

    opt_path = _opt_path(argv)
    check_option_file(opt_path)  # fails before anything is written
    enable_cpu_distributed()
    old_argv = sys.argv
    sys.argv = [old_argv[0]] + list(argv)
    try:
        train_pipeline(root_path or os.getcwd())
    finally:
        sys.argv = old_argv


def _opt_path(argv):
    for i, a in enumerate(argv):
        if a == '-opt' and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith('-opt='):
            return a.split('=', 1)[1]
    raise ValueError('missing option file: pass -opt path/to/options.yml')


def main():
    from iqa_plugin.cli import main as cli_main
    cli_main(['train'] + sys.argv[1:])


if __name__ == '__main__':
    main()
