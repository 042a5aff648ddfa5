r"""SRPO: Self-Improving Robust Preference Optimization (Choi, Ahmadian, Geist, Pietquin, Gheshlaghi Azar; ICLR 2025,
arXiv 2406.01660) as a pure loss.

One model plays two roles: the *generative* policy ``pi(y|x)`` and the *self-improvement* policy ``pi(y'|x, y)``,
which rewrites a given completion ``y`` into a better one ``y'`` (the same network, prompted with the prompt and the
completion to improve). With sequence log-ratios against the frozen reference (the model before training, prompted
the same way)

    h(y)      = log pi(y|x)      - log pi_ref(y|x)
    h+(y'|y)  = log pi(y'|x, y)  - log pi_ref(y'|x, y)

the per-pair loss for a preference pair ``y_w > y_l`` is

    L_self = (1/2 - beta [h+(y_w|y_l) - h+(y_l|y_l)])^2 + (1/2 - beta [h+(y_w|y_w) - h+(y_l|y_w)])^2
    L_gen  = (beta [h(y_w) - h(y_l) + h+(y_w|y_l) - h+(y_l|y_w)] - 1)^2
    L      = alpha L_self + (1 - alpha) L_gen

so ``alpha = 1`` trains only the self-improvement policy and ``alpha = 0`` only the generative one.

Where it comes from (derivation, checked by ``tests/test_srpo_loss.py`` at the closed-form solution). The min-max
objective, as this module reads the paper, is
``min_pi max_pi+ E_{y~pi}[ E_{y'~pi+(.|y)} P(y' > y) - beta KL(pi+(.|y) || pi_ref(.|y)) ] + beta KL(pi || pi_ref)``.
Its inner maximiser is ``pi+*(y'|y) = pi_ref(y'|y) exp(P(y' > y)/beta) / Z(y)`` and the outer minimiser is
``pi*(y) proportional to pi_ref(y) / Z(y)``. Hence, with ``p = P(y_w > y_l)``,

    beta [h+(y_w|y_l) - h+(y_l|y_l)]                       = P(y_w > y_l) - P(y_l > y_l) = p - 1/2
    beta [h+(y_w|y_w) - h+(y_l|y_w)]                       = P(y_w > y_w) - P(y_l > y_w) = p - 1/2
    beta [h(y_w) - h(y_l) + h+(y_w|y_l) - h+(y_l|y_w)]     = P(y_w > y_l) - P(y_l > y_w) = 2p - 1

(the ``log Z`` terms cancel), and each squared term regresses one of these identities, as IPO does for its single
one. With hard labels (``p = 1``) the targets are ``1/2, 1/2, 1``: the equations above.

Sources. The equations agree term by term with ``SRPOTrainer.srpo_loss`` of the (closed, unmerged) TRL pull request
huggingface/trl#1772 (read in its author's fork, ``frasermince/trl``, ``trl/trainer/srpo_trainer_2.py``), including
the ``alpha`` convention ``(1 - alpha) * generative_loss + alpha * self_improvement_loss``. The paper's own text
(Sec. 3-4) could not be retrieved here, so the soft-label form below is this module's derivation, not a quotation.

Deviations from the paper / the PR: none with the defaults. ``preference_prob`` (default 1: hard labels, what the PR
computes) generalises the targets to ``p - 1/2`` and ``2p - 1`` for soft preference labels, per the derivation above.
"""

from __future__ import annotations

import numbers

import torch

__all__ = ["log_ratio", "srpo_loss", "srpo_terms"]


