"""Entry module of the ``iqa-plugin`` command (console script ``iqa-plugin=iqa_plugin_cli:main``; also
``python -m iqa_plugin_cli``).

It lives outside the ``iqa_plugin`` package on purpose: ``import iqa_plugin`` registers the plugin's classes
in BasicSR's registries (torch, BasicSR and pyiqa, seconds), and the command's light subcommands
(``--help``, ``score --help``, ``weights list``) need none of that. Before importing the package this module
sets the package's documented switch ``IQA_PLUGIN_LAZY_REGISTER=1`` (unless the environment already sets
it to a non-empty value: ``IQA_PLUGIN_LAZY_REGISTER=0`` keeps the eager import, the baseline of ``iqa-plugin bench cli``), and
restores it once the package is imported (the package reads it at import only), so the command's child
processes (``torchrun -m iqa_plugin.train``, scripts) register at import as usual. The subcommands that need
the registries call ``iqa_plugin.register()`` themselves.

``python -m iqa_plugin.cli`` runs the same command but imports the package first, so it registers eagerly:
correct, only slower to start.
"""
import os
import sys


def main(argv=None):
    before = os.environ.get('IQA_PLUGIN_LAZY_REGISTER')
    set_here = not (before or '').strip()  # unset or empty: the command's default, deferred
    if set_here:
        os.environ['IQA_PLUGIN_LAZY_REGISTER'] = '1'
    try:
        from iqa_plugin.cli import main as cli_main
    finally:
        if set_here:  # back to what it was, for the command's child processes
            if before is None:
                os.environ.pop('IQA_PLUGIN_LAZY_REGISTER', None)
            else:
                os.environ['IQA_PLUGIN_LAZY_REGISTER'] = before
    return cli_main(argv)


if __name__ == '__main__':
    sys.exit(main())
