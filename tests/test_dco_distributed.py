"""Tier 3: ``recipes/dco_math.py`` with the authors' filter on two CPU processes (DDP, DeepSpeed ZeRO-3) against one
process.

The filter scores candidate micro-batches on every rank, all-gathers the kept indices and splits one shared queue, so
per optimizer step the two ranks must train on disjoint rows whose union is exactly the single-process step's rows (the
same global batch: 2 processes x 2 rows vs 1 process x 4 rows, 2 accumulation steps), end with identical weights,
and those weights must match the single-process run's. The starting model is the tiny model after a few
cross-entropy epochs (a module fixture), so that answer probabilities are ~1e-2 and the threshold really drops rows
(checked: the logged kept fraction is below 1).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from conftest import CPU_BACKENDS, TINY_MODEL, accelerate_cmd, run_dumped

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "tests" / "dco_dist_helper.py"
pytestmark = pytest.mark.slow


def _args(model: Path | str, out: Path, per_device: int, **overrides) -> list[str]:
    values = {"model_name_or_path": str(model), "output_dir": str(out), "task": "arithmetic",
              "arithmetic_train_size": 64, "target": "direct", "max_length": 64, "per_device_train_batch_size": per_device,
              "gradient_accumulation_steps": 2, "learning_rate": 1e-3, "max_steps": 3, "dco_n": 16,
              "dco_threshold": 0.6, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
              "eval_after_training": "false", "seed": 0, "bf16": "false"}  # fmt: skip
    values.update(overrides)
    return [x for k, v in values.items() for x in (f"--{k}", str(v))]


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    dump = tmp_path_factory.mktemp("warm")
    cmd = [sys.executable, str(HELPER), *_args(TINY_MODEL, dump / "out", 8, dco_n=1, max_steps=40, learning_rate=3e-3,
                                               gradient_accumulation_steps=1, use_cpu="true")]  # fmt: skip
    run_dumped(cmd, dump, 1)
    return dump / "out"


def _steps(rank: dict) -> dict[int, list[int]]:
    out = defaultdict(list)
    for rec in rank["seen"]:
        out[rec["step"]] += rec["index"]
    return out


@pytest.fixture(scope="module")
def single(warm, tmp_path_factory):
    d1 = tmp_path_factory.mktemp("single")
    (run,) = run_dumped([sys.executable, str(HELPER), *_args(warm, d1 / "out", 4, use_cpu="true")], d1, 1)
    return run


@pytest.mark.parametrize("backend", list(CPU_BACKENDS))
def test_filter_on_two_processes_matches_one_process(backend, warm, single, tmp_path_factory):
    config, extra, use_cpu = CPU_BACKENDS[backend]
    d2 = tmp_path_factory.mktemp(backend)
    ranks = run_dumped(accelerate_cmd(config, HELPER, _args(warm, d2 / "out", 2, **extra)), d2, 2, use_cpu=use_cpu)
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all(r["zero3"] == (backend == "zero3") for r in ranks)
    assert single["kept_fraction"] and min(single["kept_fraction"]) < 1  # the filter really dropped rows
    one, a, b = _steps(single), _steps(ranks[0]), _steps(ranks[1])
    assert sorted(one) == sorted(a) == sorted(b) == [0, 1, 2]
    for step in one:
        assert len(a[step]) == len(b[step]) == 4 and not set(a[step]) & set(b[step])  # disjoint halves
        assert sorted(a[step] + b[step]) == sorted(one[step])  # the same global batch as one process
        assert len(set(one[step])) == 8
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key  # ranks agree bitwise
    diff = sum((ranks[0]["state"][k] - single["state"][k]).norm() ** 2 for k in single["state"]) ** 0.5
    assert diff < 1e-4  # the weights match the single process's (fp32, only the reduction order differs)


@pytest.mark.parametrize("backend", list(CPU_BACKENDS))
def test_cot_mode_on_two_processes(backend, warm, tmp_path_factory):
    """dco_mode: cot on two processes: each rank samples for its own candidates (seeds differ by rank), the kept rows and
    their p^ are gathered into one queue, the ranks train disjoint halves of each global batch and end identical.
    Under ZeRO-3 the sampling gathers the parameters first (decoding with layer-wise gathering inside inference mode
    left inference tensors that broke the next backward). The warm model answers "$a+b$" often enough for math-verify to
    grade some samples correct, so the filter (p^ >= 1/8 dropped) really drops rows."""
    config, extra, use_cpu = CPU_BACKENDS[backend]
    d2 = tmp_path_factory.mktemp(f"cot_{backend}")
    cot = dict(dco_mode="cot", dco_n=4, dco_threshold=0.1, cot_num_samples=8, cot_max_new_tokens=6, cot_warmup_steps=1,
               cot_grader="math_verify", max_steps=4)  # fmt: skip
    ranks = run_dumped(accelerate_cmd(config, HELPER, _args(warm, d2 / "out", 2, **cot, **extra)), d2, 2, use_cpu=use_cpu)
    assert [r["world_size"] for r in ranks] == [2, 2] and ranks[0]["kept_fraction"] == ranks[1]["kept_fraction"]
    assert min(ranks[0]["kept_fraction"]) < 1  # sampled solutions graded correct: rows were dropped
    a, b = _steps(ranks[0]), _steps(ranks[1])
    assert sorted(a) == sorted(b) == [0, 1, 2, 3]
    for step in a:
        assert len(a[step]) == len(b[step]) == 4 and len(set(a[step] + b[step])) == 8  # disjoint halves, all distinct
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key  # ranks agree bitwise
