"""Run ``recipes/npo_tofu.py`` (``method: rmu``) unchanged, recording what each process saw and ended with (used by
test_rmu.py's two-process test): ``rank{R}.json`` (rank, world size, DDP wrapper, forget ``index`` and loss per
micro-batch) and ``rank{R}.pt`` (every parameter in float32) in ``$LLMPOST_DIST_DUMP_DIR``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from dist_launch_helper import full_params, run_recipe_with  # noqa: E402

from llmpost.trainers.rmu import RmuTrainer  # noqa: E402


class RecordingRmuTrainer(RmuTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[dict] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.seen.append({"step": int(self.state.global_step), "forget_index": inputs["forget_index"].tolist(),
                          "loss": float(loss.detach())})
        return loss

    def train(self, *args, **kwargs):
        out = super().train(*args, **kwargs)
        dump, rank = Path(os.environ["LLMPOST_DIST_DUMP_DIR"]), self.accelerator.process_index
        torch.save(full_params(self.model), dump / f"rank{rank}.pt")
        record = {"rank": rank, "world_size": self.accelerator.num_processes, "seen": self.seen,
                  "wrapper": type(self.model_wrapped).__name__}
        (dump / f"rank{rank}.json").write_text(json.dumps(record))
        return out


if __name__ == "__main__":
    run_recipe_with("npo_tofu", RmuTrainer=RecordingRmuTrainer)
