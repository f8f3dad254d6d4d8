"""``python -m iqa_plugin.cli``: the ``iqa-plugin`` command."""
from iqa_plugin.cli import main

main()
