"""SatImp: saturation x importance reweighted gradient ascent (Yang, Wang, Huang, Liu, Zhang, Han, ICML 2025,
"Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning", arXiv 2505.11953).

Each forget token's log-likelihood is weighted by the product of a *saturation* weight ``p^beta1`` (tokens the model
still predicts confidently are not yet unlearned: push them) and an *importance* weight ``(1 - p)^beta2`` (tokens of
low likelihood carry the information that is most influential for the loss), both detached. Trainer:
:class:`llmpost.trainers.unlearn.UnlearnTrainer` with ``method: satimp`` (plus ``alpha`` times the retain NLL).
"""

from __future__ import annotations

import torch

from llmpost.ops import masked_mean


def satimp_token_loss(token_logps: torch.Tensor, beta1: float = 5.0, beta2: float = 1.0) -> torch.Tensor:
    r"""Per-token SatImp terms :math:`\mathrm{sg}[p_t^{\beta_1}(1-p_t)^{\beta_2}]\,\log p_t`; ``(B, T) -> (B, T)``."""
    if beta1 < 0 or beta2 < 0:
        raise ValueError(f"beta1 and beta2 must be >= 0, got {beta1}, {beta2}")
    logp = token_logps.detach()
    weight = torch.exp(beta1 * logp) * (-torch.expm1(logp)).clamp(min=0) ** beta2
    return weight * token_logps


def satimp_loss(token_logps: torch.Tensor, mask: torch.Tensor, beta1: float = 5.0, beta2: float = 1.0) -> torch.Tensor:
    r"""Per-example SatImp forget loss.

    .. math::
        \mathcal{L}_{\mathrm{SatImp}} = \frac{1}{|y|}\sum_t \mathrm{sg}\big[p_t^{\beta_1}(1-p_t)^{\beta_2}\big]\log p_t,
        \qquad p_t = \pi_\theta(y_t|x,y_{<t})

    (arXiv 2505.11953, Sec. 5, SatImp: the saturation weight ``p^beta1`` times the importance weight ``(1-p)^beta2``
    on the GA objective.) ``beta2 = 0`` gives WGA with ``beta = beta1``
    (:func:`llmpost.losses.wga.wga_loss`); ``beta1 = beta2 = 0`` gradient ascent. ``1 - p`` is computed as
    ``-expm1(log p)`` (exact for ``p`` near 1).

    Args:
        token_logps: ``(B, T)`` per-token log-probabilities (0 where masked).
        mask: ``(B, T)`` answer-token mask.
        beta1: saturation exponent (open-unlearning ``configs/trainer/SatImp.yaml``: 5.0, the paper's).
        beta2: importance exponent (same file: 1.0).

    Returns:
        ``(B,)`` per-example losses.

    Deviations from the paper: none in the per-token terms (equal to open-unlearning's ``compute_satimp_loss`` and to
    the authors' ``tmlr-group/SatImp`` ``dataloader/dataloader_sat.py``, ``loss_type: satimp``).
    Tokens are averaged per example, then over examples; open-unlearning takes one mean over every answer token of
    the batch (the trainer's ``token_reduction: batch``).
    """
    return masked_mean(satimp_token_loss(token_logps, beta1, beta2), mask)
