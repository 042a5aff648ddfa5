"""Tier 3: ``recipes/grpo_noisy_math.py`` on two CPU processes (DDP, DeepSpeed ZeRO-3).

TRL gathers every process's verdicts, so the corrections, the EMA baseline and scale and the appeals estimate must
be computed once over the whole generation batch and agree on every rank: per generation batch the two ranks must
hold the same gathered verdicts, the same rho1^ and EMA state, and advantages that are their own slices of
``advantages(corrected_scores(all verdicts))`` computed here by hand; after training, identical weights. Sampling
differs with the number of processes, so there is no single-process reference to match.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import CPU_BACKENDS, TINY_MODEL, accelerate_cmd, run_dumped
from llmpost.losses.noisy_grpo import AdvantageNorm, Correction, NoiseRates, advantages, corrected_scores

ROOT = Path(__file__).resolve().parents[1]
HELPER = ROOT / "tests" / "grpo_dist_helper.py"
pytestmark = pytest.mark.slow

# Injected false positives give the untrained model varying verdicts; appeals re-check half the negatives.
ARGS = {"config": "configs/grpo_noisy_math_tiny.yaml", "model_name_or_path": str(TINY_MODEL), "noise_rho0": 0.4,
        "noise_rho1": 0.3, "rho0": 0.4, "rho1": 0.3, "correction": "backward", "baseline": "ema", "scale_mode": "ema",
        "appeals_fraction": 0.5, "num_generations": 4, "per_device_train_batch_size": 8, "max_steps": 3,
        "logging_steps": 1, "eval_after_training": "false", "heldout_eval_steps": 0, "disable_tqdm": "true"}  # fmt: skip


def _run(backend: str, dump: Path) -> list[dict]:
    config, extra, use_cpu = CPU_BACKENDS[backend]
    args = [x for k, v in {**ARGS, **extra, "output_dir": str(dump / "out")}.items() for x in (f"--{k}", str(v))]
    return run_dumped(accelerate_cmd(config, HELPER, args), dump, 2, use_cpu=use_cpu)


@pytest.mark.parametrize("backend", list(CPU_BACKENDS))
def test_ranks_agree_on_corrections_appeals_and_weights(backend, tmp_path):
    r0, r1 = _run(backend, tmp_path)
    assert [r0["world_size"], r1["world_size"]] == [2, 2]
    assert r0["zero3"] == r1["zero3"] == (backend == "zero3")
    assert len(r0["records"]) == len(r1["records"]) == 3
    rates = NoiseRates(0.4, 0.3)
    varied = 0
    for a, b in zip(r0["records"], r1["records"]):
        assert a["raw"] == b["raw"] and set(a["raw"]) <= {0.0, 1.0}  # the gathered verdicts of both ranks
        assert a["rho1_hat"] == b["rho1_hat"] and a["appeals"] == b["appeals"] and a["appeals"] > 0
        assert a["ema_before"] == b["ema_before"] and a["ema_after"] == b["ema_after"]
        raw = torch.tensor(a["raw"])
        n = len(a["advantages"])
        assert len(raw) == 2 * n == 2 * len(b["advantages"])
        scores = corrected_scores(raw, Correction.BACKWARD, rates)
        base, scale = a["ema_before"]
        base = scores.mean().item() if base is None else base
        scale = (scores.std().item() if scores.std() > 0 else 1.0) if scale is None else scale
        full = advantages(scores, 4, AdvantageNorm.NONE, baseline=base, scale=scale)
        torch.testing.assert_close(torch.tensor(a["advantages"]), full[:n])  # rank 0 holds the first slice
        torch.testing.assert_close(torch.tensor(b["advantages"]), full[n:])
        varied += int(raw.std() > 0)
    assert varied  # the check is not vacuous: some batch had varying verdicts
    for key, value in r0["state"].items():
        assert torch.equal(value, r1["state"][key]), key  # ranks agree bitwise
