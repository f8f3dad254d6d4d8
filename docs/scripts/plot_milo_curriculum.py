"""Plot MILO's curriculum schedules t(p) and the resulting per-pixel weights.

    python docs/scripts/plot_milo_curriculum.py [--out docs/img/milo_curriculum.png]

Left: t(p) for the three schedules with start=0.0, end=0.8 (step: steps=4).
Right: un-normalised weight w_raw(m) = min_weight + (1 - min_weight) * ((1 - t)(1 - m) + t m) against the
normalised mask m, for a few t (min_weight=0.1); the loss divides it by its mean over the image.
"""
import argparse
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from iqa_plugin.losses.milo_loss import curriculum_t  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=str(Path(__file__).resolve().parents[1] / 'img' / 'milo_curriculum.png'))
    args = parser.parse_args(argv)

    p = np.linspace(0, 1, 401)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for schedule in ('linear', 'cosine', 'step'):
        ax1.plot(p, [curriculum_t(x, schedule, start=0.0, end=0.8, steps=4) for x in p], label=schedule)
    ax1.set_xlabel('training progress p = iter / total_iter')
    ax1.set_ylabel('mixing weight t(p)')
    ax1.set_title('schedules (start=0.0, end=0.8)')
    ax1.legend()
    ax1.grid(alpha=0.3)

    m = np.linspace(0, 1, 101)
    min_weight = 0.1
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        ax2.plot(m, min_weight + (1 - min_weight) * ((1 - t) * (1 - m) + t * m), label=f't = {t}')
    ax2.set_xlabel('normalised MILO mask m (0: least visible, 1: most visible)')
    ax2.set_ylabel('per-pixel weight (before / mean)')
    ax2.set_title('weight vs mask (min_weight=0.1)')
    ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == '__main__':
    main()
