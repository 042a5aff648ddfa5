"""Run ``recipes/reweight_pretrain.py`` unchanged, recording what each process computed (used by
test_reweight_distributed.py).

Launched like the recipe (``python`` or ``accelerate launch``, same arguments). The recipe's ``ReweightTrainer`` is
swapped for a subclass that records, on every training ``compute_loss`` call, the optimizer step, the ``index`` of
this process's rows, the global weights and this process's loss; after ``train()`` it writes ``rank{R}.json`` and
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
from llmpost.methods.reweight_trainer import ReweightTrainer

REPO = Path(__file__).resolve().parents[1]


class RecordingReweightTrainer(ReweightTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[dict] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            self.seen.append({"step": self.state.global_step, "index": inputs["index"].tolist(),
                              "weights": self.last_weights.tolist(), "loss": float(loss.detach())})  # fmt: skip
        return loss

    def train(self, *args, **kwargs):
        out = super().train(*args, **kwargs)
        dump = Path(os.environ["LLMPOST_DIST_DUMP_DIR"])
        rank = self.accelerator.process_index
        record = {"rank": rank, "world_size": self.accelerator.num_processes, "seen": self.seen,
                  "zero3": any(hasattr(p, "ds_id") for p in self.model.parameters()),
                  "logged_loss": [h["loss"] for h in self.state.log_history if "loss" in h]}  # fmt: skip
        (dump / f"rank{rank}.json").write_text(json.dumps(record))
        torch.save(full_params(self.model), dump / f"rank{rank}.pt")
        return out


def main():
    spec = importlib.util.spec_from_file_location("reweight_pretrain", REPO / "recipes" / "reweight_pretrain.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    recipe.ReweightTrainer = RecordingReweightTrainer
    run_main(recipe.main, sys.argv[1:])


if __name__ == "__main__":
    main()
