"""scripts/bench_dco.py runs end to end on CPU and reports what its docstring promises (no speed is asserted: CI
machines are shared and a timing assertion would be flaky)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_MODEL

SCRIPT = ROOT / "scripts" / "bench_dco.py"
TINY = ["--model", str(TINY_MODEL), "--steps", "2", "--warmup_steps", "1", "--seq_len", "48", "--batch_size", "2",
        "--repeats", "1", "--sample_repeats", "2", "--max_new_tokens", "8", "--sample_prompts", "2", "--sample_n", "2",
        "--sample_prompt_len", "8"]


def _run(args, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-5000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-5000:]
    return json.loads(lines[-1]), proc.stdout


def _positive(out, *keys):
    for key in keys:
        value = out[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


def _check_trainers(out, names, steps=2, seq_len=48, batch_size=2):
    assert set(out["trainers"]) == set(names)
    for name in names:
        _positive(out, f"{name}_tokens_per_s", f"{name}_peak_memory_bytes")
        for run in out["trainers"][name]["runs"]:
            assert run["timed_tokens"] == steps * batch_size * seq_len
            assert len(run["step_s"]) == out["warmup_steps"] + steps
    assert out["seq_len"] == seq_len and out["steps"] == steps and out["rows_per_step"] == batch_size
    _positive(out, "tokens_per_s_ratio_dco1_vs_trl_sft", "peak_memory_ratio_dco1_vs_trl_sft")
    assert out["tokens_per_s_ratio_dco1_vs_trl_sft"] == pytest.approx(out["dco1_tokens_per_s"]
                                                                       / out["trl_sft_tokens_per_s"])
    lo, hi = out["tokens_per_s_ratio_dco1_vs_trl_sft_range"]
    assert lo <= out["tokens_per_s_ratio_dco1_vs_trl_sft"] <= hi


def _check_sampling(out, models):
    assert set(out["sampling"]) == set(models)
    for model in models:
        _positive(out, f"sampling_{model}_lean_tokens_per_s", f"sampling_{model}_hf_tokens_per_s",
                  f"sampling_{model}_ratio")
        s = out["sampling"][model]
        assert s["same_token_counts"] is True  # lean and hf draw the same tokens under the same seed
        assert len(s["runs"]["lean"]) == len(s["runs"]["hf"]) == 2
        assert all(r["tokens"] > 0 for impl in ("lean", "hf") for r in s["runs"][impl])


def test_bench_dco_cpu_tiny_reports_json_last_line(tmp_path):
    output = tmp_path / "bench.json"
    out, stdout = _run([*TINY, "--trainers", "dco1,trl_sft,dco16_filter", "--sample_models", str(TINY_MODEL),
                        "--no_memory_run", "--output", str(output)])
    _check_trainers(out, ["dco1", "trl_sft", "dco16_filter"])
    # stories260K gives random answers probability ~0, so F(16, p) ~ 1 > 0.1: the filter scores rows and keeps all
    assert out["dco16_filter_kept_fraction"] == 1.0
    assert out["trainers"]["dco16_filter"]["runs"][0]["filter_scored"] == 3 * 2
    _check_sampling(out, ["stories260K"])
    assert out["device"].startswith("cpu") and out["peak_memory_kind"] == "cpu_peak_rss_growth"
    assert len(out["loadavg_before"]) == 3
    assert "tokens/s" in stdout and "load average" in stdout  # the readable table precedes the JSON line
    assert json.loads(output.read_text()) == out
