#!/usr/bin/env bash
# The TOFU unlearning quickstart, offline on CPU (~7 minutes on 2 idle cores), with the tiny pretrained Llama
# ../shared/models/stories260K:
#   1. fine-tune a "retain" model on 23 retain authors and a "target" model on forget01 (2 authors, 40 rows) + the same
#      23 authors, side by side (one thread each), and evaluate both on forget01 (the retain model's TOFU_EVAL.json is
#      the retain log forget quality is measured against);
#   2. unlearn forget01 from the target with SimNPO (lr 5e-4, 8 epochs of 5 steps), evaluating TOFU at step 0 and every
#      10 steps, and report the checkpoint with the highest forget quality (runs/quickstart/simnpo/best, SELECTION.json);
#   3. print the before/after table and the selection reason, write runs/quickstart/forget_quality_vs_utility.png and
#      runs/quickstart/curves.png (forget quality and retain probability at each evaluation).
# The setting comes from the sweep in docs/unlearning.md#quickstart-sweep (scripts/sweep_quickstart.py).
# METHODS="simnpo npo_rt" unlearns with other methods too (same config: lr 5e-4; the sweep shows what they do there).
# QUICKSTART_SPLIT=forget10 runs the earlier quickstart instead: target forget10 + the 23 authors, NPO (lr 5e-5) and
# NPO+RT (lr 5e-4) for 5 epochs, final models reported, in runs/quickstart_forget10 (configs/*_tofu_tiny.yaml; ~14 min;
# forget quality stays ~1e-18).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1   # training and evaluation show progress bars with rate and ETA
SPLIT=${QUICKSTART_SPLIT:-forget01}
common=(--overwrite_output_dir true)
case "$SPLIT" in
  forget01)
    OUT=${OUT:-runs/quickstart}   # the default paths of the configs
    FT_CONFIG=configs/finetune_tofu_tiny_forget01.yaml
    UN_CONFIG=configs/npo_tofu_tiny_forget01.yaml
    METHODS=${METHODS:-simnpo} ;;
  forget10)
    OUT=${OUT:-runs/quickstart_forget10}
    FT_CONFIG=configs/finetune_tofu_tiny.yaml
    UN_CONFIG=configs/npo_tofu_tiny.yaml
    METHODS=${METHODS:-npo npo_rt} ;;
  *) echo "QUICKSTART_SPLIT must be forget01 or forget10, got '$SPLIT'" >&2; exit 2 ;;
esac
retain_log="$OUT/retain/eval/TOFU_EVAL.json"
mkdir -p "$OUT"
start=$SECONDS

# 1. The retain model in the background (its log in $OUT/retain.log), the target in the foreground.
echo "Fine-tuning the retain model in the background (log: $OUT/retain.log) and the target model ($SPLIT + 23 authors):"
OMP_NUM_THREADS=1 python recipes/finetune_tofu.py --config "$FT_CONFIG" "${common[@]}" \
  --include_forget false --output_dir "$OUT/retain" --disable_tqdm true > "$OUT/retain.log" 2>&1 &
retain_pid=$!
trap '[ -n "$retain_pid" ] && kill "$retain_pid" 2>/dev/null; true' EXIT   # stop it if the target's run fails
OMP_NUM_THREADS=1 python recipes/finetune_tofu.py --config "$FT_CONFIG" "${common[@]}" --output_dir "$OUT/target"
if ! wait "$retain_pid"; then
  retain_pid=
  tail -n 30 "$OUT/retain.log" >&2; echo "The retain model's fine-tuning failed (log: $OUT/retain.log)" >&2; exit 1
fi
retain_pid=
echo "retain and target models ready after $((SECONDS - start)) s"

# 2. Unlearning (the target's own forget quality is filled in by the report from the retain log).
runs=(--run "retain=$OUT/retain/eval" --run "target=$OUT/target/eval")
curves=()
for method in $METHODS; do
  extra=()
  [ "$SPLIT" = forget10 ] && [ "$method" = npo ] && extra=(--learning_rate 5e-5)   # forget10: plain NPO needs a gentler step
  python recipes/npo_tofu.py --config "$UN_CONFIG" "${common[@]}" --method "$method" "${extra[@]}" \
    --model_name_or_path "$OUT/target" --output_dir "$OUT/$method" --retain_logs_path "$retain_log"
  if [ "$SPLIT" = forget01 ]; then   # the checkpoint the run selected (forget10: the final model)
    runs+=(--run "$method=$OUT/$method/best/eval")
    curves+=(--run "$method=$OUT/$method")
  else
    runs+=(--run "$method=$OUT/$method/eval")
  fi
done

# 3. The before/after table, the checkpoints chosen, the plots.
llmpost report tofu --retain_logs_path "$retain_log" "${runs[@]}" \
  --plot "$OUT/forget_quality_vs_utility.png" --output "$OUT/report.txt"
for method in $METHODS; do   # which checkpoint each run reports, and why
  if [ "$SPLIT" = forget01 ]; then
    python -c 'import json, sys; print(sys.argv[1] + ":", json.load(open(sys.argv[2]))["reason"])' \
      "$method" "$OUT/$method/SELECTION.json" | tee -a "$OUT/report.txt"
  fi
done
if [ ${#curves[@]} -gt 0 ]; then   # every evaluation during unlearning (* marks the one reported)
  llmpost report curves "${curves[@]}" --keys forget_quality model_utility forget_Q_A_Prob retain_Q_A_Prob \
    --plot "$OUT/curves.png" | tee -a "$OUT/report.txt"
fi
echo "Quickstart done in $((SECONDS - start)) s: $OUT/report.txt, $OUT/forget_quality_vs_utility.png"
