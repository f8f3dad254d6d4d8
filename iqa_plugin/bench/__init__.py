"""Performance harnesses run by ``iqa-plugin bench NAME``.

Each entry is ``'module:function'``; the function takes the remaining command-line arguments
(a list of str), prints its figures, measures ours and the baseline in the same run, and returns
a dict that the CLI prints as the final JSON line (it includes a ``ratio``).
"""
BENCHES = {
    'milo': 'iqa_plugin.bench.milo_bench:main',
    'afine': 'iqa_plugin.bench.afine_bench:main',
    'nriqa': 'iqa_plugin.bench.nriqa_bench:main',
}
