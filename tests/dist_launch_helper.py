"""Run ``recipes/npo_tofu.py`` unchanged, recording what each process saw and ended with (used by test_distributed.py
and test_resume.py).

Launched exactly like the recipe (``python`` or ``accelerate launch``, same arguments). It swaps the recipe's
``UnlearnTrainer`` for a subclass that, on every ``compute_loss`` call, records the optimizer step, the forget and
retain ``index`` values of this process's micro-batch and the loss this process computed, and after ``train()``
writes, into ``$LLMPOST_DIST_DUMP_DIR``:

- ``rank{R}.json``: rank, world size, the per-micro-batch records, the logged ``grad_norm`` per optimizer step;
- ``rank{R}.pt``: every parameter in float32 (under ZeRO-3 gathered from all shards, on all ranks, first) and the
  precomputed reference log-probs, if any.

With ``$LLMPOST_KILL_AFTER_SAVE=N`` the process kills itself with SIGKILL (no clean-up, as ``kill -9`` would) right
after the checkpoint of optimizer step ``N`` is written.

Nothing here changes the training itself.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from llmpost.config import run_main
from llmpost.trainers.unlearn import UnlearnTrainer

REPO = Path(__file__).resolve().parents[1]


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def full_params(model) -> dict[str, torch.Tensor]:
    """Every parameter of ``model`` in float32 on CPU; under ZeRO-3 (each rank holds a shard) gathered on every rank."""
    params = list(model.parameters())
    gathered = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gathered:
        return {name: p.detach().to("cpu", torch.float32).clone() for name, p in model.named_parameters()}


def dump_rank(trainer, record: dict) -> None:
    """Write this process's ``rank{R}.json`` (``record`` plus its rank, the world size and whether the parameters are
    ZeRO-3 shards) and ``rank{R}.pt`` (:func:`full_params`) into ``$LLMPOST_DIST_DUMP_DIR``."""
    dump = Path(os.environ["LLMPOST_DIST_DUMP_DIR"])
    rank = trainer.accelerator.process_index
    zero3 = any(hasattr(p, "ds_id") for p in trainer.model.parameters())
    record = {"rank": rank, "world_size": trainer.accelerator.num_processes, "zero3": zero3, **record}
    (dump / f"rank{rank}.json").write_text(json.dumps(record))
    torch.save(full_params(trainer.model), dump / f"rank{rank}.pt")


def run_recipe_with(recipe: str, **swaps) -> None:
    """Run ``recipes/<recipe>.py``'s ``main`` on this process's arguments, with module attributes replaced by
    ``swaps`` (e.g. its trainer class by a recording subclass); the module is registered so dataclasses resolve."""
    spec = importlib.util.spec_from_file_location(recipe, REPO / "recipes" / f"{recipe}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[recipe] = module
    spec.loader.exec_module(module)
    for name, value in swaps.items():
        setattr(module, name, value)
    run_main(module.main, sys.argv[1:])


class RecordingUnlearnTrainer(UnlearnTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[dict] = []
        if os.environ.get("LLMPOST_KILL_AFTER_SAVE"):
            self.add_callback(KillAfterSave(int(os.environ["LLMPOST_KILL_AFTER_SAVE"])))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self.seen.append({
            "step": int(self.state.global_step),
            "forget_index": inputs["forget_index"].tolist(),
            "retain_index": inputs["retain_index"].tolist() if "retain_index" in inputs else None,
            "n": int(inputs["forget_index"].numel()),
            "loss": float(loss.detach()),
        })
        return loss

    def train(self, *args, **kwargs):
        out = super().train(*args, **kwargs)
        dump = os.environ["LLMPOST_DIST_DUMP_DIR"]
        rank = self.accelerator.process_index
        params = full_params(self.model)
        ref = self.ref_forget_logps.clone() if self.ref_forget_logps is not None else None
        torch.save({"params": params, "ref_forget_logps": ref}, os.path.join(dump, f"rank{rank}.pt"))
        grad_norms = {int(h["step"]): float(h["grad_norm"]) for h in self.state.log_history if "grad_norm" in h}
        logged_loss = {int(h["step"]): float(h["loss"]) for h in self.state.log_history if "loss" in h}
        record = {
            "rank": rank,
            "world_size": self.accelerator.num_processes,
            "env_rank": os.environ.get("RANK"),
            "deepspeed": bool(self.is_deepspeed_enabled),
            "zero_stage": self.accelerator.state.deepspeed_plugin.zero_stage if self.is_deepspeed_enabled else None,
            "zero3_partitioned": any(hasattr(p, "ds_id") for p in self.model.parameters()),
            "wrapper": type(self.model_wrapped).__name__,
            "global_step": int(self.state.global_step),
            "seen": self.seen,
            "grad_norm": grad_norms,
            "logged_loss": logged_loss,
            # evaluation during training (llmpost.trainers.checkpoint_eval): what this rank recorded
            "evaluations": [e.to_dict() for e in self.checkpoint_eval.evaluations] if self.checkpoint_eval else None,
        }
        with open(os.path.join(dump, f"rank{rank}.json"), "w") as f:
            json.dump(record, f)
        return out


def main() -> None:
    run_recipe_with("npo_tofu", UnlearnTrainer=RecordingUnlearnTrainer)


if __name__ == "__main__":
    main()
