#!/usr/bin/env bash
# Create .venv and install llmpost with its test dependencies. Idempotent; safe to run again.
# Versions come from constraints.txt (the ones the suite was last run with; pyproject.toml keeps loose ranges).
# Without an NVIDIA GPU it installs the CPU build of torch first (an unpinned torch pulls a multi-GB CUDA build);
# with nvidia-smi the torch pin is left out, so a CUDA build of torch is kept or installed instead.
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
CONSTRAINTS=constraints.txt
if command -v nvidia-smi >/dev/null 2>&1; then
  GPU=1
  CONSTRAINTS=$(mktemp)
  trap 'rm -f "$CONSTRAINTS"' EXIT
  grep -v '^torch==' constraints.txt > "$CONSTRAINTS"   # every pin but the CPU torch wheel's
else
  GPU=0
fi
if ! python -c "import torch" 2>/dev/null; then
  if [ "$GPU" = 1 ]; then
    quiet_pip install -q -c "$CONSTRAINTS" "torch>=2.4"
  else
    quiet_pip install -q -c "$CONSTRAINTS" torch   # the version, the CPU wheel on these machines, is constraints.txt's (see ../shared/DESIGN.md)
  fi
fi
# Editable install with the [dev] extra (pytest, deepspeed for the distributed tests) and [lm_eval] (the WMDP/MMLU
# comparison with lm-evaluation-harness); again when pyproject.toml or
# constraints.txt changed since the last install (pip then moves installed packages to the pinned versions).
if ! python -c "import llmpost, trl, deepspeed, pytest, lm_eval" 2>/dev/null || [ pyproject.toml -nt .venv/.llmpost-installed ] \
    || [ constraints.txt -nt .venv/.llmpost-installed ]; then
  quiet_pip install -q -c "$CONSTRAINTS" -e ".[dev,lm-eval]"
  python -c "import llmpost, trl, deepspeed, pytest, lm_eval"
  touch .venv/.llmpost-installed
fi
