"""Tier 3: ``recipes/reweight_pretrain.py`` on two CPU processes (DDP, DeepSpeed ZeRO-3) against one process over
the same global micro-batch (2 processes x 2 rows vs 1 process x 4 rows, 2 accumulation steps).

The weights are computed on the gathered losses of the global micro-batch, so per micro-step both ranks must hold
the single process's weights (same rows, same order), each rank's loss must be ``2 x`` its local weighted sum so that
the mean over ranks is the single process's loss, and after training the ranks must agree bitwise and match the
single process's weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import CPU_BACKENDS, TINY_MODEL, accelerate_cmd, run_dumped

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "tests" / "reweight_dist_helper.py"
pytestmark = pytest.mark.slow
TEXTS = ["Once upon a time there was a little dog who liked to run.", "The sun was hot and the sky was blue today.",
         "Lily liked to play in the park with her red ball and her friend.", "Tom ate an apple under the old tree.",
         "It rained all day long, so they stayed inside and read books."] * 8  # fmt: skip


def _args(corpus: Path, out: Path, per_device: int, **overrides) -> list[str]:
    # Continued pretraining of the tiny model: a random init from model_config under ZeRO-3 is made by DeepSpeed's
    # partitioned zero.Init, whose draws differ from a one-process init, so it could not be compared to one process.
    values = {"model_name_or_path": str(TINY_MODEL), "corpus_files": str(corpus), "dedupe": "false", "seq_length": 24, "validation_fraction": 0.0,
              "output_dir": str(out), "per_device_train_batch_size": per_device, "gradient_accumulation_steps": 2,
              "max_steps": 3, "learning_rate": 3e-3, "reweight_strategy": "linupper", "reweight_temperature": 0.3,
              "reweight_warmup_steps": 1, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "seed": 0,
              "bf16": "false", "disable_tqdm": "true"}  # fmt: skip
    values.update(overrides)
    return [x for k, v in values.items() for x in (f"--{k}", str(v))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return path


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory):
    d1 = tmp_path_factory.mktemp("single")
    (run,) = run_dumped([sys.executable, str(HELPER), *_args(corpus, d1 / "out", 4, use_cpu="true")], d1, 1)
    return run


@pytest.mark.parametrize("backend", list(CPU_BACKENDS))
def test_two_processes_match_one_process(backend, corpus, single, tmp_path_factory):
    config, extra, use_cpu = CPU_BACKENDS[backend]
    d2 = tmp_path_factory.mktemp(backend)
    r0, r1 = run_dumped(accelerate_cmd(config, HELPER, _args(corpus, d2 / "out", 2, **extra)), d2, 2, use_cpu=use_cpu)
    assert [r0["world_size"], r1["world_size"]] == [2, 2] and r0["zero3"] == r1["zero3"] == (backend == "zero3")
    one = single["seen"]
    assert len(one) == len(r0["seen"]) == len(r1["seen"]) == 6  # 3 steps x 2 micro-steps
    reweighted = 0
    for s, a, b in zip(one, r0["seen"], r1["seen"]):
        assert s["step"] == a["step"] == b["step"]
        assert a["index"] + b["index"] == s["index"]  # the single process's rows, in the same order
        torch.testing.assert_close(torch.tensor(a["weights"]), torch.tensor(s["weights"]), rtol=1e-4, atol=1e-5)
        assert a["weights"] == b["weights"]  # computed once from the gathered losses: identical on both ranks
        assert (a["loss"] + b["loss"]) / 2 == pytest.approx(s["loss"], rel=1e-4)  # DDP's mean = the global weighted sum
        reweighted += int(max(s["weights"]) - min(s["weights"]) > 1e-3)
    assert all(max(x["weights"]) == min(x["weights"]) for x in one[:2])  # warm-up step: uniform
    assert reweighted >= 3  # after the warm-up the weights really differ
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key
    diff = sum((r0["state"][k] - single["state"][k]).norm() ** 2 for k in single["state"]) ** 0.5
    assert diff < 1e-4
