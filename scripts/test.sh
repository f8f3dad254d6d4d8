#!/usr/bin/env bash
# From a fresh clone: create .venv, install, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
VENV="${IQA_PLUGIN_VENV:-.venv}"
exec "$VENV/bin/python" -m pytest -q "$@"
