"""WGA: weighted gradient ascent (Wang, Zhou, Zhou, Shin, Han, Weinberger, ICLR 2025, "Rethinking LLM Unlearning
Objectives: A Gradient Perspective and Go Beyond", arXiv 2502.19301).

Gradient ascent on the forget answers with each token's log-likelihood weighted by the model's own (detached)
probability of that token raised to ``beta``: confidently memorised tokens keep a full push, tokens that are already
unlikely stop being pushed, which bounds the "inverse confidence" factor that makes plain gradient ascent diverge.
Trainer: :class:`llmpost.trainers.unlearn.UnlearnTrainer` with ``method: wga`` (plus ``alpha`` times the retain NLL,
open-unlearning's ``WGA`` being a ``GradDiff``).
"""

from __future__ import annotations

import torch

from llmpost.ops import masked_mean


def wga_token_loss(token_logps: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    r"""Per-token WGA terms :math:`w_t \log\pi_\theta(y_t|x,y_{<t})` with :math:`w_t = \mathrm{sg}[\pi_\theta(y_t|\cdot)]^{\beta}`.

    ``token_logps``: ``(B, T)`` log-probabilities of the answer tokens; returns ``(B, T)`` (reduce with the mask).
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    weight = torch.exp(beta * token_logps.detach())
    return weight * token_logps


def wga_loss(token_logps: torch.Tensor, mask: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    r"""Per-example WGA forget loss.

    .. math::
        \mathcal{L}_{\mathrm{WGA}} = \frac{1}{|y|}\sum_{t} \mathrm{sg}\big[\pi_\theta(y_t|x,y_{<t})\big]^{\beta}\,
                                     \log\pi_\theta(y_t|x,y_{<t})

    (arXiv 2502.19301, Sec. 5, "weighted GA": the GA objective with the token-wise weight ``p^beta``, no gradient
    through the weight.) Minimising it lowers the forget tokens' likelihood; ``beta = 0`` is gradient ascent
    (:func:`llmpost.losses.grad_diff.gradient_ascent_loss`), larger ``beta`` stops earlier on tokens already forgotten.
    Its gradient with respect to ``log p_t`` is ``p_t^beta / |y|``.

    Args:
        token_logps: ``(B, T)`` per-token log-probabilities (0 where masked).
        mask: ``(B, T)`` answer-token mask.
        beta: weight exponent (open-unlearning ``configs/trainer/WGA.yaml``: 1.0, the paper's choice per its README).

    Returns:
        ``(B,)`` per-example losses.

    Deviations from the paper: none in the per-token terms (equal to open-unlearning's ``compute_wga_loss`` and the
    authors' ``tmlr-group/G-effect`` ``dataloader.py``, ``loss_type: wga``: ``-(exp(-ce)^beta * ce)`` with
    ``ce = -log p``; the authors' ``wga`` has no retain term, ``alpha: 0`` here, open-unlearning adds the retain NLL). The tokens are averaged per example, then over examples;
    open-unlearning takes one mean over every answer token of the batch (the trainer's ``token_reduction: batch``).
    """
    return masked_mean(wga_token_loss(token_logps, beta), mask)
