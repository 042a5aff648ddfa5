"""CE-U: cross-entropy unlearning (Bo Yang, 2025, arXiv 2503.01224).

The forget answer's token is removed from the model's own (detached) next-token distribution, which is renormalised
over the rest of the vocabulary and used as the cross-entropy target: the gradient with respect to the logits is
``p - q``, which lowers the forgotten token's logit by ``p(y_t)`` (bounded, unlike gradient ascent's ``1 - p``-driven
push that grows without bound as ``log p -> -inf``) and keeps the relative probabilities of the other tokens. No
reference model and no retain data. Trainer: :class:`llmpost.trainers.unlearn.UnlearnTrainer` with ``method: ceu``.
"""

from __future__ import annotations

import torch

from llmpost.ops import masked_mean


def skip_first_tokens(mask: torch.Tensor, n: int) -> torch.Tensor:
    """``mask`` with each row's first ``n`` true positions set false (``(B, T)`` boolean)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return mask & (mask.long().cumsum(-1) > n)


def ceu_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""Per-token CE-U terms :math:`-\sum_{v\ne y_t} q_{t,v}\log\pi_\theta(v)`, :math:`q_t = \mathrm{softmax}(\mathrm{sg}[z_t]\text{ with } z_{t,y_t}=-\infty)`; ``(B, T)``."""
    z = logits.float()
    target_logits = z.detach().scatter(-1, targets.unsqueeze(-1), float("-inf"))
    q = torch.softmax(target_logits, dim=-1)
    logp = torch.log_softmax(z, dim=-1)
    return -(q * logp.masked_fill(q == 0, 0.0)).sum(-1)


def ceu_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, ignore_first_n: int = 1) -> torch.Tensor:
    r"""Per-example CE-U loss.

    .. math::
        q_{t,v} = \frac{\mathrm{sg}[\pi_\theta(v|x,y_{<t})]}{1 - \mathrm{sg}[\pi_\theta(y_t|x,y_{<t})]}\;(v \ne y_t),
        \quad q_{t,y_t} = 0, \qquad
        \mathcal{L}_{\mathrm{CE\text{-}U}} = \frac{1}{|y'|}\sum_{t \in y'} \mathrm{CE}\big(q_t, \pi_\theta(\cdot|x,y_{<t})\big)

    (arXiv 2503.01224, Sec. 3: the cross-entropy whose target is the model's own distribution with the true label's
    logit set to ``-inf``.) ``y'`` is the answer without its first ``ignore_first_n`` tokens (the paper's footnote in
    its training settings: the first answer tokens are not unlearned).

    Args:
        logits: ``(B, T, V)`` logits at the positions that predict the answer tokens (already shifted).
        targets: ``(B, T)`` answer tokens (any valid id where masked).
        mask: ``(B, T)`` answer-token mask.
        ignore_first_n: leading answer tokens left out (open-unlearning ``configs/trainer/CEU.yaml``: 1).

    Returns:
        ``(B,)`` per-example losses (0 for an answer no longer than ``ignore_first_n``).

    Deviations from the paper: none. open-unlearning's ``cross_entropy_unlearning_loss`` is the same per token and
    takes one mean over the batch's tokens (``token_reduction: batch``); llmpost averages per example.
    """
    kept = skip_first_tokens(mask, ignore_first_n)
    return masked_mean(ceu_token_loss(logits, targets), kept)
