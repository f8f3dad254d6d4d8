"""What every ``iqa-plugin`` subcommand shares: the usage error, the parser class, file-pair matching
and the error policy.

Error policy (``run_with_error_policy``): an error in the *input* (a wrong name or option, a missing or
unreadable file, a bad option file, a missing or corrupt weights file) prints one line
``iqa-plugin: error: ...`` and exits with status 2. Anything else is a bug in this package or a
broken installation (TypeError, KeyError, AttributeError, a RuntimeError from torch, an ImportError of
a required package, ...): it keeps its traceback and exits with status 1. ``IQA_PLUGIN_TRACEBACK=1``
shows the traceback of input errors too. ``is_input_error`` is the one place that decides.

This module imports neither torch nor BasicSR (``--help`` stays fast).
"""
import argparse
import os
import sys
import traceback
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # iqa_plugin/


class UsageError(ValueError):
    """The command line itself is wrong (missing or conflicting options, unknown names)."""


class CommandParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that parses exactly and whose epilog may be computed only when help is shown.

    Exact: ``parse_known_args`` rejects arguments it does not know (argparse's ``error``: usage, one line
    ``PROG: error: unrecognized arguments: ...``, status 2), so a subcommand's parser reports them with its own
    usage (``iqa-plugin score: error: ...``) instead of leaving them to the top parser or to the command.
    ``epilog_fn`` (a callable returning text) is called by ``format_help``, so a costly listing
    (the score metrics and whether their weights are here) is not built for every parse."""

    def __init__(self, *args, epilog_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.epilog_fn = epilog_fn

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f'unrecognized arguments: {" ".join(extras)}')
        return namespace, extras

    def format_help(self):
        if self.epilog_fn is not None:
            self.epilog = self.epilog_fn()
        return super().format_help()


# ---------------------------------------------------------------------------------------- input errors
# Exception classes that are input errors wherever they are raised, as 'module:Class'. They are looked
# up in sys.modules only: an exception of a class whose module was never imported cannot be raised, so
# the policy imports nothing (weights and option checking stay lazy).
INPUT_ERROR_CLASSES = (
    'iqa_plugin.basicsr_glue.options_check:OptionError',  # the option-file pre-flight check (a ValueError)
    'iqa_plugin.weights:WeightsError',  # unknown, missing, unreadable or corrupt weights (a RuntimeError)
)
# Built-in classes that are input errors wherever they are raised: paths the user gave.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def _loaded_classes():
    out = []
    for item in INPUT_ERROR_CLASSES:
        module, name = item.split(':')
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            out.append(cls)
    return tuple(out)


def _raised_in_package(exc):
    """True when the innermost frame of ``exc``'s traceback is code of ``iqa_plugin``."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        Path(tb.tb_frame.f_code.co_filename).resolve().relative_to(PACKAGE_DIR)
    except ValueError:
        return False
    return True


def is_input_error(exc):
    """Whether ``exc`` reports a problem with the user's input (one line, exit 2) rather than a bug.

    Input errors: ``UsageError``; the classes of ``INPUT_ERROR_CLASSES`` (option file, weights);
    ``PATH_ERRORS`` (a missing, unreadable or misplaced path); a ``ValueError`` raised by this package's
    own checks (unknown metric name, unreadable image, size mismatch, too small an image). A
    ValueError raised inside torch, numpy or another library is a bug here (we passed it something
    wrong), as are TypeError, KeyError, AttributeError, RuntimeError and ImportError.
    """
    if isinstance(exc, (UsageError, *PATH_ERRORS, *_loaded_classes())):
        return True
    return type(exc) is ValueError and _raised_in_package(exc)


def error_line(exc):
    """The one-line message of an input error (whitespace collapsed)."""
    return ' '.join(str(exc).split()) or exc.__class__.__name__


def run_with_error_policy(fn, *args):
    """Call ``fn(*args)`` (returns an exit code) under the error policy; returns the exit code."""
    try:
        return fn(*args)
    except KeyboardInterrupt:
        print('iqa-plugin: interrupted', file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (sorted into input errors and bugs below)
        if not is_input_error(e):
            traceback.print_exc()
            return 1
        if os.environ.get('IQA_PLUGIN_TRACEBACK'):
            traceback.print_exc()
        print(f'iqa-plugin: error: {error_line(e)}', file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------- devices
def check_device(device, option='--device'):
    """``device`` (a ``--device`` value: cpu, cuda, cuda:N, mps, ...) when this machine has it; ``None`` and
    ``'auto'`` pass unchanged. UsageError (one line) for a malformed name or a device that is not here, instead
    of torch's traceback from deep inside the first ``.to(device)``. Imports torch: call it in ``main``."""
    if device is None or device == 'auto':
        return device
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"{option} {device}: not a device name (cpu, cuda, cuda:N, mps)") from None
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise UsageError(f'{option} {device}: no CUDA GPU is usable here (torch.cuda.is_available() is False, '
                             f'torch {torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu')
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UsageError(f'{option} {device}: this machine has {n} CUDA device(s): cuda:0 to cuda:{n - 1}')
    elif dev.type == 'mps':
        if not torch.backends.mps.is_available():
            raise UsageError(f'{option} {device}: no Apple MPS device here; use --device cpu')
    elif dev.type != 'cpu':
        backend = getattr(torch, dev.type, None)
        if backend is None or not hasattr(backend, 'is_available') or not backend.is_available():
            raise UsageError(f'{option} {device}: no {dev.type} device here; use --device cpu')
    return device


def check_device_argv(argv, option='--device'):
    """``check_device`` on the value of ``option`` in a raw argument list (commands whose arguments are
    parsed elsewhere, e.g. the benches); the list is not changed."""
    argv = list(argv)
    for i, a in enumerate(argv):
        if a == option and i + 1 < len(argv):
            check_device(argv[i + 1], option)
        elif a.startswith(option + '='):
            check_device(a.split('=', 1)[1], option)


# ---------------------------------------------------------------------------------------- file pairs
def file_pairs(ref, dist):
    """Pairs to score: a list of ``(name, ref_path or None, dist_path)``.

    ``dist`` is an image file or a folder of images; ``ref`` (None for no-reference metrics) is then a
    file or a folder too, matched to each distorted image by file name, else by stem. Raises
    FileNotFoundError for a missing ``dist`` and UsageError for mismatched arguments or images
    without a reference.
    """
    from iqa_plugin.utils.image import list_images

    dist = Path(dist)
    if not dist.exists():
        raise FileNotFoundError(f'not found: {dist}')
    if dist.is_dir():
        dist_files = list_images(dist)
        if not dist_files:
            raise UsageError(f'no images in folder {dist}')
        if ref is None:
            return [(p.name, None, p) for p in dist_files]
        ref = Path(ref)
        if not ref.is_dir():
            raise UsageError(f'--dist is a folder, so --ref must be one too: {ref}')
        ref_by_name = {p.name: p for p in list_images(ref)}
        ref_by_stem = {p.stem: p for p in ref_by_name.values()}
        pairs = []
        for p in dist_files:
            r = ref_by_name.get(p.name) or ref_by_stem.get(p.stem)
            if r is None:
                raise UsageError(f'no reference for {p.name} in {ref}')
            pairs.append((p.name, r, p))
        return pairs
    if ref is not None and Path(ref).is_dir():
        raise UsageError(f'--dist is a file, so --ref must be a file too: {ref}')
    return [(dist.name, Path(ref) if ref else None, dist)]
