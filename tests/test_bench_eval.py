"""scripts/bench_eval.py runs end to end in its tiny mode (a few rows per split, a few new tokens) and reports what the
issue asks for (no speed is asserted: CI machines are shared and a timing assertion would be flaky)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from conftest import ROOT, TINY_MODEL, TOFU_DIR

SCRIPT = ROOT / "scripts" / "bench_eval.py"


def test_bench_eval_tiny_reports_json_last_line(tmp_path):
    output = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    args = ["--model", str(TINY_MODEL), "--data_dir", str(TOFU_DIR), "--max_examples", "2", "--max_new_tokens", "4",
            "--baselines", "open_unlearning,per_item", "--muse", "--output", str(output)]  # fmt: skip
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    lines = proc.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    assert "speed-up" in proc.stdout  # the readable table precedes the JSON line
    assert json.loads(output.read_text()) == out
    assert out["benchmark"] == "tofu_forget10" and out["threads"] == 1 and out["max_examples"] == 2
    assert out["batch_size"] == 32 and out["generation_batch_size"] >= 1 and out["max_new_tokens"] == 4
    for name in ("llmpost", "open_unlearning", "per_item"):
        assert len(out["seconds"][name]) == 1 and out["median_s"][name] > 0
    for key in ("ratio", "ratio_per_item"):
        assert math.isfinite(out[key]) and out[key] > 0
        assert out[key] == out["median_s"][key.replace("ratio_", "") if key != "ratio" else "open_unlearning"] / \
            out["median_s"]["llmpost"]  # fmt: skip
        lo, hi = out[f"{key}_range"]
        assert lo <= out[key] <= hi and out[f"cpu_{key}"] > 0
    # The emulations made the calls of the code they stand for: 2 rows per split, batch 32.
    ou = out["details"]["open_unlearning"]
    assert ou["generate_calls"] == 4  # one batch per split (forget, retain, ra, wf)
    assert ou["forward_calls"] == 2 * (1 + 1 + 5) + 2 * (1 + 3) + 3  # probabilities, extraction strength, min-k x 2
    assert out["details"]["per_item"]["generate_calls"] == 8
    try:
        from llmpost.benchmarks.muse.evaluate import evaluate_muse  # noqa: F401
    except ImportError:
        assert out["muse"]["status"].startswith("skipped")
    else:
        assert out["muse"]["status"] == "ok" and out["muse"]["ratio"] > 0
