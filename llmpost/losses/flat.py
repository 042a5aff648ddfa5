"""FLAT: LLM unlearning via loss adjustment with only forget data (Wang et al., ICLR 2025, arXiv 2410.11143).

No retain data and no reference model. Each forget example (question ``x``, forget answer ``y_f``) is paired with a
template answer ``y_e`` (a refusal such as "I don't know"), and the loss is the negated variational lower bound of an
f-divergence between the template answers (the "good" distribution) and the forget answers:

    loss = -( g*(P(x, y_e)) - f*(g*(P(x, y_f))) )

where ``P(x, y) = (1/|y|) sum_t pi(y_t | x, y_<t)`` is the answer's mean per-token *probability* (not log-probability)
and ``(g*, f*)`` are the output activation and convex conjugate of the chosen f-divergence, as in f-GAN (Nowozin et al.
2016, arXiv 1606.00709, Table 2). Minimising it raises ``P(x, y_e)`` and lowers ``P(x, y_f)``:

    divergence         g*(v)                           f*(g*(v))
    kl                 v                               exp(v - 1)
    reverse_kl         -exp(-v)                        -1 + v
    pearson            v                               v^2/4 + v
    js                 log 2 - log(1 + exp(-v))        v + log(1 + exp(-v)) - log 2
    tv                 tanh(v)/2                       tanh(v)/2
    hellinger          1 - exp(-v)                     exp(v) - 1

Deviations from the authors' code (``UCSC-REAL/FLAT``, ``dataloader.py: get_contrastive_loss``, read there):

* **Reverse KL and squared Hellinger.** The authors' code uses ``g*(v) = -exp(v)`` with ``f*(g*(v)) = -1 - v``, and
  ``g*(v) = 1 - exp(v)`` with ``(1 - exp(v)) / exp(v)``. Both activations decrease in ``v``, so minimising that loss
  *lowers* the template answer's probability and *raises* the forget answer's (the gradient with respect to
  ``P(x, y_e)`` is ``+exp(P)`` resp. ``+exp(P)``). llmpost uses f-GAN's activations ``-exp(-v)`` and ``1 - exp(-v)``
  (the conjugates evaluated at them become ``-1 + v`` and ``exp(v) - 1``), which move both probabilities the way the
  method intends. The other four rows are the authors' exactly.
* **Per example by default.** The authors average the token probabilities over the whole padded batch (every
  position of every row, prompt and padding included, as zeros) before applying ``g*`` and ``f*``, so the value
  depends on padding and on how a batch is split into micro-batches. llmpost applies ``g*`` and ``f*`` to each
  example's mean answer-token probability and the trainer averages the per-example losses (batch-split invariant, like
  the other losses). :func:`flat_batch_loss` is the batch-level form (one mean probability per batch, answer tokens
  only) for comparison; the trainer's ``flat_reduction: batch`` selects it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llmpost.utils import StrEnum


class FDivergence(StrEnum):
    KL = "kl"
    REVERSE_KL = "reverse_kl"
    PEARSON = "pearson"
    JS = "js"
    TV = "tv"
    HELLINGER = "hellinger"


def activation_and_conjugate(v: torch.Tensor, divergence: FDivergence | str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g*(v), f*(g*(v)))`` for one f-divergence (table in the module docstring). Raises on an unknown name."""
    div = FDivergence(divergence)
    match div:
        case FDivergence.KL:
            return v, torch.exp(v - 1.0)
        case FDivergence.REVERSE_KL:
            return -torch.exp(-v), v - 1.0
        case FDivergence.PEARSON:
            return v, v * v / 4.0 + v
        case FDivergence.JS:
            softplus = F.softplus(-v)  # log(1 + exp(-v)), stable
            return math.log(2.0) - softplus, v + softplus - math.log(2.0)
        case FDivergence.TV:
            t = torch.tanh(v) / 2.0
            return t, t
        case FDivergence.HELLINGER:
            return 1.0 - torch.exp(-v), torch.exp(v) - 1.0
    raise ValueError(f"unknown f-divergence {divergence!r}; one of {[d.value for d in FDivergence]}")  # pragma: no cover


def flat_loss(template_probs: torch.Tensor, forget_probs: torch.Tensor, divergence: FDivergence | str = "kl") -> torch.Tensor:
    """Per-example FLAT loss ``-(g*(P_e) - f*(g*(P_f)))``.

    Args:
        template_probs: ``(B,)`` mean per-token probability of each example's template answer, ``P(x, y_e)`` in [0, 1].
        forget_probs: ``(B,)`` mean per-token probability of each example's forget answer, ``P(x, y_f)``.
        divergence: an :class:`FDivergence` value (default ``kl``, the variant later papers compare against).

    Returns:
        ``(B,)`` losses; the trainer takes their mean.
    """
    good, _ = activation_and_conjugate(template_probs, divergence)
    _, bad = activation_and_conjugate(forget_probs, divergence)
    return -(good - bad)


def flat_batch_loss(
    template_token_probs: torch.Tensor,
    template_mask: torch.Tensor,
    forget_token_probs: torch.Tensor,
    forget_mask: torch.Tensor,
    divergence: FDivergence | str = "kl",
) -> torch.Tensor:
    """Batch-level FLAT (the authors' reduction, over answer tokens only): a scalar.

    The token probabilities of all template answers in the batch are averaged into one ``P_e``, those of the forget
    answers into one ``P_f``, and the loss is ``-(g*(P_e) - f*(g*(P_f)))``. Shapes: ``(B, T)`` probabilities with
    ``(B, T)`` boolean masks of the answer tokens.
    """
    p_e = (template_token_probs * template_mask).sum() / template_mask.sum().clamp(min=1)
    p_f = (forget_token_probs * forget_mask).sum() / forget_mask.sum().clamp(min=1)
    return flat_loss(p_e.reshape(1), p_f.reshape(1), divergence)[0]
