"""Run ``recipes/dco_math.py`` unchanged, recording what each process trained on (used by test_dco_distributed.py).

Launched like the recipe (``python`` or ``accelerate launch``, same arguments). The recipe's ``DCOTrainer`` is swapped
for a subclass that records, on every ``compute_loss`` call, the optimizer step and the ``index`` values of this
process's micro-batch; after ``train()`` it writes ``rank{R}.json`` (records, world size) and ``rank{R}.pt`` (every
parameter) into ``$LLMPOST_DIST_DUMP_DIR``. Nothing here changes the training itself.
"""

from __future__ import annotations

from dist_launch_helper import dump_rank, run_recipe_with  # this script's directory is on sys.path

from llmpost.trainers.dco import DCOTrainer


class RecordingDCOTrainer(DCOTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[dict] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.seen.append({"step": self.state.global_step, "index": inputs["index"].tolist()})
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def train(self, *args, **kwargs):
        out = super().train(*args, **kwargs)
        dump_rank(self, {"seen": self.seen, "kept_fraction": [h["filter_kept_fraction"] for h in self.state.log_history
                                                              if "filter_kept_fraction" in h]})  # fmt: skip
        return out


if __name__ == "__main__":
    run_recipe_with("dco_math", DCOTrainer=RecordingDCOTrainer)
