#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: all three tiers, distributed runs included. Nothing is skipped
# silently: -ra lists any skip (only GPU tests skip, on machines without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}
exec python -m pytest -q "$@"
