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


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before the optimizer step, checkpoints are untouched."""


def check_finite_loss(trainer, loss: torch.Tensor, hint: str = "") -> None:
    """Stop training with :class:`NonFiniteLossError` if ``loss`` is not finite on any process.

    Checked on every micro-batch, before backward: under DeepSpeed the weights are updated inside the backward of the
    last micro-batch, so a check at optimizer-step time would come too late. Costs one scalar sync; every rank stops
    together (a rank stopping alone would hang DDP)."""
    ok = torch.isfinite(loss.detach()).float().reshape(1)
    if trainer.accelerator.num_processes > 1:
        ok = trainer.accelerator.gather(ok).min()
    if not bool(ok):
        raise NonFiniteLossError(
            f"non-finite loss ({loss.item()}) at optimizer step {trainer.state.global_step + 1}; training stopped before "
            f"updating the weights. The last good checkpoint in {trainer.args.output_dir!r} (if any) is untouched; "
            f"lower the learning rate or check the data{hint}."
        )
