#!/usr/bin/env bash
# The NPO-on-TOFU quickstart, offline on CPU (~10 minutes on 2 cores), with the tiny pretrained Llama
# ../shared/models/stories260K:
#   1. fine-tune a "retain" model on 23 retain authors and evaluate it (its TOFU_EVAL.json is the retain log);
#   2. fine-tune the "target" model on forget10 + the same retain authors, evaluate it against the retain log;
#   3. unlearn forget10 from the target with NPO (lr 5e-5) and with NPO+RT (lr 5e-4), evaluate each;
#   4. print the before/after table and write runs/quickstart/forget_quality_vs_utility.png.
# METHODS="grad_diff simnpo" bash scripts/quickstart.sh unlearns with other methods (configs/npo_tofu_tiny.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1   # training and evaluation show progress bars with rate and ETA
OUT=${OUT:-runs/quickstart}
METHODS=${METHODS:-npo npo_rt}
common=(--overwrite_output_dir true)

python recipes/finetune_tofu.py --config configs/finetune_tofu_tiny.yaml "${common[@]}" \
  --include_forget false --output_dir "$OUT/retain"
python recipes/finetune_tofu.py --config configs/finetune_tofu_tiny.yaml "${common[@]}" \
  --output_dir "$OUT/target" --retain_logs_path "$OUT/retain/eval/TOFU_EVAL.json"
runs=(--run "retain=$OUT/retain/eval" --run "target=$OUT/target/eval")
for method in $METHODS; do
  extra=()
  [ "$method" = npo ] && extra=(--learning_rate 5e-5)   # plain NPO needs a gentler step on this tiny model
  python recipes/npo_tofu.py --config configs/npo_tofu_tiny.yaml "${common[@]}" --method "$method" "${extra[@]}" \
    --model_name_or_path "$OUT/target" --output_dir "$OUT/$method" --retain_logs_path "$OUT/retain/eval/TOFU_EVAL.json"
  runs+=(--run "$method=$OUT/$method/eval")
done

llmpost report tofu --retain_logs_path "$OUT/retain/eval/TOFU_EVAL.json" "${runs[@]}" \
  --plot "$OUT/forget_quality_vs_utility.png" --output "$OUT/report.txt"
