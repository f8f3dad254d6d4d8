"""``iqa-plugin make-multigt``: write a synthetic multi-GT set in HGGT's layout (``iqa_plugin.apps.multigt_make``).

    iqa-plugin make-multigt --src HR_DIR --out DIR [--set NAME] [--seed S] [--size N]
                            [--candidates K] [--disagree P] [--limit M]

Writes DIR/images/NAME/{original,01,...}/, DIR/labels/NAME/{A,B,C}/<image>.json and DIR/meta/NAME.json;
read it with ``type: MultiGTDataset, dataroot: DIR, set: NAME`` (docs/multigt.md). Same seed, same files.
"""
NAME = 'make-multigt'
HELP = 'write a synthetic multi-GT set (HGGT layout) from a folder of HR images'


def add_parser(sub):
    import argparse

    p = sub.add_parser(NAME, help=HELP, description=__doc__.split('\n\n')[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--src', required=True, help='folder of HR images')
    p.add_argument('--out', required=True, help='output root (images/, labels/, meta/ are written under it)')
    p.add_argument('--set', default='train', dest='set_name', help='set name (default train)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--size', type=int, default=None,
                   help='resize the shorter side to N and centre-crop N x N (default: keep the images)')
    p.add_argument('--candidates', type=int, default=4, help='enhanced versions per image (default 4, as HGGT)')
    p.add_argument('--disagree', type=float, default=0.2,
                   help="each simulated annotator's probability of a neighbouring label (default 0.2)")
    p.add_argument('--limit', type=int, default=None, help='use only the first M images (sorted)')
    return p


def main(args):
    from iqa_plugin.apps.multigt_make import make_multigt

    s = make_multigt(args.src, args.out, set_name=args.set_name, seed=args.seed, size=args.size,
                     candidates=args.candidates, disagree=args.disagree, limit=args.limit)
    c = s['label_counts']
    print(f"make-multigt: {s['groups']} groups -> {s['images']} and {s['labels']}")
    print(f"  majority labels: Positive {c['Positive']}, Similar {c['Similar']}, Negative {c['Negative']}; "
          f"{s['without_positive']} groups without a Positive; details in {s['meta']}")
    return 0
