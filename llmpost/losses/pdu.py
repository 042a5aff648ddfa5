"""PDU: primal-dual unlearning with a logit-margin flattening loss (Entesari, Hatami, Khaziev, Ramakrishna, Fazlyab,
2025, "Constrained Entropic Unlearning: A Primal-Dual Framework for Large Language Models", arXiv 2506.05314).

Unlearning as a constrained problem,

    min_theta  L_fgt(theta)   subject to   L_rtn(theta) <= eps,

with the forget loss the logit-margin flattening loss (below; zero exactly when every logit at a forget position is
equal, i.e. the next-token distribution is uniform; no softmax, so its gradient does not vanish near uniformity) and
the retain loss the retain NLL. It is solved by gradient descent on the Lagrangian
``gamma * L_fgt + lambda * (L_rtn - eps)`` in the weights and projected gradient ascent in the dual variable
``lambda >= 0`` (:func:`dual_update`). Trainer: :class:`llmpost.trainers.unlearn.UnlearnTrainer` with ``method: pdu``,
which keeps ``lambda`` in its state (saved with each checkpoint, restored on resume).
"""

from __future__ import annotations

import torch

from llmpost.ops import masked_mean


def logit_margin_token_loss(logits: torch.Tensor) -> torch.Tensor:
    r"""Per-position :math:`(\max_v z_v - \frac{1}{V}\sum_v z_v)^2` of ``(B, T, V)`` logits, ``(B, T)`` (float32)."""
    z = logits.float()
    return (z.amax(-1) - z.mean(-1)).square()


def pdu_forget_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Per-example logit-margin flattening loss.

    .. math::
        \mathcal{L}^{\mathrm{LM}}_{\mathrm{fgt}} = \frac{1}{|y|}\sum_t \Big(\max_v z_{t,v} - \frac{1}{V}\sum_v z_{t,v}\Big)^2

    with ``z_t`` the logits that predict answer token ``t`` (arXiv 2506.05314, Sec. 3, the logit-margin flattening
    loss; the form of open-unlearning's ``PDU.compute_loss``).

    Args:
        logits: ``(B, T, V)`` logits at the positions that predict the answer tokens (already shifted).
        mask: ``(B, T)`` answer-token mask.

    Returns:
        ``(B,)`` per-example losses.

    Deviations from the paper: none intended. open-unlearning applies the mask of the *unshifted* labels to the
    *unshifted* logits, so it flattens the predictions made at the answer tokens (the last one predicting past the
    answer) instead of those that predict them (the trainer's ``pdu_label_positions: true`` reproduces that), and it
    takes one mean over the batch's tokens (``token_reduction: batch``); llmpost averages per example.
    """
    return masked_mean(logit_margin_token_loss(logits), mask)


def dual_update(lam: float, retain_loss: float, eps: float, step_size: float) -> float:
    r"""One projected dual-ascent step, :math:`\lambda \leftarrow \max\big(0, \lambda + \eta\,(\mathcal{L}_{\mathrm{rtn}} - \varepsilon)\big)`.

    The constraint violation ``L_rtn - eps`` raises ``lambda`` (more weight on the retain loss); slack lowers it, never
    below 0 (arXiv 2506.05314, Sec. 4, the primal-dual algorithm; open-unlearning ``PDU.final_loss_value``).
    """
    if step_size < 0:
        raise ValueError(f"step_size must be >= 0, got {step_size}")
    return max(0.0, float(lam) + float(step_size) * (float(retain_loss) - float(eps)))
