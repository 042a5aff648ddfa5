"""Per-step metrics of the llmpost trainers: collected on device during ``compute_loss``, gathered once per log."""

from __future__ import annotations

import torch


def flush_metrics(accelerator, metrics: dict[str, list[torch.Tensor]], logs: dict[str, float]) -> None:
    """Add the per-step metrics collected since the last log (on-device scalars, one list per name) to ``logs`` as
    their mean over steps and processes, and clear them; only on a training log (one holding ``"loss"``).

    Trainers call it from ``log``, which runs on every process at the same steps, so the gather cannot deadlock.
    """
    if metrics and "loss" in logs:
        local = torch.stack([torch.stack(vals).mean() for vals in metrics.values()])
        means = accelerator.gather(local[None]).mean(0).tolist()
        logs.update(dict(zip(metrics, means)))
        metrics.clear()
