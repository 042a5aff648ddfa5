"""Train SRPO on TOFU preference pairs with the tiny model, recording what each process computed (used by
test_srpo_trainer.py's two-process test).

    python tests/srpo_dist_helper.py '{"output_dir": "...", "per_device_train_batch_size": 4, "use_cpu": true}'
    ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/cpu_ddp.yaml tests/srpo_dist_helper.py '{...}'

The one argument is a JSON object of :class:`SRPOConfig` overrides. :class:`RecordingSRPOTrainer` records, on every
training ``compute_loss`` call, the optimizer step, the pair ``index`` values of this process's micro-batch and the
loss it computed; after ``train()`` it writes ``rank{R}.json`` (records, training logs, the precomputed reference) and
``rank{R}.pt`` (every parameter) into ``$LLMPOST_DIST_DUMP_DIR``. The test imports :func:`build` and :func:`record`
to run the single-process baseline in its own process. Nothing here changes the training itself.
"""

from __future__ import annotations

import json
import sys

import torch
from dist_launch_helper import dump_rank
from transformers import AutoModelForCausalLM

from conftest import TINY_MODEL, TOFU_DIR  # this script's directory is on sys.path
from llmpost.benchmarks.preference.data import tofu_preference_pairs
from llmpost.models import load_tokenizer
from llmpost.trainers.srpo import SRPOConfig, SRPOTrainer

N_PAIRS = 16


class RecordingSRPOTrainer(SRPOTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[dict] = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            self.seen.append({"step": self.state.global_step, "index": inputs["index"].tolist(),
                              "loss": float(loss.detach())})  # fmt: skip
        return loss


def build(**overrides) -> RecordingSRPOTrainer:
    """The trainer: the first ``N_PAIRS`` pairs of TOFU forget10, the tiny model, precomputed reference."""
    # SGD: the update is linear in the gradient, so float differences between one and two processes stay at their
    # size (Adam's first steps turn noise in near-zero gradients into lr-sized differences).
    values = dict(per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-2, max_steps=2, optim="sgd",
                  max_length=128, max_grad_norm=1e9, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                  report_to="none", seed=0, bf16=False, disable_tqdm=True, dataloader_drop_last=True)  # fmt: skip
    values.update(overrides)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32)
    pairs = tofu_preference_pairs(TOFU_DIR / "forget10_perturbed.jsonl").select(range(N_PAIRS))
    return RecordingSRPOTrainer(model, SRPOConfig(**values), pairs, load_tokenizer(str(TINY_MODEL)))


def record(trainer: RecordingSRPOTrainer) -> dict:
    """What a finished run is compared on: micro-batch records, training logs, the precomputed reference."""
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"seen": trainer.seen, "logs": logs, "ref_logps": trainer.ref_logps.cpu().tolist(),
            "global_step": trainer.state.global_step}  # fmt: skip


def main() -> None:
    trainer = build(**json.loads(sys.argv[1]))
    trainer.train()
    dump_rank(trainer, record(trainer))
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
