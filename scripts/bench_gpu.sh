#!/usr/bin/env bash
# The GPU benchmarks of the throughput work, in one run (about 8 minutes on an H100/H200-class GPU). Results (JSON and
# the printed tables) go to ${OUT:-bench_gpu_out}. Needs CUDA and the project installed (bash scripts/setup.sh);
# flash-attn (optional) is used for the padding-free columns when it imports.
#
#   bash scripts/bench_gpu.sh            # then copy the tables into the README's "Speed and memory" section
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_gpu_out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
ATTN=sdpa
if $PY -c "import flash_attn" 2>/dev/null; then ATTN=flash_attention_2; fi
echo "attention for the padding-free columns: $ATTN" | tee -a "$OUT/gpu.txt"

# NPO+RT vs TRL DPO (reference model and precomputed), Llama-3.2-1B shape, bf16, 32 x 512 tokens per step.
$PY scripts/bench_unlearn.py --gpu --dpo_precompute_ref --output "$OUT/unlearn_fixed.json" 2>&1 | tee "$OUT/unlearn_fixed.log"
# Variable-length rows (answers 64..448 tokens): padded vs padding-free llmpost vs TRL DPO.
$PY scripts/bench_unlearn.py --gpu --dpo_precompute_ref --padding_free --answer_len_min 64 --attn_implementation "$ATTN" \
  --output "$OUT/unlearn_variable.json" 2>&1 | tee "$OUT/unlearn_variable.log"
# Reweighted pretraining and DCO vs TRL SFT (same model, rows, optimizer).
$PY scripts/bench_dco.py --gpu --trainers dco1,trl_sft,trl_sft_lm,rw_uniform,rw_linupper --sample_models "" --repeats 1 \
  --output "$OUT/dco_reweight.json" 2>&1 | tee "$OUT/dco_reweight.log"
