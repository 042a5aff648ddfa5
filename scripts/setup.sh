#!/usr/bin/env bash
# Create .venv and install llmpost with its test dependencies. Idempotent; safe to run again.
# Without an NVIDIA GPU it installs the CPU build of torch first (an unpinned torch pulls a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# This machine's pip config lists local indexes, some empty; drop pip's per-package notices about them.
quiet_pip() { pip "$@" 2> >(grep -v "^WARNING: Location" >&2); }
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    quiet_pip install -q "torch>=2.4"
  else
    quiet_pip install -q "torch==2.13.0"   # CPU wheel on these machines; see DESIGN.md
  fi
fi
# Editable install with the [dev] extra (pytest, deepspeed for the distributed tests).
if ! python -c "import llmpost, trl, deepspeed, pytest" 2>/dev/null || [ pyproject.toml -nt .venv/.llmpost-installed ]; then
  quiet_pip install -q -e ".[dev]"
  python -c "import llmpost, trl, deepspeed, pytest"
  touch .venv/.llmpost-installed
fi
