"""UNDIAL: self-distillation with adjusted logits (Dong, Lin, Belkin, Huerta, Vulić, NAACL 2025, arXiv 2402.10052).

Instead of maximising a loss, the model is *distilled* towards a fixed target: the frozen original model's
next-token distribution with the logit of the token to be forgotten lowered by a strength ``gamma``. The target is
bounded and stays close to the original distribution on every other token, so training converges instead of
diverging. Trainer: :class:`llmpost.trainers.unlearn.UnlearnTrainer` with ``method: undial`` (the reference's
full-vocabulary logits: ``reference: model`` or ``peft_base``; open-unlearning's retain weight is 0 by default).
"""

from __future__ import annotations

import torch

from llmpost.ops import masked_mean


def adjusted_target(ref_logits: torch.Tensor, targets: torch.Tensor, strength: float) -> torch.Tensor:
    r"""The UNDIAL target distribution :math:`\mathrm{softmax}(z_{\mathrm{ref}} - \gamma\,e_{y_t})` (float32, ``(B, T, V)``)."""
    z = ref_logits.detach().float()
    index = targets.unsqueeze(-1)
    z = z.scatter(-1, index, z.gather(-1, index) - strength)
    return torch.softmax(z, dim=-1)


def undial_token_loss(logits: torch.Tensor, ref_logits: torch.Tensor, targets: torch.Tensor, strength: float = 10.0) -> torch.Tensor:
    r"""Per-token cross-entropy from the adjusted target to the model, ``(B, T)``: :math:`-\sum_v q_{t,v}\log\pi_\theta(v|x,y_{<t})`."""
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    q = adjusted_target(ref_logits, targets, strength)
    return -(q * torch.log_softmax(logits.float(), dim=-1)).sum(-1)


def undial_loss(logits: torch.Tensor, ref_logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                strength: float = 10.0) -> torch.Tensor:
    r"""Per-example UNDIAL loss.

    .. math::
        q_t = \mathrm{softmax}\big(z_{\mathrm{ref}}(x, y_{<t}) - \gamma\,\mathbb{1}[y_t]\big), \qquad
        \mathcal{L}_{\mathrm{UNDIAL}} = \frac{1}{|y|}\sum_t \mathrm{CE}\big(q_t, \pi_\theta(\cdot|x,y_{<t})\big)

    (arXiv 2402.10052, Sec. 3: the teacher's logits with the one-hot of the forgotten token scaled by ``gamma``
    subtracted, then self-distillation.) The cross-entropy equals ``KL(q_t || pi_theta)`` plus the target's entropy,
    a constant: the gradients are the KL's. With ``gamma = 0`` and ``pi_theta = pi_ref`` the gradient is zero.

    Args:
        logits: ``(B, T, V)`` model logits at the positions that predict the answer tokens (already shifted).
        ref_logits: ``(B, T, V)`` the frozen original model's logits at the same positions (no gradient).
        targets: ``(B, T)`` the answer tokens ``y_t`` (any valid id where masked).
        mask: ``(B, T)`` answer-token mask.
        strength: ``gamma``, how far the forgotten token's logit is lowered (open-unlearning
            ``configs/trainer/UNDIAL.yaml`` ``beta: 10.0``; its README: typically 3, 10 or 30).

    Returns:
        ``(B,)`` per-example losses.

    Deviations from the paper: none on the answer tokens. open-unlearning's ``compute_undial_loss`` averages the
    cross-entropy over *every* position of the padded batch (prompt and padding too), and at positions whose label is
    ``-100`` it lowers the logit of token id ``V - 100`` (the label used as an index); llmpost distils the answer
    tokens only, averaged per example (``token_reduction: batch``: one mean over the batch's answer tokens).
    """
    return masked_mean(undial_token_loss(logits, ref_logits, targets, strength), mask)
