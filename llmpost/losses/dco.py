"""DCO: pass@N confidence-limited fine-tuning ("Rethinking Fine-Tuning when Scaling Test-Time Compute: Limiting
Confidence Improves Mathematical Reasoning", Chen, Raventós et al., arXiv 2502.07154; authors' code:
``allanraventos/refine``, ``refine/training/NCO.py``).

With ``p = pi(y | x)`` the model's probability of the whole target answer, the pass@N objective of one example is
``L_N = -log(1 - (1 - p)^N)`` (the log-probability that at least one of N independent samples is ``y``). Its gradient is
the cross-entropy gradient rescaled by a per-example factor::

    grad L_N = F(N, p) * grad(-log p),      F(N, p) = N p (1 - p)^(N-1) / (1 - (1 - p)^N)

F = 1 for N = 1; F -> 1 as p -> 0 (a hard example is learned as with cross-entropy); F -> 0 as p -> 1 (confidence is
no longer rewarded once one sample in N suffices). DCO trains with the detached weight times a per-example NLL.
"""

from __future__ import annotations

import torch

from llmpost.utils import StrEnum


class DCOReduction(StrEnum):
    """Which per-example NLL the DCO weight multiplies.

    * ``token_mean`` (default, the authors' code: ``custom_loss_function1`` divides the summed NLL by the number of
      answer tokens): ``F * mean_t(-log p_t)``. Each example's gradient is the exact DCO gradient divided by its answer
      length, as with a token-mean cross-entropy.
    * ``token_sum`` (the exact gradient of ``-log(1 - (1-p)^N)``, since ``-log p`` is the summed token NLL):
      ``F * sum_t(-log p_t)``. Long answers then weigh more, as in a sequence-level objective.
    """

    TOKEN_MEAN = "token_mean"
    TOKEN_SUM = "token_sum"


def dco_weight(n: int, p: torch.Tensor) -> torch.Tensor:
    """The DCO factor ``F(N, p) = N p (1-p)^(N-1) / (1 - (1-p)^N)`` (arXiv 2502.07154, the ratio of the gradient of
    ``-log(1 - (1-p)^N)`` to that of ``-log p``), elementwise, in float64.

    Computed as ``N p exp((N-1) log1p(-p)) / -expm1(N log1p(-p))``: ``log1p`` and ``expm1`` keep full relative precision
    where ``N p`` is small (there ``1 - (1-p)^N`` cancels catastrophically in the direct form), so no series is
    needed; tests/test_dco.py checks it against 50-digit ``mpmath`` over p in [1e-12, 1] and N up to 4096 (relative
    error < 1e-12). Deviation from the authors' code: they switch to a Pade approximant below ``N p = 0.1`` (relative
    error up to 1.3e-4 just below the switch at N = 4096, measured against mpmath); this form is exact to float64 rounding everywhere.

    Args:
        n: the pass@N budget, an integer >= 1 (N = 1 gives F = 1: plain cross-entropy).
        p: probabilities in [0, 1], any shape (detached; the weight carries no gradient). p = 0 gives 1 (the limit);
            p = 1 gives 0 for N > 1. A Python float, a NumPy value or array, or a list is read in float64 (never
            through a float32 tensor: ``1 - p`` near p = 1 would lose its digits, e.g. ``dco_weight(16, 0.999999)``
            read in float32 is 1.95e-89 instead of 1.60e-89); a tensor keeps the precision it already has.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"dco N must be an integer >= 1, got {n!r}")
    p = p.detach().double() if isinstance(p, torch.Tensor) else torch.as_tensor(p, dtype=torch.float64)
    if ((p < 0) | (p > 1) | torch.isnan(p)).any():
        raise ValueError("dco_weight: p must lie in [0, 1]")
    if n == 1:
        return torch.ones_like(p)
    log_q = torch.log1p(-p)  # log(1 - p); -inf at p = 1
    numerator = n * p * torch.exp((n - 1) * log_q)
    denominator = -torch.expm1(n * log_q)  # 1 - (1-p)^N
    weight = numerator / denominator
    return torch.where(p == 0, torch.ones_like(p), weight)  # 0/0 at p = 0: the limit is 1


def dco_loss(token_logps: torch.Tensor, mask: torch.Tensor, n: int,
             reduction: DCOReduction | str = DCOReduction.TOKEN_MEAN) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example DCO loss ``F(N, p) * NLL`` and the weights ``F`` (arXiv 2502.07154; the module docstring).

    Args:
        token_logps: ``(B, T)`` log-probabilities of the answer tokens (0 where ``mask`` is false).
        mask: ``(B, T)`` bool, the answer tokens.
        n: pass@N budget (N = 1: plain cross-entropy, weights all 1).
        reduction: :class:`DCOReduction`, the NLL the weight multiplies (default the authors' ``token_mean``).

    Returns:
        ``(loss, weight)``, each ``(B,)``: ``loss`` differentiable through ``token_logps``; ``weight`` detached, float64,
        computed from ``p = exp(sum_t log p_t)`` of the same (detached) log-probs.
    """
    reduction = DCOReduction(reduction)
    mask_f = mask.to(token_logps.dtype)
    seq_logp = (token_logps * mask_f).sum(-1)
    weight = dco_weight(n, seq_logp.detach().double().exp())
    nll = -seq_logp
    if reduction == DCOReduction.TOKEN_MEAN:
        nll = nll / mask_f.sum(-1).clamp(min=1)
    return weight.to(nll.dtype) * nll, weight
