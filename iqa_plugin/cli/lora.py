"""``iqa-plugin lora``: LoRA adapters of ``NRIQAFinetuneModel`` (``iqa_plugin.models.lora``).

    iqa-plugin lora merge --base NET_G --adapter ADAPTER --out PATH
    iqa-plugin lora info ADAPTER

``merge`` folds the adapter into the base weights and writes a plain BasicSR net_g (``{params: ...}``) that
stock BasicSR models load (``path.pretrain_network_g``); its outputs equal the adapted model's within float32
error. The arch comes from the adapter's metadata; the base must be the one the adapter was trained on (its
weights' sha256 is recorded in the adapter). Every check runs before PATH is written. ``info`` prints the
adapter's metadata.
"""
from iqa_plugin.cli.common import UsageError

NAME = 'lora'
HELP = 'merge a LoRA adapter into its base net_g, or show an adapter'


def add_parser(sub):
    import argparse

    p = sub.add_parser(NAME, help=HELP, description=__doc__.split('\n\n')[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('action', choices=['merge', 'info'])
    p.add_argument('adapter_path', nargs='?', metavar='ADAPTER', help='adapter file (info)')
    p.add_argument('--base', metavar='NET_G', help='the base net_g file the adapter was trained on')
    p.add_argument('--adapter', metavar='ADAPTER', help='adapter file (net_g_<iter>.pth of a LoRA run)')
    p.add_argument('--out', metavar='PATH', help='merged net_g file to write')
    return p


def main(args):
    import iqa_plugin

    iqa_plugin.register()  # BasicSR's arch registry builds the net named in the adapter
    from iqa_plugin.models import lora

    try:
        if args.action == 'info':
            path = args.adapter_path or args.adapter
            if not path:
                raise UsageError('lora info needs an ADAPTER file')
            obj = lora.read_weights(path)
            if not lora.is_adapter(obj):
                raise UsageError(f'{path} is not a LoRA adapter file')
            meta = obj[lora.META_KEY]
            n = sum(v.numel() for v in obj[lora.ADAPTER_KEY].values())
            print(f"arch {meta['arch']} rank {meta['rank']} alpha {meta['alpha']} dropout {meta['dropout']}; "
                  f"{len(meta['target_modules'])} layers, {n:,d} adapter parameters")
            print(f"base {meta['base_path']} ({meta['base_param_key']}), sha256 {meta['base_sha256']}")
            return 0
        missing = [f'--{k}' for k in ('base', 'adapter', 'out') if not getattr(args, k)]
        if missing:
            raise UsageError(f'lora merge needs {", ".join(missing)}')
        meta = lora.merge_files(args.base, args.adapter, args.out)
    except lora.LoRAError as e:
        raise UsageError(str(e)) from e
    print(f"merged {args.adapter} (rank {meta['rank']}, {len(meta['target_modules'])} layers) into {args.base}: "
          f'{args.out}')
    return 0
