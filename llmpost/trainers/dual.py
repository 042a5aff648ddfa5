"""The dual variable of PDU (primal-dual unlearning, arXiv 2506.05314), kept in the trainer's state.

:class:`DualVariable` is a callback: :class:`~llmpost.trainers.unlearn.UnlearnTrainer` reads ``value`` (``lambda``)
in ``compute_loss`` and hands it each micro-batch's retain loss; after every optimizer step the mean retain loss of that
step (over its micro-batches and over processes, so every rank holds the same ``lambda``) drives one projected
dual-ascent step (:func:`llmpost.losses.pdu.dual_update`), once ``warmup_epochs`` epochs have passed. ``lambda`` is
saved in each checkpoint's ``trainer_state.json`` (transformers' ``ExportableState``) and read back when training
resumes, so a resumed run continues with the same ``lambda`` as an uninterrupted one.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from llmpost.losses.pdu import dual_update


class DualVariable(TrainerCallback, ExportableState):
    def __init__(self, value: float = 1.0, eps: float = 0.0, step_size: float = 1.0, warmup_epochs: float = 0.0):
        self.value, self.eps, self.step_size, self.warmup_epochs = float(value), float(eps), float(step_size), float(warmup_epochs)
        self._pending: list[torch.Tensor] = []
        self._epoch_at_step_begin = 0.0

    def record(self, retain_loss: torch.Tensor) -> None:
        """Keep one micro-batch's (mean) retain loss for the dual step at the end of the optimizer step."""
        self._pending.append(retain_loss.detach().float().mean())

    def state(self) -> dict:
        return {"args": {"value": self.value, "eps": self.eps, "step_size": self.step_size,
                         "warmup_epochs": self.warmup_epochs}, "attributes": {}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if state.global_step > 0 and saved:  # resumed: the lambda saved with the checkpoint
            self.value = float(saved["args"]["value"])
        self._pending.clear()

    def on_step_begin(self, args, state, control, **kwargs):
        self._epoch_at_step_begin = float(state.epoch or 0.0)

    def on_step_end(self, args, state, control, **kwargs):
        pending, self._pending = self._pending, []
        if not pending or self.step_size == 0 or self._epoch_at_step_begin < self.warmup_epochs:
            return
        mean = torch.stack(pending).mean()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            mean = mean.clone()
            torch.distributed.all_reduce(mean)
            mean = mean / torch.distributed.get_world_size()
        self.value = dual_update(self.value, mean.item(), self.eps, self.step_size)
