"""Run ``recipes/grpo_noisy_math.py`` unchanged, recording what each process computed (used by
test_noisy_grpo_distributed.py).

Launched like the recipe (``python`` or ``accelerate launch``, same arguments). The recipe's ``NoisyGRPOTrainer`` is
swapped for a subclass that records, for every generation batch, the gathered raw verdicts, the rates the correction
used, this process's advantages and its slice of the whole batch's advantages (recomputed from the gathered verdicts),
the EMA baseline/scale, the appeals estimate and counts; after ``train()`` it writes ``rank{R}.json`` and
``rank{R}.pt`` (every parameter) into ``$LLMPOST_DIST_DUMP_DIR``. Nothing here changes the training itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch
from dist_launch_helper import full_params  # this script's directory is on sys.path

from llmpost.config import run_main
from llmpost.methods.noisy_grpo_trainer import NoisyGRPOTrainer

REPO = Path(__file__).resolve().parents[1]


class RecordingNoisyGRPOTrainer(NoisyGRPOTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records: list[dict] = []

    def _generate_and_score_completions(self, inputs):
        ema_before = (self.baseline_ema.value, self.scale_ema.value)
        out = super()._generate_and_score_completions(inputs)
        rates = self.current_rates()
        self.records.append({
            "step": self.state.global_step, "raw": self._raw_rewards.tolist(), "rho0": rates.rho0, "rho1": rates.rho1,
            "advantages": out["advantages"].tolist(), "ema_before": ema_before,
            "ema_after": (self.baseline_ema.value, self.scale_ema.value),
            "rho1_hat": self.appeals.rho1 if self.appeals is not None else None,
            "appeals": (self._appeal_stats or {}).get("appeals"), "prompts": len(inputs),
        })  # fmt: skip
        return out

    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        dump = Path(os.environ["LLMPOST_DIST_DUMP_DIR"])
        rank = self.accelerator.process_index
        record = {"rank": rank, "world_size": self.accelerator.num_processes, "records": self.records,
                  "zero3": any(hasattr(p, "ds_id") for p in self.model.parameters())}  # fmt: skip
        (dump / f"rank{rank}.json").write_text(json.dumps(record))
        torch.save(full_params(self.model), dump / f"rank{rank}.pt")
        return result


def main():
    spec = importlib.util.spec_from_file_location("grpo_noisy_math", REPO / "recipes" / "grpo_noisy_math.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules["grpo_noisy_math"] = recipe  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(recipe)
    recipe.NoisyGRPOTrainer = RecordingNoisyGRPOTrainer
    run_main(recipe.main, sys.argv[1:])


if __name__ == "__main__":
    main()
