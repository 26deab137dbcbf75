#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a .venv with the CPU torch 2.13.0 wheel and midaskit in
# editable mode with its dev extras. Safe to run again; it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# An unpinned torch would pull a multi-GB CUDA build; the pinned CPU wheel lies on local disk.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[dev,bench,hf,onnx]"
