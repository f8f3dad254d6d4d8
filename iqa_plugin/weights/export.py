"""The one exporter: a trained metric into the package as plain weights, training log and manifest record.

    python -m iqa_plugin.weights.export --name milo-pseudomos \\
        --checkpoint experiments/milo_pseudomos/models/net_g_latest.pth \\
        --log experiments/milo_pseudomos/train_milo_pseudomos_*.log \\
        --command "iqa-plugin train -opt options/metrics/train_milo_pseudomos.yml ..."

Every packaged entry (``EXPORTS``: milo-pseudomos, nr-lite, relational) goes through ``export``:

1. ``--checkpoint`` is a BasicSR checkpoint (``params_ema`` preferred over ``params``) or a plain file
   written by the training models (``milo_pseudomos_<iter>.pth``, ``nr_lite_<iter>.pth``,
   ``relational_<iter>.pth``); it is loaded strictly into the entry's architecture (built from
   ``--opt``'s network options when given, else the checkpoint's ``config``, else the defaults);
2. ``plain_weights`` of that network (CPU float32 tensors, plus ``config`` for nr-lite: only
   tensors and plain Python values, so ``torch.load(weights_only=True)`` reads it) is written to
   ``iqa_plugin/weights/files/<filename>`` (or ``--out-dir``), atomically;
3. the training log(s) (``--log``; several, e.g. the stages of relational, are concatenated; shell
   patterns are expanded here) go beside it as ``<stem>_train.log``;
4. ``manifest.json`` gets (load / modify / validate / save atomically; other entries kept) the record
   ``iqa_plugin.weights.MANIFEST_SCHEMA`` defines: sha256, size, command, export_command (this
   command, reconstructed from the arguments), log, version, trained, source_checkpoint and
   data_command.

The training models write their ``<prefix>_<iter>.pth`` files with the same ``plain_weights``.
"""
import argparse
import datetime
import glob
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from iqa_plugin import weights as wm
from iqa_plugin.version import __version__


