"""Dynamic loss-based sample reweighting for LLM pretraining (Sow, Woisetschläger, Gharibi, Jacobsen, Fehling,
Liang, Heinz, Shah, "Dynamic Loss-Based Sample Reweighting for Improved Large Language Model Pretraining", ICLR 2025,
arXiv 2502.06733; authors' code ``sowmaster/Sample-Level-Loss-Reweighting-ICLR-2025``, ``src/trainer.py``, and the
``reweighted-train`` branch of ``foundation-model-stack/fms-fsdp``).

Per training micro-step, over the sequences of the *global* micro-batch (every data-parallel rank's):

1. ``l_i``: the token-mean cross-entropy of sequence i, detached for the weights;
2. min-max normalisation to ``[-delta, delta]`` (the authors' ``h_func`` with the batch's own minimum and maximum):

       h_i = 2 delta (l_i - l_min) / max(l_max - l_min, 1e-6) - delta                                          (1)

3. a strategy ``f(h)`` (the authors' ``f_func_*``):

       linupper:  min(h + delta, delta)        (the paper's best: low-loss samples down-weighted, high ones capped)
       upper:     0.5 h + 0.5 delta            (the authors' f_func_upper: weights rise with the loss, uncapped;
                                                under the softmax only 0.5 h / r matters)
       quadratic: 1 - h^2 / delta^2            (the authors' "mid": favours medium losses)
       extremes:  |h|                          (favours the lowest and the highest losses)
       uniform:   0                            (the baseline: plain mean; the authors' README snippet returns h here,
                                                which is not uniform -- llmpost's uniform is the true mean)

4. ``w = softmax(f / r)`` over the global micro-batch (the authors' ``g_func = exp(.../r)``, normalised), with ``r``
   the temperature (``kl_reg`` in their code: the weight of the KL term to the uniform distribution in the
   objective whose closed-form maximiser this softmax is); ``w`` sums to 1 and ``r -> inf`` gives uniform weights;
5. loss ``= sum_i w_i l_i`` over the global micro-batch. Each rank computes the sum over its own sequences and
   multiplies it by the world size, so that data-parallel gradient averaging yields the global weighted sum (as the
   fms-fsdp code does).

Before ``warmup_steps`` optimizer steps the weights are uniform (the authors' ``burnout_steps``).
"""

from __future__ import annotations

import math
import numbers

import torch

from llmpost.utils import StrEnum

__all__ = ["ReweightStrategy", "normalize_losses", "reweighted_loss", "sample_weights", "strategy_scores",
           "weight_stat_tensors", "weight_stats"]

DENOMINATOR_FLOOR = 1e-6  # the authors' max(l_max - l_min, 1e-6)


class ReweightStrategy(StrEnum):
    """``f`` of eq. (1)'s normalised losses: ``linupper``, ``upper``, ``quadratic``, ``extremes`` or ``uniform``."""

    LINUPPER = "linupper"
    UPPER = "upper"
    QUADRATIC = "quadratic"
    EXTREMES = "extremes"
    UNIFORM = "uniform"


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {name}={value!r}")
    return float(value)


def _strategy(strategy) -> ReweightStrategy:
    try:
        return ReweightStrategy(strategy)
    except ValueError:
        raise ValueError(f"unknown reweighting strategy {strategy!r}; one of {[s.value for s in ReweightStrategy]}") from None


def normalize_losses(losses: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """Eq. (1): ``2 delta (l - min l) / max(max l - min l, 1e-6) - delta``, in ``[-delta, delta]``. All-equal losses
    (and a single sample) give ``-delta`` everywhere."""
    delta = _positive("delta", delta)
    if losses.dim() != 1 or losses.numel() == 0:
        raise ValueError(f"losses must be a non-empty 1-D tensor, got shape {tuple(losses.shape)}")
    lo, hi = losses.min(), losses.max()
    return 2.0 * delta * (losses - lo) / torch.clamp(hi - lo, min=DENOMINATOR_FLOOR) - delta


def strategy_scores(h: torch.Tensor, strategy: ReweightStrategy | str, delta: float = 1.0) -> torch.Tensor:
    """``f(h)`` of the module docstring's step 3."""
    delta = _positive("delta", delta)
    match _strategy(strategy):
        case ReweightStrategy.LINUPPER:
            return torch.clamp(h + delta, max=delta)
        case ReweightStrategy.UPPER:
            return 0.5 * h + 0.5 * delta
        case ReweightStrategy.QUADRATIC:
            return 1.0 - h.square() / delta**2
        case ReweightStrategy.EXTREMES:
            return h.abs()
        case ReweightStrategy.UNIFORM:
            return torch.zeros_like(h)
    raise ValueError(f"unknown reweighting strategy {strategy!r}")  # pragma: no cover


def sample_weights(losses: torch.Tensor, strategy: ReweightStrategy | str, temperature: float,
                   delta: float = 1.0) -> torch.Tensor:
    """``softmax(f(h(losses)) / temperature)``: weights summing to 1 over the given (global) micro-batch, computed in
    float64 from the detached losses and returned in the losses' dtype. ``temperature`` (r) and ``delta`` must be
    finite and > 0; ``uniform`` returns ``1/B`` exactly."""
    strategy = _strategy(strategy)
    r = _positive("temperature", temperature)
    losses = losses.detach()
    if not torch.isfinite(losses).all():
        raise ValueError("losses must be finite to be reweighted")
    h = normalize_losses(losses.double(), delta)
    if strategy == ReweightStrategy.UNIFORM:
        return torch.full_like(losses, 1.0 / losses.numel())
    return torch.softmax(strategy_scores(h, strategy, delta) / r, dim=0).to(losses.dtype)


def reweighted_loss(local_losses: torch.Tensor, local_weights: torch.Tensor, world_size: int = 1) -> torch.Tensor:
    """``world_size * sum_i w_i l_i`` over this rank's sequences (``local_losses`` carry the gradient): averaged by
    data-parallel gradient reduction over ``world_size`` ranks, the gradient is that of the global weighted sum."""
    if local_losses.shape != local_weights.shape:
        raise ValueError(f"losses and weights differ in shape: {tuple(local_losses.shape)} vs {tuple(local_weights.shape)}")
    return world_size * (local_weights.detach().to(local_losses.dtype) * local_losses).sum()


def weight_stat_tensors(weights: torch.Tensor, losses: torch.Tensor) -> dict[str, torch.Tensor]:
    """What to log per step, as 0-d tensors on the weights' device (no host synchronisation): the largest and
    smallest weight times B (1 = uniform), the effective sample size ``1 / sum w^2`` as a fraction of B, and the
    10/50/90% quantiles of the per-sequence losses."""
    w, n = weights.detach().double(), weights.numel()
    levels = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64, device=w.device)
    q = torch.quantile(losses.detach().double(), levels)
    return {"reweight/max_weight_x_b": w.max() * n, "reweight/min_weight_x_b": w.min() * n,
            "reweight/ess_fraction": 1.0 / w.square().sum() / n, "reweight/loss_q10": q[0],
            "reweight/loss_q50": q[1], "reweight/loss_q90": q[2]}  # fmt: skip


def weight_stats(weights: torch.Tensor, losses: torch.Tensor) -> dict[str, float]:
    """:func:`weight_stat_tensors` as Python floats."""
    return {k: v.item() for k, v in weight_stat_tensors(weights, losses).items()}
