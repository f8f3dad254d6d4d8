"""``iqa-plugin weights``: list, fetch or verify the files of the weights manager (``iqa_plugin.weights``).

    iqa-plugin weights list                 every entry: file, state, packaged or downloaded, licence, source
    iqa-plugin weights fetch NAME           resolve NAME (download into the cache unless offline)
    iqa-plugin weights verify [NAME ...]    hash-check local files; exit status 1 when one fails

``verify`` without names checks every file that is here and every packaged file (which must be here):
it fails on a packaged file that is missing and on any file whose sha256 differs; a downloadable file
that was never fetched is reported as ``not downloaded`` and does not fail. ``verify NAME ...`` fails
on each named file that is missing or mismatched.
"""
from iqa_plugin.cli.common import UsageError

NAME = 'weights'
HELP = 'list, fetch or verify weight files'


def add_parser(sub):
    import argparse

    p = sub.add_parser(NAME, help=HELP, description=__doc__.split('\n\n')[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('action', choices=['list', 'fetch', 'verify'])
    p.add_argument('names', nargs='*', metavar='NAME')
    return p


def main(args):
    from iqa_plugin import weights  # torch-free at import

    for name in args.names:
        weights.get_entry(name)  # unknown name: WeightsError listing the known ones
    if args.action == 'list':
        return list_entries(weights, args.names or sorted(weights.WEIGHTS))
    if args.action == 'fetch':
        if len(args.names) != 1:
            raise UsageError('weights fetch needs one NAME (see iqa-plugin weights list)')
        print(f'{args.names[0]}: {weights.resolve(args.names[0])}')
        return 0
    return verify(weights, args.names)


def list_entries(weights, names):
    for name in names:
        entry, path, state = weights.status(name)
        where = str(path) if path else '-'
        kind = 'packaged' if entry.packaged else 'download'
        print(f'{name:16s} {entry.filename:22s} {state:14s} {kind:9s} {where}\n'
              f'{"":16s} licence: {entry.license}; source: {entry.url or entry.source}')
    return 0


def verify(weights, names=()):
    """Print one line per entry; returns 1 when a required file is missing or any file mismatches."""
    failed = []
    for name in names or sorted(weights.WEIGHTS):
        entry, path, state = weights.status(name)
        if path is None:
            required = bool(names) or entry.packaged
            note = 'missing' + (' (ships with the package: reinstall iqa-plugin)' if entry.packaged else '')
            print(f'{name:16s} {note if required else "not downloaded"}')
            if required:
                failed.append(name)
            continue
        print(f'{name:16s} {state:14s} {path}')
        if state != 'ok':
            failed.append(name)
    if failed:
        print(f'verify failed: {", ".join(failed)}')
        return 1
    return 0
