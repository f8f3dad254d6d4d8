#!/usr/bin/env bash
# Create the virtual environment (default .venv, or $IQA_PLUGIN_VENV) and install iqa-plugin into it.
# torch/torchvision are pinned first so pip takes the releases on this machine's disk instead of
# resolving a newer multi-GB CUDA build as a dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${IQA_PLUGIN_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install -q -e '.[test]'
