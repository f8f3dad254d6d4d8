"""Performance harnesses run by ``iqa-plugin bench NAME``.

Each entry is ``'module:function'``; the function takes the remaining command-line arguments
(a list of str), prints its figures, measures ours and the baseline in the same run, and returns
a dict that the CLI prints as the final JSON line (it includes a ``ratio``). The first line of a
bench module's docstring (after ``\\`\\`iqa-plugin bench NAME\\`\\`:``) is its one-line description.
"""
import ast
import importlib.util

BENCHES = {
    'milo': 'iqa_plugin.apps.bench.milo_bench:main',
    'afine': 'iqa_plugin.apps.bench.afine_bench:main',
    'nriqa': 'iqa_plugin.apps.bench.nriqa_bench:main',
    'cli': 'iqa_plugin.apps.bench.cli_bench:main',
    'gt-sampling': 'iqa_plugin.apps.bench.gt_sampling_bench:main',
    'lora': 'iqa_plugin.apps.bench.lora_bench:main',
    'train-step': 'iqa_plugin.apps.bench.train_step_bench:main',
}


def describe(name):
    """One line describing bench ``name``, read from its module's docstring without importing it
    (the bench modules import torch)."""
    module = BENCHES[name].split(':')[0]
    spec = importlib.util.find_spec(module)
    with open(spec.origin, encoding='utf-8') as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ''
    first = doc.strip().split('\n')[0] if doc.strip() else ''
    return first.split(': ', 1)[1] if first.startswith('``iqa-plugin bench') and ': ' in first else first
