"""The applications built on the library: ``demo`` (``iqa-plugin demo``), ``repro`` (``iqa-plugin repro``),
``evaluate`` (``iqa-plugin evaluate``), ``multigt_make`` (``iqa-plugin make-multigt``), ``bench/``
(``iqa-plugin bench``) and ``configs/`` (the demo's option file). The command line (``iqa_plugin.cli``) imports
them; the library (everything outside ``apps/`` and ``cli/``) never does (``tests/test_layout.py``).
"""
