"""Run ``recipes/reweight_pretrain.py`` unchanged, recording what each process computed (used by
test_reweight_distributed.py).

Launched like the recipe (``python`` or ``accelerate launch``, same arguments). The recipe's ``ReweightTrainer`` is
swapped for a subclass that records, on every training ``compute_loss`` call, the optimizer step, the ``index`` of
this process's rows, the global weights and this process's loss; after ``train()`` it writes ``rank{R}.json`` and
``rank{R}.pt`` (every parameter) into ``$LLMPOST_DIST_DUMP_DIR``. Nothing here changes the training itself.
"""

from __future__ import annotations

from dist_launch_helper import dump_rank, run_recipe_with  # this script's directory is on sys.path

from llmpost.trainers.reweight import ReweightTrainer


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
        dump_rank(self, {"seen": self.seen, "logged_loss": [h["loss"] for h in self.state.log_history if "loss" in h]})
        return out


if __name__ == "__main__":
    run_recipe_with("reweight_pretrain", ReweightTrainer=RecordingReweightTrainer)
