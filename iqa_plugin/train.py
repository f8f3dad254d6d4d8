"""Training entry, as thin as Real-ESRGAN's ``train.py``: register the plugin, check the option file,
run BasicSR's ``train_pipeline``.

    python -m iqa_plugin.train -opt options/xxx.yml [--launcher none|pytorch|slurm] [--auto_resume] [--debug]
                               [--threads N]
    torchrun --nproc_per_node=2 -m iqa_plugin.train -opt options/xxx.yml --launcher pytorch
    iqa-plugin train -opt options/xxx.yml      (the same, with one-line errors for bad input)

Experiments are written under ``<cwd>/experiments/<name>`` (or ``path.experiments_root``), as with
BasicSR's own ``basicsr/train.py``.

``--threads N`` (the plugin's; not passed to BasicSR) sets torch's CPU threads; 0 keeps torch's default (one per
core). The command lines default to 1 unless ``OMP_NUM_THREADS`` is set: the measured fastest for small nets on a
shared machine (the demo ran 0.21-1.3 s/iteration with 1 thread and 4.5-7.0 s with 2 on a busy 2-core machine;
README, Set up); a large net on an idle many-core CPU wants more. ``run()`` called from Python changes the
threads only when ``--threads`` is in its arguments.
"""
import os
import sys
import tempfile

import iqa_plugin
from iqa_plugin.basicsr_glue.dist import enable_cpu_distributed
from iqa_plugin.basicsr_glue.option_base import has_bases, write_resolved
from iqa_plugin.basicsr_glue.options_check import OptionError, check_option_file

iqa_plugin.register()  # shim + registries before basicsr.train (a no-op when already registered)


def default_threads():
    """The command lines' ``--threads`` default: None (leave torch as it is) when ``OMP_NUM_THREADS`` is set,
    which torch already follows, else 1."""
    return None if os.environ.get('OMP_NUM_THREADS') else 1


def apply_threads(threads):
    """``torch.set_num_threads(threads)`` for ``threads`` >= 1; 0 and None leave torch's setting. OptionError
    for a negative or non-integer value."""
    if threads is None:
        return
    try:
        n = int(threads)
    except (TypeError, ValueError):
        raise OptionError(f'--threads must be an integer >= 0, got {threads!r}') from None
    if n < 0:
        raise OptionError(f'--threads must be an integer >= 0, got {threads!r}')
    if n:
        import torch

        torch.set_num_threads(n)


def split_threads(argv):
    """``(argv without --threads N / --threads=N, N as given or None)``: the option is the plugin's, BasicSR's
    parser does not know it."""
    argv, out, threads = list(argv), [], None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == '--threads':
            if i + 1 >= len(argv):
                raise OptionError('--threads needs a value (an integer >= 0)')
            threads, i = argv[i + 1], i + 2
            continue
        if a.startswith('--threads='):
            threads = a.split('=', 1)[1]
        else:
            out.append(a)
        i += 1
    return out, threads


def run(argv, root_path=None):
    """Check the option file of ``argv`` (the arguments of BasicSR's train.py, plus the plugin's ``--threads N``),
    then run BasicSR's ``train_pipeline`` with them; experiments go under ``root_path`` (default: the current
    folder)."""
    from basicsr.train import train_pipeline

    argv, threads = split_threads(argv)
    path = option_path(argv)
    check_option_file(path)  # fails before anything is written
    apply_threads(threads)  # (a bad value: OptionError, before anything is written too)
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


def main_argv(argv):
    """The command lines' entry: ``run`` with ``--threads`` defaulting to ``default_threads()``."""
    argv = list(argv)
    if split_threads(argv)[1] is None and default_threads() is not None:
        argv += ['--threads', str(default_threads())]
    run(argv)


if __name__ == '__main__':
    main_argv(sys.argv[1:])