def log_ratio(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """``h = log pi - log pi_ref`` of sequence log-probs ``(B,)``; no gradient flows into the reference."""
    return policy_logps - ref_logps.detach()


def _check(beta: float, alpha: float, preference_prob) -> None:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not beta > 0:
        raise ValueError(f"beta must be a number > 0, got beta={beta!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got alpha={alpha!r}")
    p = torch.as_tensor(preference_prob, dtype=torch.float64)
    if not bool(((p >= 0) & (p <= 1)).all()):
        raise ValueError(f"preference_prob must lie in [0, 1], got {preference_prob!r}")


def srpo_terms(
    h_w: torch.Tensor,
    h_l: torch.Tensor,
    hp_w_given_l: torch.Tensor,
    hp_l_given_l: torch.Tensor,
    hp_w_given_w: torch.Tensor,
    hp_l_given_w: torch.Tensor,
    beta: float,
    alpha: float,
    preference_prob: float | torch.Tensor = 1.0,
) -> dict[str, torch.Tensor]:
    """The loss and its parts, each ``(B,)``: ``loss``, ``self_loss``, ``gen_loss`` and the three scaled margins
    ``margin_given_l = beta [h+(y_w|y_l) - h+(y_l|y_l)]``, ``margin_given_w = beta [h+(y_w|y_w) - h+(y_l|y_w)]``,
    ``margin_gen = beta [h(y_w) - h(y_l) + h+(y_w|y_l) - h+(y_l|y_w)]`` (targets ``p - 1/2``, ``p - 1/2``, ``2p - 1``).

    The margins keep their graph; detach them before logging. Arguments as in :func:`srpo_loss`.
    """
    _check(beta, alpha, preference_prob)
    p = preference_prob
    if isinstance(p, torch.Tensor):
        p = p.to(device=h_w.device, dtype=h_w.dtype)
    margin_given_l = beta * (hp_w_given_l - hp_l_given_l)
    margin_given_w = beta * (hp_w_given_w - hp_l_given_w)
    margin_gen = beta * (h_w - h_l + hp_w_given_l - hp_l_given_w)
    self_loss = (p - 0.5 - margin_given_l) ** 2 + (p - 0.5 - margin_given_w) ** 2
    gen_loss = (margin_gen - (2 * p - 1)) ** 2
    return {
        "loss": alpha * self_loss + (1 - alpha) * gen_loss,
        "self_loss": self_loss,
        "gen_loss": gen_loss,
        "margin_given_l": margin_given_l,
        "margin_given_w": margin_given_w,
        "margin_gen": margin_gen,
    }


def srpo_loss(
    h_w: torch.Tensor,
    h_l: torch.Tensor,
    hp_w_given_l: torch.Tensor,
    hp_l_given_l: torch.Tensor,
    hp_w_given_w: torch.Tensor,
    hp_l_given_w: torch.Tensor,
    beta: float,
    alpha: float,
    preference_prob: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    r"""Per-example SRPO loss ``alpha L_self + (1 - alpha) L_gen`` (equations in the module docstring).

    Args:
        h_w, h_l: ``(B,)`` ``log pi(y|x) - log pi_ref(y|x)`` of the chosen / rejected completion, each a sum over
            its tokens (see :func:`log_ratio`).
        hp_w_given_l: ``(B,)`` ``h+(y_w|y_l)``: log-ratio of the chosen completion as the improvement of the rejected
            one (prompt plus ``y_l`` in context, ``y_w`` as the target).
        hp_l_given_l: ``(B,)`` ``h+(y_l|y_l)``; ``hp_w_given_w``: ``h+(y_w|y_w)``; ``hp_l_given_w``: ``h+(y_l|y_w)``.
        beta: > 0, the KL-regularisation strength (targets are divided by it, as in IPO).
        alpha: in [0, 1], the weight of the self-improvement term (TRL PR 1772 convention).
        preference_prob: ``p = P(y_w > y_l)`` in [0, 1], a float or ``(B,)``; 1 (hard labels) is the paper's
            sample-based loss and the PR's.

    Returns:
        ``(B,)`` per-example losses (the trainer averages them).

    Raises:
        ValueError: ``beta <= 0``, ``alpha`` outside [0, 1] or ``preference_prob`` outside [0, 1].
    """
    return srpo_terms(h_w, h_l, hp_w_given_l, hp_l_given_l, hp_w_given_w, hp_l_given_w, beta, alpha,
                      preference_prob)["loss"]
