"""``iqa-plugin train``: BasicSR training with the plugin registered and the option file checked first.

    iqa-plugin train -opt YAML [--launcher none|pytorch|slurm] [--auto_resume] [--debug] [--force_yml ...]
                     [--threads N]

The arguments are BasicSR's ``basicsr/train.py`` ones, passed on unchanged to ``iqa_plugin.train.run``, plus
``--threads N``: torch CPU threads (default 1, or $OMP_NUM_THREADS when set; 0 = torch's default, one per
core). One thread is the measured fastest for small nets on a shared machine (README, "Set up").
"""
import sys

NAME = 'train'
HELP = 'train with a BasicSR option file (arguments as basicsr/train.py)'
PASSTHROUGH = True  # the arguments after the subcommand go to BasicSR's parser untouched (it rejects unknown ones)


def add_parser(sub):
    return sub.add_parser(NAME, help=HELP, add_help=False)


def main_argv(argv):
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__.strip())
        return 0
    from iqa_plugin.train import main_argv as train

    # BasicSR's parser owns the arguments (an unknown one: its usage and error, status 2); it is named after
    # sys.argv[0], which is also the command recorded in the experiment's copy of the option file
    old = sys.argv[:1]
    sys.argv[:1] = ['iqa-plugin train']
    try:
        train(list(argv))
    finally:
        sys.argv[:1] = old
    return 0
