"""The forget/retain pairing used by every unlearning method."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class ForgetRetainDataset(Dataset):
    """Item ``i`` is forget example ``i`` paired with a retain example drawn at random.

    The retain index is a pure function of ``(seed, epoch, i)`` (a seeded ``torch.Generator``), so pairs differ from
    epoch to epoch, are identical on every rank, and are reproduced exactly when training resumes from a checkpoint.
    :class:`llmpost.epochs.EpochCallback` calls :meth:`set_epoch` at the start of each epoch (resumed ones too).
    Without a retain set, items hold ``forget`` only.
    """

    def __init__(self, forget, retain=None, seed: int = 0):
        self.forget, self.retain, self.seed, self.epoch = forget, retain, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.forget)

    def retain_index(self, idx: int) -> int:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_033 + idx)
        return int(torch.randint(len(self.retain), (1,), generator=g))

    def __getitem__(self, idx: int) -> dict:
        item = {"forget": self.forget[idx]}
        if self.retain is not None and len(self.retain):
            item["retain"] = self.retain[self.retain_index(idx)]
        return item
