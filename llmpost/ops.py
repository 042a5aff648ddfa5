"""Shared numerics: per-token and per-sequence log-probabilities, masked reductions, KL estimators.

Every function here is model-agnostic except :func:`token_logps`, which runs one forward pass. Conventions:

* ``labels`` follow the Hugging Face convention: same shape as ``input_ids``, ``-100`` where no loss is taken, and the
  model predicts ``labels[:, t + 1]`` from position ``t``. All per-token outputs are therefore *shifted*: shape
  ``(batch, seq_len - 1)``, aligned with ``labels[:, 1:]``.
* Log-probabilities are always returned in float32, whatever the model's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl.trainer.utils import selective_log_softmax

IGNORE_INDEX = -100


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is true, along ``dim``."""
    return (values * mask.to(values.dtype)).sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is true, along ``dim``; 0 for rows with an empty mask (not NaN)."""
    count = mask.to(values.dtype).sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def shift_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(targets, mask)`` of shape ``(B, T-1)``: the next-token targets (``-100`` replaced by 0) and their mask."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return targets.masked_fill(~mask, 0), mask


def logps_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) from full logits ``(B, T, V)``; returns ``(logps, mask)``, each ``(B, T-1)``.

    The log-softmax is taken in float32 (TRL's ``selective_log_softmax``), and masked positions are 0.
    """
    targets, mask = shift_labels(labels)
    logps = selective_log_softmax(logits[:, :-1].float(), targets)
    return logps.masked_fill(~mask, 0.0), mask


def token_logps(model, input_ids, attention_mask, labels, fused: bool = False,
                position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass; per-token log-probabilities of ``labels`` and their mask, each ``(B, T-1)``, float32.

    With ``fused=True`` the model must have been patched by :func:`trl.trainer.utils.add_fused_lm_head`: the LM head is
    applied in tiles to the answer positions only and the ``(B, T, V)`` logits are never materialised.
    ``position_ids`` (optional) are passed to the model: with ``attention_mask=None`` and positions restarting at 0
    inside a row, transformers' attention keeps the packed documents apart.
    """
    extra = {} if position_ids is None else {"position_ids": position_ids}
    if fused:
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True, **extra)
        _, mask = shift_labels(labels)
        return out.log_probs.float().masked_fill(~mask, 0.0), mask
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)
    return logps_from_logits(out.logits, labels)


def sequence_logps(logps: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Per-sequence log-probability: the sum (or, with ``average``, the mean) over the masked tokens. ``(B,)``."""
    return masked_mean(logps, mask) if average else masked_sum(logps, mask)


def kl_per_token(
    policy_logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor, direction: str = "forward"
) -> torch.Tensor:
    """Exact per-token KL over the vocabulary, masked; ``(B, T)``.

    ``direction="forward"`` is KL(ref || policy) (the open-unlearning GradDiff/NPO retain-KL convention:
    ``F.kl_div(log_policy, log_ref, log_target=True)``); ``"reverse"`` is KL(policy || ref).
    """
    logp = F.log_softmax(policy_logits.float(), dim=-1)
    logq = F.log_softmax(ref_logits.float(), dim=-1)
    if direction == "forward":
        kl = (logq.exp() * (logq - logp)).sum(-1)
    elif direction == "reverse":
        kl = (logp.exp() * (logp - logq)).sum(-1)
    else:
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    return kl * mask.to(kl.dtype)
