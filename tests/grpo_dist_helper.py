"""Run ``recipes/grpo_noisy_math.py`` unchanged, recording what each process computed (used by
test_noisy_grpo_distributed.py).

Launched like the recipe (``python`` or ``accelerate launch``, same arguments). The recipe's ``NoisyGRPOTrainer`` is
swapped for a subclass that records, for every generation batch, the gathered raw verdicts, the rates the correction
used, this process's advantages and its slice of the whole batch's advantages (recomputed from the gathered verdicts),
the EMA baseline/scale, the appeals estimate and counts; after ``train()`` it writes ``rank{R}.json`` and
``rank{R}.pt`` (every parameter) into ``$LLMPOST_DIST_DUMP_DIR``. Nothing here changes the training itself.
"""

from __future__ import annotations

from dist_launch_helper import dump_rank, run_recipe_with  # this script's directory is on sys.path

from llmpost.trainers.noisy_grpo import NoisyGRPOTrainer


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
        dump_rank(self, {"records": self.records})
        return result


if __name__ == "__main__":
    run_recipe_with("grpo_noisy_math", NoisyGRPOTrainer=RecordingNoisyGRPOTrainer)
