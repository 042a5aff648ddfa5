"""DPO's sigmoid loss as a pure function (Rafailov et al., NeurIPS 2023, arXiv 2305.18290), shared by IdkDPO and the
preference methods.

Per preference pair with sequence log-probs under the policy (``pi``) and the reference (``ref``):

    h = (log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))
    loss = -log sigmoid(beta * h)

With ``label_smoothing = eps`` (conservative DPO, Mitchell 2023): ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``.
This is TRL's ``DPOTrainer`` ``loss_type="sigmoid"`` (tested equal on the same numbers).

**IdkDPO** (the refusal baseline of TOFU, arXiv 2401.06121 / open-unlearning ``DPO`` with ``TOFU_QA_forget_idk``):
``y_w`` is a refusal ("I don't know"-style template answer), ``y_l`` the forget answer, plus ``alpha`` times the retain
NLL; beta 0.1. Deviations from the paper: none in the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-example DPO sigmoid loss; all inputs ``(B,)`` sequence log-probs (sums over the answer tokens)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    h = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    loss = -F.logsigmoid(beta * h)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-beta * h)
    return loss
