"""Export a trained label-free metric into the package: plain weights file, training log, manifest entry.

    python -m iqa_plugin.export_weights --name milo-pseudomos \\
        --checkpoint experiments/milo_pseudomos/models/net_g_latest.pth \\
        --log experiments/milo_pseudomos/train_milo_pseudomos_*.log \\
        --command "iqa-plugin train -opt options/metrics/train_milo_pseudomos.yml ..."

``--checkpoint`` is a BasicSR checkpoint (``params_ema`` preferred over ``params``) or an already
plain file written by the models (``milo_pseudomos_<iter>.pth`` / ``nr_lite_<iter>.pth``). The
weights are checked by loading them strictly into the architecture, then written as a plain state
dict to ``iqa_plugin/weights/<filename>`` (or ``--out-dir``), the log is copied beside it as
``<stem>_train.log`` and ``manifest.json`` gets (load / modify / save; other entries are kept)
``{"<filename>": {"sha256", "command", "log", "trained", "source_checkpoint", "export_command",
"data_command"}}``.
"""
import argparse
import datetime
import json
import shlex
import shutil
import sys
from collections import OrderedDict
from pathlib import Path

import torch

from iqa_plugin import weights as wm

EXPORTABLE = ('milo-pseudomos', 'nr-lite')


def _unwrap(sd, path):
    if not isinstance(sd, dict):
        raise wm.WeightsError(f'{path}: expected a state dict, got {type(sd).__name__}')
    config = sd.get('config') if isinstance(sd.get('config'), dict) else None
    for key in ('params_ema', 'params', 'state_dict'):
        if key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    sd = OrderedDict((k[7:] if k.startswith('module.') else k, v) for k, v in sd.items() if k != 'config')
    return sd, config


def plain_state_dict(name, checkpoint, network_opt=None):
    """The plain, verified state dict to ship for entry ``name`` from ``checkpoint``.

    Args:
        name (str): 'milo-pseudomos' or 'nr-lite'.
        checkpoint (str | Path): BasicSR checkpoint or plain file.
        network_opt (dict | None): NRLite constructor arguments when the checkpoint carries no ``config``.
    """
    if name not in EXPORTABLE:
        raise ValueError(f"cannot export '{name}'; exportable: {', '.join(EXPORTABLE)}")
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    sd, config = _unwrap(wm.load_state_dict(path), path)
    sd = OrderedDict((k, v.detach().float().cpu().clone()) for k, v in sd.items())
    if name == 'milo-pseudomos':
        from iqa_plugin.archs.milo_arch import MILO

        net = MILO(in_channels=3, weights=None)
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise wm.WeightsError(f'{path}: not a MILO state dict: {str(e).splitlines()[0]}') from e
        return OrderedDict(net.state_dict())
    from iqa_plugin.archs.nr_lite_arch import NRLite

    config = config or {k: v for k, v in (network_opt or {}).items() if k != 'type'}
    net = NRLite(**config)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise wm.WeightsError(f'{path}: does not fit NRLite{config}: {str(e).splitlines()[0]}') from e
    out = OrderedDict(net.state_dict())
    out['config'] = net.config()
    return out


def update_manifest(manifest_path, filename, entry):
    """Set ``manifest[filename] = entry`` keeping every other entry (load, modify, save atomically)."""
    manifest_path = Path(manifest_path)
    data = {}
    if manifest_path.is_file():
        with open(manifest_path, encoding='utf-8') as f:
            data = json.load(f)
    data[filename] = entry
    tmp = manifest_path.with_name(manifest_path.name + '.part')
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write('\n')
    tmp.replace(manifest_path)
    return data


def export(name, checkpoint, log=None, command='', out_dir=None, network_opt=None, export_command='', data_command=''):
    """Write the weights file, copy the log, record sha256 + command in the manifest; returns the entry."""
    entry = wm.get_entry(name)
    out_dir = Path(out_dir) if out_dir else wm.PACKAGE_WEIGHTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = plain_state_dict(name, checkpoint, network_opt)
    dest = out_dir / entry.filename
    tmp = dest.with_name(dest.name + '.part')
    torch.save(sd, tmp)
    tmp.replace(dest)
    record = {'sha256': wm.sha256sum(dest), 'command': command,
              'trained': datetime.date.today().isoformat(), 'source_checkpoint': str(checkpoint)}
    if export_command:
        record['export_command'] = export_command
    if data_command:
        record['data_command'] = data_command
    if log:
        log = Path(log)
        if not log.is_file():
            raise FileNotFoundError(f'training log not found: {log}')
        log_name = Path(entry.filename).stem + '_train.log'
        shutil.copyfile(log, out_dir / log_name)
        record['log'] = log_name
    update_manifest(out_dir / 'manifest.json', entry.filename, record)
    return dest, record


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m iqa_plugin.export_weights', description=__doc__.split('\n')[0])
    p.add_argument('--name', required=True, choices=EXPORTABLE)
    p.add_argument('--checkpoint', required=True, help='BasicSR checkpoint or plain exported file')
    p.add_argument('--log', default=None, help='training log to ship beside the weights')
    p.add_argument('--command', default='', help='the exact training command (recorded in the manifest)')
    p.add_argument('--data-command', default='', help='the command that built the training data (pseudo-MOS cache)')
    p.add_argument('--opt', default=None, help='training option file (NRLite network_g when the file has no config)')
    p.add_argument('--out-dir', default=None, help='default: the package weights folder')
    args = p.parse_args(argv)
    network_opt = None
    if args.opt:
        from iqa_plugin.utils.options_check import load_yaml

        network_opt = load_yaml(args.opt).get('network_g')
    cmd = 'python -m iqa_plugin.export_weights ' + ' '.join(shlex.quote(a) for a in (argv if argv is not None
                                                                                        else sys.argv[1:]))
    dest, record = export(args.name, args.checkpoint, args.log, args.command, args.out_dir, network_opt, cmd,
                          args.data_command)
    print(json.dumps({'file': str(dest), **record}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
