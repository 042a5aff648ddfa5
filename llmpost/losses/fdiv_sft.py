r"""SFT through the implicit reward: f-divergence SFT losses with a frozen reference (Wang, Cheng, Peng, Bao, Li, Guo,
Li, Zeng, Zhou, Qiu, "Implicit Reward as the Bridge: A Unified View of SFT and DPO Connections", NeurIPS 2025,
arXiv 2507.00018).

The paper reads SFT as implicit-reward learning, with the implicit reward ``r = beta log(pi / pi_ref)`` of DPO: per
state ``s`` (a prompt plus the answer's prefix) the data's next-token distribution ``q(.|s)`` is matched to the policy
through the variational form of an f-divergence ``D_f(q || pi_ref) = sup_T E_q[T] - E_{pi_ref}[f*(T)]``, with the
critic ``T`` parametrised by the policy ratio ``u = pi(.|s) / pi_ref(.|s)`` as ``T = f'(u)``. The per-token loss for
a data token ``a*`` is then

    loss(a*) = -f'(u(a*)) + sum_a pi_ref(a|s) f*(f'(u(a)))          (up to a constant)

and ``E_{a*~q}[loss]`` is minimised at ``pi = q`` wherever the supremum is attained (``f'(u) = f'(q/pi_ref)``). For
``f(u) = u log u`` (KL(q || pi_ref)) the second term is ``sum_a pi(a|s) = 1``, a constant: the loss is plain
cross-entropy and its KL term does not constrain the policy -- the paper's observation about SFT. Other ``f`` keep a
policy-dependent term over the whole vocabulary. Forms used (``u = pi/pi_ref``; all ratios are exponentials of
differences of float32 log-softmaxes; nothing is clamped):

    ce          -log pi(a*|s)                                                    f(u) = u log u (constant dropped)
    pearson     -2 pi(a*|s)/pi_ref(a*|s) + sum_a pi(a|s)^2 / pi_ref(a|s)         f(u) = (u - 1)^2        (+1 dropped)
    hellinger   sqrt(pi_ref(a*|s)/pi(a*|s)) + sum_a sqrt(pi(a|s) pi_ref(a|s))    f(u) = (sqrt(u) - 1)^2  (-2 dropped)
    forward_kl  pi_ref(a*|s)/pi(a*|s) - KL(pi_ref(.|s) || pi(.|s))               f(u) = -log u           (-1 dropped)

Which form and why. The paper's own equations could not be retrieved here (only its abstract); these are the
variational forms of the issue, each re-derived from the recipe above (the table's ``f``) and checked numerically:
``tests/test_fdiv_sft.py`` minimises ``E_{a*~q}[loss]`` over a 5-token policy and recovers ``q`` for every form.
In expectation over ``a* ~ q``, pearson is ``sum_a (pi - q)^2/pi_ref - sum_a q^2/pi_ref`` (a weighted squared
distance, minimised at ``pi = q``); hellinger and forward_kl separate per token into ``sqrt(pi_ref)(q/sqrt(pi) +
sqrt(pi))`` and ``pi_ref(q/pi + log pi)``, each minimised at ``pi(a) = q(a)`` token by token, so the minimiser over
the simplex is ``q`` with no normalisation constraint needed.

Caveat, ``forward_kl``: its divergence is ``D_f(q || pi_ref) = KL(pi_ref || q)``, infinite when ``q`` misses tokens
that ``pi_ref`` allows. Token-level SFT data is one target per prefix (``q`` one-hot), and there the loss is **not
bounded below**: ``-KL(pi_ref || pi)`` goes to ``-inf`` as the non-target probabilities go to 0, so minimising it
drives the policy *away* from the reference without limit (the infimum is approached as ``pi -> q``, never attained).
Pearson and Hellinger stay bounded (infima ``-1/pi_ref(a*)`` and ``2 sqrt(pi_ref(a*))``, approached as ``pi -> q``
one-hot). The name ``forward_kl`` refers to the ``KL(pi_ref || pi)`` term it contains (``llmpost.ops.kl_per_token``'s "forward").

Deviations from the paper: possibly the forms themselves (above); no ``beta`` in the losses (the ratio ``u`` does not
depend on it); the losses need the full ``(B, T, V)`` logits of both models (no fused LM head).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from llmpost.ops import masked_mean, shift_labels
from llmpost.utils import StrEnum, parse_enum

__all__ = ["SFTDivergence", "fdiv_sft_loss_from_labels", "fdiv_sft_token_loss", "implicit_rewards",
           "sequence_token_mean"]


class SFTDivergence(StrEnum):
    """The per-token SFT loss: ``ce``, ``pearson``, ``hellinger`` (squared Hellinger) or ``forward_kl``."""

    CE = "ce"
    PEARSON = "pearson"
    HELLINGER = "hellinger"
    FORWARD_KL = "forward_kl"


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """float32, or float64 when given (gradient checks); never lower."""
    return x if x.dtype == torch.float64 else x.float()


def _gather(logps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def fdiv_sft_token_loss(
    policy_logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    targets: torch.Tensor,
    mask: torch.Tensor,
    divergence: SFTDivergence | str = SFTDivergence.CE,
) -> torch.Tensor:
    """Per-token loss ``(B, T)`` in float32 (float64 for float64 logits), 0 where ``mask`` is false (formulas in the module docstring).

    Inputs are *aligned*: ``policy_logits[:, t]`` predicts ``targets[:, t]``. With Hugging Face labels, pass
    ``logits[:, :-1]`` and ``llmpost.ops.shift_labels(labels)`` (or use :func:`fdiv_sft_loss_from_labels`).

    Args:
        policy_logits: ``(B, T, V)`` the trained model's logits.
        ref_logits: ``(B, T, V)`` the frozen reference's logits (detached here); may be None for ``ce``.
        targets: ``(B, T)`` target token ids (values at masked positions are ignored, e.g. -100).
        mask: ``(B, T)`` true where a loss is taken.
        divergence: an :class:`SFTDivergence` value.

    Raises:
        ValueError: unknown divergence, missing reference logits, or mismatched shapes.
    """
    div = parse_enum("divergence", divergence, SFTDivergence)
    if policy_logits.dim() != 3 or targets.shape != policy_logits.shape[:2] or mask.shape != targets.shape:
        raise ValueError(f"expected logits (B, T, V) with targets and mask (B, T); got logits "
                         f"{tuple(policy_logits.shape)}, targets {tuple(targets.shape)}, mask {tuple(mask.shape)}")
    mask = mask.bool()
    targets = targets.masked_fill(~mask, 0).long()
    logp = F.log_softmax(_upcast(policy_logits), dim=-1)
    logp_t = _gather(logp, targets)
    if div is SFTDivergence.CE:
        loss = -logp_t
    else:
        if ref_logits is None:
            raise ValueError(f"divergence {div.value!r} needs the reference logits")
        if ref_logits.shape != policy_logits.shape:
            raise ValueError(f"ref_logits {tuple(ref_logits.shape)} must have the policy's shape "
                             f"{tuple(policy_logits.shape)}")
        logr = F.log_softmax(_upcast(ref_logits.detach()), dim=-1)
        log_u_t = logp_t - _gather(logr, targets)  # log pi(a*|s) - log pi_ref(a*|s)
        match div:
            case SFTDivergence.PEARSON:
                loss = -2.0 * log_u_t.exp() + torch.logsumexp(2.0 * logp - logr, dim=-1).exp()
            case SFTDivergence.HELLINGER:
                loss = (-0.5 * log_u_t).exp() + torch.logsumexp(0.5 * (logp + logr), dim=-1).exp()
            case SFTDivergence.FORWARD_KL:
                loss = (-log_u_t).exp() - (logr.exp() * (logr - logp)).sum(-1)
            case _:  # pragma: no cover - every member is handled above
                raise ValueError(f"unknown divergence {div!r}")
    return torch.where(mask, loss, torch.zeros_like(loss))


def fdiv_sft_loss_from_labels(
    policy_logits: torch.Tensor,
    ref_logits: torch.Tensor | None,
    labels: torch.Tensor,
    divergence: SFTDivergence | str = SFTDivergence.CE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fdiv_sft_token_loss` from unshifted logits ``(B, T, V)`` and Hugging Face ``labels`` ``(B, T)`` (-100
    where no loss is taken); returns ``(loss, mask)``, each ``(B, T-1)``, aligned with ``labels[:, 1:]``."""
    targets, mask = shift_labels(labels)
    ref = None if ref_logits is None else ref_logits[:, :-1]
    return fdiv_sft_token_loss(policy_logits[:, :-1], ref, targets, mask, divergence), mask


def sequence_token_mean(token_loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence mean of a per-token loss over its masked tokens, ``(B,)``; 0 for a sequence with no token."""
    return masked_mean(token_loss, mask.bool())


def implicit_rewards(
    policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The implicit reward ``beta (log pi - log pi_ref)`` of the target tokens, for logging (no gradient).

    Returns ``(per_token (B, T), per_sequence (B,))``: per token, 0 where ``mask`` is false; per sequence, the sum over
    the masked tokens, i.e. ``beta (log pi(y|x) - log pi_ref(y|x))`` as TRL's DPO logs ``rewards/chosen``.
    """
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not beta > 0:
        raise ValueError(f"beta must be a number > 0, got beta={beta!r}")
    mask = mask.bool()
    diff = _upcast(policy_token_logps.detach()) - _upcast(ref_token_logps.detach())
    per_token = torch.where(mask, beta * diff, torch.zeros_like(diff))
    return per_token, per_token.sum(-1)
