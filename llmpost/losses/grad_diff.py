"""Gradient ascent and gradient difference, the standard unlearning baselines (e.g. TOFU, arXiv 2401.06121, Sec. 4).

* gradient ascent: maximise the forget answers' NLL, i.e. minimise their log-likelihood;
* gradient difference: gradient ascent on the forget set plus a retain term, either the retain NLL (``retain_loss:
  nll``) or the KL from the reference to the model on retain answers (``retain_loss: kl``).

Trainer: :class:`llmpost.trainers.unlearn.UnlearnTrainer` with ``method: grad_ascent`` or ``grad_diff``.
"""

from __future__ import annotations

import torch

from llmpost.ops import kl_per_token, masked_mean


def gradient_ascent_loss(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Per-example gradient-ascent loss: the mean log-likelihood of the answer tokens, :math:`\frac{1}{|y|}\log\pi_\theta(y|x)`.

    Minimising it is gradient *ascent* on the token-averaged NLL.

    Args:
        token_logps: ``(B, T)`` per-token log-probabilities (0 where masked).
        mask: ``(B, T)`` answer-token mask.

    Returns:
        ``(B,)`` per-example losses.

    Deviations: the token mean is taken per example, then the trainer averages over examples; open-unlearning takes
    one mean over all answer tokens of the batch (HF's ``outputs.loss``). Per-example means make the objective
    independent of how a batch is split into micro-batches and gradient-accumulation steps.
    """
    return masked_mean(token_logps, mask)


def nll_loss(token_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-example NLL, averaged over answer tokens: ``-(1/|y|) log pi_theta(y|x)``; ``(B,)``. Same averaging as above."""
    return -masked_mean(token_logps, mask)


def retain_kl_loss(policy_logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Per-example retain KL, :math:`\frac{1}{|y|}\sum_t \mathrm{KL}\big(\pi_{\mathrm{ref}}(\cdot|x,y_{<t})\,\|\,\pi_\theta(\cdot|x,y_{<t})\big)`.

    The exact KL over the vocabulary at each answer position, averaged over answer tokens, as in open-unlearning's
    GradDiff/NPO ``retain_loss_type: KL``.

    Args:
        policy_logits: ``(B, T, V)`` logits at the positions that predict the answer tokens (already shifted).
        ref_logits: ``(B, T, V)`` the reference's logits at the same positions (no gradient).
        mask: ``(B, T)`` answer-token mask.

    Returns:
        ``(B,)`` per-example KL.

    Deviations: the KL is taken over the answer tokens only, averaged per example (see :func:`gradient_ascent_loss`);
    open-unlearning's ``F.kl_div(..., reduction="batchmean")`` sums the KL over every position of the padded batch
    (prompt and padding included) and divides by the number of rows of the flattened logits.
    """
    return masked_mean(kl_per_token(policy_logits, ref_logits.detach(), mask, direction="forward"), mask)
