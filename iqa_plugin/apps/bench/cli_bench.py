"""``iqa-plugin bench cli``: start-up time of the command (``--help``, ``weights list``) against the eager import.

    iqa-plugin bench cli [--repeats 7] [--command iqa-plugin]

Each case is a fresh subprocess, timed from start to exit (wall clock):

* ours: the command as installed, which defers the plugin's registration (torch, BasicSR, pyiqa) to
  the subcommands that need it;
* baseline: the same command with ``IQA_PLUGIN_LAZY_REGISTER=0``, the eager path of earlier releases
  (``import iqa_plugin`` registers everything before the command parses its arguments).

Cases run round-robin (one of each per round) so load from other processes hits them alike; the
figure is the median over ``--repeats`` rounds after one warm-up round (which fills the OS file cache).
``ratio`` is baseline / ours for ``--help``; ``ratios`` has one per command. The goal is ours under 1 s.
"""
import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {'help': ['--help'], 'weights_list': ['weights', 'list']}


def command_prefix(command=None):
    """The argv prefix that starts the command: ``command`` if given, else the ``iqa-plugin`` console
    script beside this interpreter (or on PATH), else ``python -m iqa_plugin_cli`` (the same lazy entry;
    ``python -m iqa_plugin.cli`` registers eagerly)."""
    if command:
        return shlex.split(command)
    beside = Path(sys.executable).with_name('iqa-plugin')
    if beside.is_file():
        return [str(beside)]
    found = shutil.which('iqa-plugin')
    return [found] if found else [sys.executable, '-m', 'iqa_plugin_cli']


def time_once(argv, env):
    """Seconds from start to exit of ``argv``; RuntimeError with its stderr when it fails."""
    t = time.perf_counter()
    r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f'{" ".join(argv)} exited with {r.returncode}: {r.stderr.strip()[-2000:]}')
    return dt


def main(argv=None):
    p = argparse.ArgumentParser(prog='iqa-plugin bench cli', description=__doc__.split('\n')[0])
    p.add_argument('--repeats', type=int, default=7, help='timed rounds (default 7)')
    p.add_argument('--command', help='how to start the command (default: the iqa-plugin console script)')
    args = p.parse_args(argv)
    if args.repeats < 1:
        raise ValueError(f'--repeats must be >= 1, got {args.repeats}')

    prefix = command_prefix(args.command)
    base_env = {k: v for k, v in os.environ.items() if k != 'IQA_PLUGIN_LAZY_REGISTER'}
    cases = {}
    for key, sub in COMMANDS.items():
        cases[f'{key}'] = (prefix + sub, base_env)
        cases[f'{key}_eager'] = (prefix + sub, dict(base_env, IQA_PLUGIN_LAZY_REGISTER='0'))
    times = {k: [] for k in cases}
    for round_ in range(args.repeats + 1):
        for k, (cmd, env) in cases.items():
            dt = time_once(cmd, env)
            if round_:  # round 0 warms the file cache
                times[k].append(dt)
    seconds = {k: statistics.median(v) for k, v in times.items()}
    ratios = {key: seconds[f'{key}_eager'] / seconds[key] for key in COMMANDS}
    print(f'command: {" ".join(prefix)}; median of {args.repeats} rounds, wall clock per process')
    for key, sub in COMMANDS.items():
        print(f'  {" ".join(sub):14s} ours {seconds[key]:.3f} s   eager baseline {seconds[key + "_eager"]:.3f} s'
              f'   {ratios[key]:.1f}x')
    under = all(seconds[key] < 1.0 for key in COMMANDS)
    print(f'  ours under 1 s: {"yes" if under else "no"}')
    return {'bench': 'cli', 'command': ' '.join(prefix), 'repeats': args.repeats, 'seconds': seconds,
            'ratio': ratios['help'], 'ratios': ratios, 'under_1s': under}


if __name__ == '__main__':
    import json
    print(json.dumps(main(sys.argv[1:])))
