"""DCO with a sampled success rate: the loss of DCO's chain-of-thought run (arXiv 2502.07154; authors' code
``allanraventos/refine``, ``refine/training/train.py``, ``train_on_a_batch`` under ``filter_strategy == "cot"``).

With a worked solution as the target, the probability of the whole target is no measure of whether the model solves
the problem (many solutions are right). The authors' CoT run therefore replaces ``p`` by ``p^``, the fraction of sampled
solutions that grade correct, and trains the token-mean cross-entropy of the reference solution times ``F(N, p^)``::

    per_sample_losses = custom_loss_function(outputs.logits, batch["labels"], 1)  # token-mean CE
    fac_sample = fac(p, args.N)                                                    # F(N, p^), no gradient
    per_sample_losses = per_sample_losses * fac_sample

:func:`llmpost.losses.dco.dco_loss` is the teacher-forced form (``p`` from the same log-probs); this is the same product
with ``p^`` given.
"""

from __future__ import annotations

import torch

from llmpost.losses.dco import DCOReduction, dco_weight


def dco_sampled_loss(token_logps: torch.Tensor, mask: torch.Tensor, n: int, p_hat: torch.Tensor,
                     reduction: DCOReduction | str = DCOReduction.TOKEN_MEAN) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-example ``F(N, p^) * NLL`` and the weights ``F(N, p^)``.

    .. math:: \mathcal{L}_i = F(N, \hat p_i)\,\mathrm{NLL}_i,\qquad F(N, p) = \frac{N p (1-p)^{N-1}}{1 - (1-p)^N}

    (arXiv 2502.07154; ``F`` is :func:`llmpost.losses.dco.dco_weight`, ``F(N, 0) = 1``, ``F(1, p) = 1``.)

    Args:
        token_logps: ``(B, T)`` log-probabilities of the target tokens (0 where ``mask`` is false).
        mask: ``(B, T)`` bool, the target tokens.
        n: the pass@N budget of the weight (N = 1: plain cross-entropy, the authors' README command).
        p_hat: ``(B,)`` success rates in [0, 1] (the fraction of sampled solutions graded correct), no gradient.
        reduction: the NLL the weight multiplies: ``token_mean`` (the authors' ``custom_loss_function1``) or
            ``token_sum``.

    Returns:
        ``(loss, weight)``, each ``(B,)``; ``loss`` differentiable through ``token_logps``, ``weight`` float64.

    Deviations from the authors' code: ``F`` is exact in float64 (their Pade branch below ``N p = 0.1`` is not; it
    equals 1 at ``p = 0`` either way).
    """
    reduction = DCOReduction(reduction)
    if p_hat.shape != token_logps.shape[:1]:
        raise ValueError(f"p_hat must have shape {tuple(token_logps.shape[:1])}, got {tuple(p_hat.shape)}")
    weight = dco_weight(n, p_hat.detach().to(torch.float64))
    mask_f = mask.to(token_logps.dtype)
    nll = -(token_logps * mask_f).sum(-1)
    if reduction == DCOReduction.TOKEN_MEAN:
        nll = nll / mask_f.sum(-1).clamp(min=1)
    return weight.to(nll.dtype) * nll, weight
