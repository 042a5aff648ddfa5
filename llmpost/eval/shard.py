"""Helpers every benchmark evaluation shares: splitting work across ``torch.distributed`` ranks, the model's device.

Under an initialised process group every rank calls the evaluation; :func:`sharded_map` gives each rank an equal share
of the items (longest first), and gathers the results back on every rank in the items' order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def world() -> tuple[int, int]:
    """``(world_size, rank)`` of the initialised process group, or ``(1, 0)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def sharded_map(fn: Callable[[list], list], items: list, lengths: Sequence[int]) -> list:
    """``fn`` over ``items`` sorted longest first, split evenly across ranks (padded with a repeat of the shortest item
    so every rank gets the same count), gathered back on every rank in the original order."""
    order = sorted(range(len(items)), key=lambda i: -lengths[i])
    size, rank = world()
    if size > 1 and order:
        order = order + order[-1:] * (-len(order) % size)
        order = order[rank::size]
    pairs = list(zip(order, fn([items[i] for i in order])))
    if size > 1:
        gathered: list = [None] * size
        torch.distributed.all_gather_object(gathered, pairs)
        pairs = [p for part in gathered for p in part]
    out: list = [None] * len(items)
    for i, value in pairs:
        out[i] = value
    return out


def model_device(model) -> torch.device:
    """The device of ``model`` (its ``device`` attribute, else that of its first parameter)."""
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device
