"""``python -m iqa_plugin.labels.distortions``: throughput of every operation and of ``sample`` on one core (see ``cli``)."""
import sys

from iqa_plugin.labels.distortions.cli import main

if __name__ == '__main__':
    main(sys.argv[1:])
    sys.exit(0)
