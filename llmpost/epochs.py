"""Per-epoch state that survives a resume: one mechanism for every llmpost trainer.

Some training data depends on the epoch: the retain row paired with each forget row (unlearning), the template answer
drawn for each forget row (FLAT, IdkDPO), a filtered batch's refill, a reweighting warm-up. llmpost makes each such
choice a pure function of ``(seed, epoch, index)`` in an object with a ``set_epoch(epoch)`` method (an
:class:`EpochAware` dataset or collator), and :class:`EpochCallback` tells it the epoch at the start of every epoch.

Why not rely on the data loader: transformers' ``Trainer`` calls ``DataLoaderShard.set_epoch``, and accelerate
forwards the epoch to the dataset only when no wrapped batch sampler takes it first. Resuming inside an epoch
replaces the loader with one built by ``skip_first_batches`` (a ``SkipBatchSampler``), and multi-process runs wrap
the sampler in a ``BatchSamplerShard``; in both cases the dataset keeps its old epoch (measured: a run resumed in its
second epoch paired the retain rows as in the first). The callback derives the epoch from the trainer state instead,
so it is the same in an uninterrupted run, a resumed one (at any step of any epoch) and on every rank.

The epoch is ``floor(state.epoch)`` at ``on_epoch_begin``: 0 at the start, exactly ``k`` after ``k`` whole epochs
(the trainer sets ``state.epoch = k + steps / steps_in_epoch``), and the checkpoint's fractional epoch on a resume.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

from transformers import TrainerCallback


@runtime_checkable
class EpochAware(Protocol):
    """An object whose items depend on the epoch (a dataset, a collator)."""

    def set_epoch(self, epoch: int) -> None: ...


def current_epoch(state) -> int:
    """The 0-based index of the epoch being trained, from a ``TrainerState`` (also right after a resume)."""
    return int(math.floor(state.epoch or 0.0))


class EpochCallback(TrainerCallback):
    """Sets the epoch of the training dataset and collator (when they are :class:`EpochAware`) at each epoch start.

    ``extra`` holds any other epoch-aware objects a trainer owns. Refuses persistent data-loader workers together with
    an epoch-aware dataset: their copies of the dataset would never see a new epoch.
    """

    def __init__(self, *extra: EpochAware):
        self.extra = list(extra)

    def _targets(self, train_dataloader) -> list[EpochAware]:
        found = list(self.extra)
        if train_dataloader is not None:
            found += [getattr(train_dataloader, "dataset", None), getattr(train_dataloader, "collate_fn", None)]
        unique: list[EpochAware] = []
        for obj in found:
            if isinstance(obj, EpochAware) and all(obj is not u for u in unique):
                unique.append(obj)
        return unique

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if args.dataloader_num_workers > 0 and args.dataloader_persistent_workers and self._targets(train_dataloader):
            raise ValueError(
                "dataloader_persistent_workers: must be false here: the training data depends on the epoch, and "
                "persistent workers keep a copy of the dataset that never sees a new epoch"
            )

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        epoch = current_epoch(state)
        for obj in self._targets(train_dataloader):
            obj.set_epoch(epoch)
