"""Tier 3: the preference recipes end to end on the tiny model and real TOFU pairs (few pairs, one epoch, short
drafts): SRPO, and the SFT -> DPO pipeline with an f-divergence SFT stage and an IPO stage through stock TRL; and bad input stops a
recipe before training with a message naming the key or row, writing nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

QUICK = ["--max_train_pairs", "16", "--max_heldout_pairs", "4", "--eval_max_new_tokens", "8", "--num_revisions", "1",
         "--num_train_epochs", "1", "--disable_tqdm", "true", "--logging_steps", "1", "--max_length", "128"]


def _run(script, *argv, ok=True):
    r = subprocess.run([sys.executable, f"recipes/{script}", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _check_eval(run_dir, steps=2, prompts=4):
    summary = json.loads((run_dir / "eval" / "PREFERENCE_EVAL.json").read_text())
    implicit = summary["implicit_reward"]
    assert implicit["n"] == 4 and 0.0 <= implicit["accuracy"] <= 1.0
    assert implicit["accuracy_ci95"][0] <= implicit["accuracy"] <= implicit["accuracy_ci95"][1]
    assert [r["step"] for r in summary["revisions"]] == list(range(steps))
    assert summary["revisions"][0]["improvement"] == 0.0 and summary["judge"] == "rougeL_f1"
    drafts = [json.loads(line) for line in (run_dir / "eval" / "drafts.jsonl").read_text().splitlines()]
    assert len(drafts) == prompts and all(len(d["drafts"]) == steps for d in drafts)
    history = json.loads((run_dir / "log_history.json").read_text())
    return summary, history


@pytest.mark.slow
def test_srpo_recipe_trains_saves_and_evaluates(tmp_path):
    _run("srpo.py", "--config", "configs/preference/srpo_tofu_tiny.yaml", *QUICK, "--output_dir", str(tmp_path / "srpo"))
    _, history = _check_eval(tmp_path / "srpo")
    logged = [h for h in history if "srpo/margin_gen" in h]
    assert len(logged) == 2 and all(0 <= h["rewards/accuracies"] <= 1 for h in logged)
    assert (tmp_path / "srpo" / "config.json").is_file()


@pytest.mark.slow
def test_sft_dpo_pipeline_with_an_f_divergence_stage(tmp_path):
    out = tmp_path / "pipe"
    _run("sft_dpo.py", "--sft_config", "configs/preference/sft_tofu_tiny.yaml",
         "--dpo_config", "configs/preference/ipo_tofu_tiny.yaml", "--output_dir", str(out),
         "--sft", "--sft_divergence", "hellinger", *QUICK, "--dpo", *QUICK)
    _, sft_history = _check_eval(out / "sft")
    assert any("loss/hellinger" in h and "rewards/sequence" in h for h in sft_history)
    _, dpo_history = _check_eval(out / "dpo")
    assert any("rewards/margins" in h for h in dpo_history)  # TRL's DPOTrainer (IPO loss) logged its own metrics
    dpo_config = json.loads((out / "dpo" / "config.json").read_text())
    assert dpo_config["architectures"]  # the DPO stage saved a model trained from the SFT stage's
    r = _run("sft_dpo.py", "--sft_config", "configs/preference/sft_tofu_tiny.yaml", "--dpo_config",
             "configs/preference/ipo_tofu_tiny.yaml", "--output_dir", str(out), ok=False)
    assert r.returncode == 2 and "dpo" in r.stderr  # results exist: refused before training anything


def _recipe(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[f"recipe_{name}"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("flags,message", [
    (["--alpha", "1.5"], "alpha: must be in [0, 1]"),
    (["--beta", "0"], "beta: must be > 0"),
    (["--revision_template", "Q: {prompt} A:"], "revision_template: must contain the placeholder {previous}"),
    (["--judge", "reward_model"], "judge_model_path"),
])
def test_bad_settings_stop_before_training_and_write_nothing(tmp_path, monkeypatch, flags, message):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:  # ConfigError and DataError are ValueErrors; run_main prints them, exit 2
        _recipe("srpo").main(["--config", "configs/preference/srpo_tofu_tiny.yaml", *flags, "--output_dir", str(out)])
    assert message in str(e.value)
    assert not out.exists()


def test_bad_preference_rows_stop_before_training_and_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    rows = [{"prompt": "Q1?", "chosen": "A.", "rejected": "B."}, {"prompt": "Q2?", "chosen": "Same.", "rejected": " Same. "}]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        _recipe("dpo").main(["--config", "configs/preference/dpo_tofu_tiny.yaml", "--dataset", str(data),
                             "--output_dir", str(out)])
    assert str(data) in str(e.value) and "row 1" in str(e.value)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"prompt": "Q?", "chosen": "A."}) + "\n")
    with pytest.raises(ValueError, match="rejected"):
        _recipe("srpo").main(["--config", "configs/preference/srpo_tofu_tiny.yaml", "--dataset", str(missing),
                              "--output_dir", str(out)])
    assert not out.exists()
    r = _run("srpo.py", "--config", "configs/preference/srpo_tofu_tiny.yaml", "--dataset", str(missing),
             "--output_dir", str(out), ok=False)  # the command line: one line on stderr, exit status 2
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ") and not out.exists()