def plain_weights(net, config=None):
    """The plain state dict of ``net`` to ship: CPU copies, floating tensors as float32, and
    ``config`` (the network's constructor arguments) under the key ``'config'`` when given."""
    sd = OrderedDict((k, (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone())
                     for k, v in net.state_dict().items())
    if config is not None:
        sd['config'] = dict(config)
    return sd


def _build_milo(config):
    from iqa_plugin.archs.milo_arch import MILO

    return MILO(**{'in_channels': 3, **config, 'weights': None, 'weights_path': None}), None


def _build_nr_lite(config):
    from iqa_plugin.archs.nr_lite_arch import NRLite

    net = NRLite(**config)
    return net, net.config()


def _build_relational(config):
    from iqa_plugin.archs.relational_arch import RelationalIQANet

    return RelationalIQANet(**config), None


def _build_niqe_fitted(config):
    from iqa_plugin.archs.niqe_fitted_arch import NIQEFitted

    return NIQEFitted(), None


@dataclass(frozen=True)
class ExportSpec:
    """How one packaged entry is exported: ``build(config) -> (net, config to ship or None)``;
    ``opt_key`` names the network's options in its training YAML."""
    build: object
    opt_key: str


EXPORTS = {
    'milo-pseudomos': ExportSpec(_build_milo, 'network_g'),
    'nr-lite': ExportSpec(_build_nr_lite, 'network_g'),
    'relational': ExportSpec(_build_relational, 'network_rel'),
    'niqe-fitted': ExportSpec(_build_niqe_fitted, 'network_g'),
}


def checkpoint_to_plain(name, checkpoint, network_opt=None):
    """The verified plain state dict to ship for entry ``name`` from ``checkpoint``.

    Args:
        name (str): a key of ``EXPORTS``.
        checkpoint (str | Path): BasicSR checkpoint or plain file.
        network_opt (dict | None): the network's options from the training YAML (``type`` ignored);
            default: the checkpoint's ``config``, else the architecture's defaults.
    Raises:
        ValueError: ``name`` is not exportable. FileNotFoundError: no checkpoint.
        iqa_plugin.weights.WeightsError: unreadable, or the tensors do not fit the architecture.
    """
    if name not in EXPORTS:
        raise ValueError(f"cannot export '{name}'; exportable: {', '.join(EXPORTS)}")
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    sd, config = wm.unwrap_state_dict(wm.load_state_dict(path), path)
    if network_opt:
        config = {k: v for k, v in network_opt.items() if k != 'type'}
    try:
        net, ship_config = EXPORTS[name].build(config or {})
    except TypeError as e:  # a config saved for another architecture
        raise wm.WeightsError(f"{path}: its network options {config} do not fit the '{name}' network: {e}") from e
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise wm.WeightsError(f"{path}: does not fit the '{name}' network ({net.__class__.__name__}"
                              f"{config or ''}): {str(e).splitlines()[0]}") from e
    return plain_weights(net, ship_config)


def save_atomic(obj, dest):
    """``torch.save(obj, dest)`` through a temporary folder beside ``dest`` and ``os.replace``.

    (torch names the archive inside the file after the file, so it is written under its final name.)"""
    dest = Path(dest)
    tmp_dir = tempfile.mkdtemp(prefix='.export-', dir=dest.parent)
    try:
        tmp = Path(tmp_dir) / dest.name
        torch.save(obj, tmp)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return dest


def update_manifest(manifest_path, filename, record):
    """Set ``manifest[filename] = record`` keeping every other entry; the whole manifest is validated
    (``iqa_plugin.weights.validate_manifest``) before it is written atomically."""
    manifest_path = Path(manifest_path)
    data = {}
    if manifest_path.is_file():
        with open(manifest_path, encoding='utf-8') as f:
            data = json.load(f)
    data[filename] = record
    wm.validate_manifest(data, str(manifest_path))
    tmp = manifest_path.with_name(manifest_path.name + '.part')
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write('\n')
    tmp.replace(manifest_path)
    return data


def expand_logs(logs):
    """Training log paths from ``logs`` (a path, or a list; shell patterns expanded, each must match)."""
    if isinstance(logs, (str, os.PathLike)):
        logs = [logs]
    out = []
    for item in logs or ():
        item = str(item)
        matches = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not matches or not all(Path(m).is_file() for m in matches):
            raise FileNotFoundError(f'training log not found: {item}')
        out.extend(matches)
    return out


def export_command_line(name, checkpoint, logs, command, opt=None, data_command='', out_dir=None, version=None):
    """The ``python -m iqa_plugin.weights.export ...`` line that runs ``export`` with these arguments."""
    args = ['--name', name, '--checkpoint', str(checkpoint)]
    if opt:
        args += ['--opt', str(opt)]
    if logs:
        args += ['--log', *[str(p) for p in ([logs] if isinstance(logs, (str, os.PathLike)) else logs)]]
    args += ['--command', command]
    if data_command:
        args += ['--data-command', data_command]
    if out_dir:
        args += ['--out-dir', str(out_dir)]
    if version:
        args += ['--version', str(version)]
    return 'python -m iqa_plugin.weights.export ' + ' '.join(shlex.quote(a) for a in args)


def _network_opt(name, opt):
    if not opt:
        return None
    from iqa_plugin.basicsr_glue.options_check import load_yaml

    net_opt = load_yaml(opt).get(EXPORTS[name].opt_key)
    if not isinstance(net_opt, dict):
        raise ValueError(f'{opt} has no {EXPORTS[name].opt_key} section (the network options of {name})')
    return net_opt


def export(name, checkpoint, log=None, command='', out_dir=None, network_opt=None, data_command='', opt=None,
           version=None):
    """Write the weights file, the log and the manifest record of entry ``name``; returns (path, record).

    Args:
        name (str): a key of ``EXPORTS``.
        checkpoint (str | Path): the trained checkpoint (see the module docstring).
        log (str | Path | list): training log(s), required; patterns are expanded.
        command (str): the exact training command(s), one shell line, required.
        out_dir (str | Path | None): default the package weights folder.
        network_opt (dict | None): the network's options; ``opt`` (a training YAML) gives them instead.
        data_command (str): the command that built the training data, if any.
        version (str | None): the weights' own version (e.g. '0.2.0' for a retrained file); default the
            package version.
    Nothing is written when an argument is wrong or the checkpoint does not fit.
    """
    entry = wm.get_entry(name)
    if version is not None and not re.fullmatch(r'\d+\.\d+\.\d+', str(version)):
        raise ValueError(f'version must look like 1.2.3, got {version!r}')
    if opt:
        network_opt = _network_opt(name, opt)
    sd = checkpoint_to_plain(name, checkpoint, network_opt)
    logs = expand_logs(log)
    if not logs:
        raise ValueError('export needs the training log(s) (--log): the manifest ships them with the weights')
    if not command.strip():
        raise ValueError('export needs the training command (--command): the manifest records it')
    out_dir = Path(out_dir) if out_dir else wm.PACKAGE_WEIGHTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = save_atomic(sd, out_dir / entry.filename)
    log_name = Path(entry.filename).stem + '_train.log'
    with open(out_dir / log_name, 'wb') as f:
        for p in logs:
            with open(p, 'rb') as src:
                shutil.copyfileobj(src, f)
    record = {'sha256': wm.sha256sum(dest), 'size': dest.stat().st_size, 'command': command,
              'export_command': export_command_line(name, checkpoint, log, command, opt, data_command,
                                                    None if out_dir == wm.PACKAGE_WEIGHTS_DIR else out_dir, version),
              'log': log_name, 'version': str(version or __version__), 'trained': datetime.date.today().isoformat(),
              'source_checkpoint': str(checkpoint)}
    if data_command:
        record['data_command'] = data_command
    update_manifest(out_dir / 'manifest.json', entry.filename, record)
    return dest, record


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m iqa_plugin.weights.export', description=__doc__.split('\n')[0])
    p.add_argument('--name', required=True, choices=list(EXPORTS))
    p.add_argument('--checkpoint', required=True, help='BasicSR checkpoint or plain exported file')
    p.add_argument('--log', nargs='+', required=True, help='training log(s) to ship beside the weights (concatenated)')
    p.add_argument('--command', required=True, help='the exact training command(s) (recorded in the manifest)')
    p.add_argument('--data-command', default='', help='the command that built the training data (pseudo-MOS cache)')
    p.add_argument('--opt', default=None, help="training option file (the network's options)")
    p.add_argument('--out-dir', default=None, help='default: the package weights folder')
    p.add_argument('--version', default=None, help="the weights' version (default: the package version)")
    args = p.parse_args(argv)
    dest, record = export(args.name, args.checkpoint, args.log, args.command, args.out_dir,
                          data_command=args.data_command, opt=args.opt, version=args.version)
    print(json.dumps({'file': str(dest), **record}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
