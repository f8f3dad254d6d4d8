"""Ship trained relational weights: plain state dict, training log and manifest entry.

    python docs/scripts/export_relational.py \\
        --checkpoint experiments/relational_stage2/models/relational_150.pth \\
        --log experiments/relational_stage1/train_*.log experiments/relational_stage2/train_*.log \\
        --command "OMP_NUM_THREADS=1 iqa-plugin train -opt ...; ..."

The checkpoint (a plain ``relational_<iter>.pth`` or a BasicSR ``net_rel_<iter>.pth``) is loaded strictly
into ``RelationalIQANet`` and written to ``iqa_plugin/weights/relational.pth``; the logs are concatenated
into ``iqa_plugin/weights/relational_train.log``; ``manifest.json`` gets (load / update / save, other
entries kept) ``{"relational.pth": {"sha256", "command", "log", "trained"}}``.
"""
import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import iqa_plugin  # noqa: E402,F401
from iqa_plugin import weights as wm  # noqa: E402
from iqa_plugin.archs.relational_arch import RelationalIQANet, load_relational_weights  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--checkpoint', required=True)
    p.add_argument('--log', nargs='+', required=True)
    p.add_argument('--command', required=True, help='the exact training command(s)')
    p.add_argument('--out-dir', default=str(wm.PACKAGE_WEIGHTS_DIR))
    args = p.parse_args(argv)
    net = RelationalIQANet()
    load_relational_weights(net, 'relational', args.checkpoint)  # strict: fails on any mismatch
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / 'relational.pth'
    torch.save({k: v.detach().float().cpu().clone() for k, v in net.state_dict().items()}, dest)
    log_dest = out_dir / 'relational_train.log'
    log_dest.write_text(''.join(Path(f).read_text() for f in args.log))
    manifest_path = out_dir / 'manifest.json'
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest['relational.pth'] = {'sha256': wm.sha256sum(dest), 'command': args.command, 'log': log_dest.name,
                                  'trained': datetime.date.today().isoformat(),
                                  'source_checkpoint': str(args.checkpoint)}
    tmp = manifest_path.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + '\n')
    tmp.replace(manifest_path)
    print(f'wrote {dest} ({dest.stat().st_size} bytes, sha256 {manifest["relational.pth"]["sha256"]}), {log_dest}, '
          f'{manifest_path}')


if __name__ == '__main__':
    main()
