#!/usr/bin/env bash
# Sets up .venv for the command line and the tests on a machine that has only Python.
# Usage: bash scripts/setup.sh          # the pack and its runtime dependencies
#        bash scripts/setup.sh test     # plus the test extras (pytest, ruff, transformers, ...)
# torch: an existing torch in .venv is kept; otherwise torch 2.13.0 is installed. For a GPU, install
# the torch build for your CUDA into .venv first (see pytorch.org). Inside ComfyUI none of this is
# needed: ComfyUI owns torch, and its Manager installs requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MUSETALK_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
fi
if [ "${1:-}" = "test" ]; then
    "$VENV/bin/python" -m pip install -q -e ".[test]"
else
    "$VENV/bin/python" -m pip install -q -e .
fi
