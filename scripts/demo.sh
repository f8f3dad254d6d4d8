#!/usr/bin/env bash
# From a fresh clone: create .venv, install, run the demo (small x4 SwinIR on CPU or GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
VENV="${IQA_PLUGIN_VENV:-.venv}"
exec "$VENV/bin/iqa-plugin" demo "$@"
