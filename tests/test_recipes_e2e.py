"""Tier 3: the quickstart pipeline end to end on the tiny model and real TOFU rows (few steps, few eval rows):
fine-tune retain and target models, unlearn (NPO, FLAT, IdkDPO; NPO+RT with LoRA), evaluate against the retain log,
report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_MODEL


def _run(script, *argv):
    r = subprocess.run([sys.executable, f"recipes/{script}", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_finetune_unlearn_evaluate_report(tmp_path):
    quick = ["--max_steps", "4", "--eval_max_examples", "6", "--eval_max_new_tokens", "8", "--num_retain_authors", "2",
             "--per_device_eval_batch_size", "8", "--disable_tqdm", "true", "--logging_steps", "1"]
    ft = ["--config", "configs/finetune_tofu_tiny.yaml", "--model_name_or_path", str(TINY_MODEL), *quick]
    _run("finetune_tofu.py", *ft, "--include_forget", "false", "--output_dir", str(tmp_path / "retain"))
    retain_log = tmp_path / "retain" / "eval" / "TOFU_EVAL.json"
    _run("finetune_tofu.py", *ft, "--output_dir", str(tmp_path / "target"), "--retain_logs_path", str(retain_log))
    target = json.loads((tmp_path / "target" / "eval" / "TOFU_SUMMARY.json").read_text())
    assert 0 <= target["forget_quality"] <= 1 and target["forget_Q_A_Prob"] > 0

    un = ["--config", "configs/npo_tofu_tiny.yaml", "--model_name_or_path", str(tmp_path / "target"),
          "--retain_logs_path", str(retain_log), "--learning_rate", "1e-2", *quick]
    _run("npo_tofu.py", *un, "--method", "npo", "--output_dir", str(tmp_path / "npo"))
    _run("npo_tofu.py", *un, "--method", "npo_rt", "--use_peft", "true", "--lora_r", "4",
         "--lora_target_modules", "q_proj", "v_proj", "--output_dir", str(tmp_path / "lora"))
    assert (tmp_path / "lora" / "adapter_config.json").is_file()  # LoRA saves the adapter; evaluation merges it
    npo = json.loads((tmp_path / "npo" / "eval" / "TOFU_SUMMARY.json").read_text())
    lora = json.loads((tmp_path / "lora" / "eval" / "TOFU_SUMMARY.json").read_text())
    assert npo["forget_Q_A_Prob"] < target["forget_Q_A_Prob"]  # NPO lowered the forget answers' probability
    assert lora["forget_Q_A_Prob"] < target["forget_Q_A_Prob"]
    for method in ("flat", "idk_dpo"):  # template answers: TOFU's idontknow.jsonl beside the splits
        _run("npo_tofu.py", *un, "--method", method, "--output_dir", str(tmp_path / method))
        summary = json.loads((tmp_path / method / "eval" / "TOFU_SUMMARY.json").read_text())
        assert summary["forget_Q_A_Prob"] < target["forget_Q_A_Prob"], method
    eval_logs = json.loads((tmp_path / "npo" / "eval" / "TOFU_EVAL.json").read_text())
    assert len(eval_logs["forget_truth_ratio"]["value_by_index"]) == 6

    plot = tmp_path / "plot.png"
    r = subprocess.run([sys.executable, "-m", "llmpost.cli", "report", "tofu", "--retain_logs_path", str(retain_log),
                        "--run", f"target={tmp_path / 'target' / 'eval'}", "--run", f"npo={tmp_path / 'npo' / 'eval'}",
                        "--plot", str(plot)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "forget_quality" in r.stdout and plot.stat().st_size > 1000
