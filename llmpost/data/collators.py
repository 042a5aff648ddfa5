"""Collators: right-pad tokenised examples; pair forget and retain examples for unlearning."""

from __future__ import annotations

import torch
from trl.trainer.utils import pad

from llmpost.ops import IGNORE_INDEX

_PAD = {"input_ids": None, "labels": IGNORE_INDEX, "attention_mask": 0}


def pad_examples(examples: list[dict], pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad ``input_ids`` / ``labels`` / ``attention_mask`` to the longest example; other numeric keys are stacked."""
    batch = {}
    for key in examples[0]:
        values = [ex[key] for ex in examples]
        if key in _PAD:
            value = pad_token_id if key == "input_ids" else _PAD[key]
            batch[key] = pad([torch.as_tensor(v) for v in values], padding_value=value, padding_side=padding_side)
        else:
            batch[key] = torch.as_tensor(values)
    return batch


INDEXED_ROW_KEYS = ("input_ids", "labels", "attention_mask", "index")


class IndexedRowCollator:
    """Pads tokenised rows (``input_ids``, ``labels``, ``attention_mask``) and stacks their ``index``; other columns
    are dropped."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return pad_examples([{k: r[k] for k in INDEXED_ROW_KEYS} for r in rows], self.pad_token_id)


class ForgetRetainCollator:
    """Batches ``{"forget": ex, "retain": ex, "template": ex}`` items into ``forget_*``, ``retain_*`` and ``template_*``
    tensors (the parts an item has)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        for part in ("forget", "retain", "template"):
            if part in items[0]:
                padded = pad_examples([it[part] for it in items], self.pad_token_id)
                batch.update({f"{part}_{k}": v for k, v in padded.items()})
        return batch
