"""Membership inference and memorization metrics as pure functions over numbers, in open-unlearning's result shape
(:func:`llmpost.eval.metrics.result`): the per-example scores of the six attacks open-unlearning reports (LOSS, ZLib,
Min-K%, Min-K%++, GradNorm, Reference), the forget-vs-holdout AUC and its MIA entry, MUSE's PrivLeak, extraction
strength and exact memorization. The model passes that feed them are in :mod:`llmpost.eval.mia_passes`.

Sign convention (open-unlearning ``src/evals/metrics/mia/__init__.py``): every attack score is signed like a loss,
higher = "less likely a member", so that :func:`auc` (holdout labelled 1) near 1 means the forget set is still
recognisably seen, for every attack alike.

Conventions as in :mod:`llmpost.eval.metrics` (statistics over an answer's tokens leave out its final EOS; aggregates
are plain means over examples). Sources: Min-K% Prob, Shi et al. 2023, arXiv 2310.16789; MUSE, Shi et al. 2024,
arXiv 2407.06460 (PrivLeak); extraction strength, Wang et al. 2024, arXiv 2406.09179; Min-K%++, Zhang et al. 2024,
arXiv 2404.02936; ZLib, Carlini et al. 2021, arXiv 2012.07805; GradNorm, Wang et al. 2024, arXiv 2402.17012; exact
memorization, Tirumala et al. 2022, arXiv 2205.10770; open-unlearning
(``src/evals/metrics/{memorization,privacy}.py``, ``src/evals/metrics/mia/``).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats

from llmpost.eval.metrics import EPS, MetricResult, index_keys, mean_kept, result


def min_k_score(token_logps: Sequence[float] | np.ndarray, k: float = 0.4, at_least_one: bool = True) -> float:
    """Min-K% Prob score (arXiv 2310.16789): minus the mean of the ``floor(k n)`` lowest of ``n`` token log-probs.

    Higher means "less likely a member". With ``at_least_one`` (open-unlearning ``MinKProbAttack``, with TOFU's
    ``k=0.4``) at least one token is kept and an empty sequence scores 0; ``token_logps`` are then an answer's per-token
    log-probs without the final EOS. Without it (MUSE's ``metrics/privleak.py``: ``int(len * ratio)`` tokens), a
    sequence with ``floor(k n) = 0`` scores NaN, as ``np.mean`` of an empty array does there.
    """
    lp = np.sort(np.asarray(token_logps, dtype=np.float64))
    count = max(1, int(lp.size * k)) if at_least_one else int(lp.size * k)
    if at_least_one and lp.size == 0:
        return 0.0
    return float(-np.mean(lp[:count])) if count else math.nan


def mia_scores(scores: Sequence[float], indices: Sequence | None = None) -> MetricResult:
    """Per-example MIA scores as open-unlearning's ``Attack.attack`` returns them: ``{"score": s}``, mean aggregate."""
    by_index = {key: {"score": float(s)} for key, s in zip(index_keys(len(scores), indices), scores)}
    return result(mean_kept(list(scores)), by_index)


def auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """ROC AUC for telling holdout (label 1) from forget (label 0) examples by their scores; ties count 1/2.

    ``AUC = P(s_holdout > s_forget) + P(=)/2`` (the Mann-Whitney U statistic over ``n_f n_h``), identical to
    ``sklearn.metrics.roc_auc_score(labels, scores)`` as open-unlearning's ``mia_auc`` calls it. With loss-like scores,
    AUC near 1 means the forget set is still recognisably "seen"; 0.5 means indistinguishable.
    """
    f, h = np.asarray(forget_scores, dtype=np.float64), np.asarray(holdout_scores, dtype=np.float64)
    if f.size == 0 or h.size == 0:
        raise ValueError("auc needs non-empty forget and holdout scores")
    ranks = stats.rankdata(np.concatenate([f, h]))  # average ranks for ties
    u = ranks[f.size :].sum() - h.size * (h.size + 1) / 2
    return float(u / (f.size * h.size))


def mia(forget_scores: Sequence[float], holdout_scores: Sequence[float], forget_indices=None, holdout_indices=None):
    """An MIA entry as open-unlearning writes it (``mia_min_k``): ``{"forget": {...}, "holdout": {...}, "auc": a,
    "agg_value": a}``, where the nested entries are :func:`mia_scores` results."""
    a = auc(forget_scores, holdout_scores)
    return {
        "forget": mia_scores(forget_scores, forget_indices),
        "holdout": mia_scores(holdout_scores, holdout_indices),
        "auc": a,
        "agg_value": a,
    }


def privleak(forget_auc: float, reference_auc: float, eps: float = EPS) -> MetricResult:
    """MUSE PrivLeak (arXiv 2407.06460, sec. 3) in percent, relative to the retain model's AUC.

    With open-unlearning's AUC convention (1 = forget set clearly "seen"), MUSE's AUC is ``1 - AUC``; so
    ``privleak = ((1 - auc) - (1 - ref)) / ((1 - ref) + eps) * 100``, ``eps = 1e-10`` by default (MUSE's own code,
    ``muse_bench/eval.py``, divides without it: ``eps=0``). 0 is ideal; strongly negative means the
    forget set is still recognisable (under-unlearning), positive means over-unlearning. Source: open-unlearning
    ``privleak`` (with ``ref_value=0.5`` as its fallback when no retain log is given).
    """
    score, ref = 1 - forget_auc, 1 - reference_auc
    return result((score - ref) / (ref + eps) * 100)


def extraction_strength_score(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Extraction strength of one answer (arXiv 2406.09179, sec. 4): ``1 - k*/n``, where ``n`` is the number of answer
    tokens (without the final EOS) and ``k*`` the smallest ``k`` such that greedy teacher-forced predictions match the
    labels on every position ``>= k`` (i.e. the shortest prefix from which the rest is reproduced).

    Deviation, kept to agree with open-unlearning's ``extraction_strength``: when no suffix matches (not even the last
    token), ``k* = n - 1`` (score ``1/n``) where the paper's definition gives 0. An empty answer scores 0.
    """
    p, y = np.asarray(preds), np.asarray(labels)
    if p.shape != y.shape:
        raise ValueError(f"preds and labels differ in shape: {p.shape} vs {y.shape}")
    n = y.size
    if n == 0:
        return 0.0
    mismatch = np.flatnonzero(p != y)
    k = 0 if mismatch.size == 0 else min(int(mismatch[-1]) + 1, n - 1)
    return 1.0 - k / n


def extraction_strength(scores: Sequence[float], indices: Sequence | None = None) -> MetricResult:
    """Per-example extraction strengths ``{"score": es}`` and their mean."""
    by_index = {key: {"score": float(s)} for key, s in zip(index_keys(len(scores), indices), scores)}
    return result(mean_kept(list(scores)), by_index)


# ----------------------------------------------------------------------------------------------------------------------
# The other attacks of open-unlearning's suite (``src/evals/metrics/mia/*.py``); Min-K% is :func:`min_k_score`.


def loss_score(avg_loss: float) -> float:
    """LOSS attack (Yeom et al. 2018, arXiv 1709.01604): the example's mean NLL ``-(1/|y|) sum_t log p(y_t | x, y_<t)``
    over every labelled token (for a TOFU answer: its tokens and the EOS), as open-unlearning's ``LOSSAttack``."""
    return float(avg_loss)


def zlib_score(avg_loss: float, text: str) -> float:
    """ZLib attack (Carlini et al. 2021, arXiv 2012.07805, sec. 6.1): ``avg_nll / len(zlib.compress(text))``, the
    compressed length in bytes of the UTF-8 text.

    As open-unlearning's ``ZLIBAttack``: ``avg_nll`` is the LOSS score (mean over every labelled token) and ``text`` is
    the labelled tokens decoded with ``skip_special_tokens=True`` (a TOFU answer without its EOS). Deviation from the
    paper, kept to agree with open-unlearning: the paper divides the *total* log-perplexity by the zlib entropy, this
    divides the per-token mean.
    """
    return float(avg_loss) / len(zlib.compress(text.encode("utf-8")))


def next_token_moments(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``log p(z)`` for ``z`` drawn from the model's own next-token distribution, per position.

    ``mu = sum_z p(z) log p(z)``, ``var = sum_z p(z) (log p(z))^2 - mu^2`` over the vocabulary (last dim of ``logits``,
    ``(..., V)``; computed in float32). Min-K%++'s normalisers (arXiv 2404.02936, eq. 2), as open-unlearning's
    ``MinKPlusPlusAttack`` computes them (``E[x^2] - E[x]^2``, not a centred sum).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    return mu, (p * logp.square()).sum(-1) - mu.square()


def min_k_plus_plus_score(token_logps, mu, var, k: float = 0.4) -> float:
    """Min-K%++ score (Zhang et al. 2024, arXiv 2404.02936, eq. 2-3): minus the mean of the ``max(1, floor(k n))``
    lowest of the ``n`` normalised token scores ``(log p(y_t) - mu_t) / sqrt(var_t)``, where ``mu_t`` / ``var_t`` are
    :func:`next_token_moments` at position ``t``; higher means "less likely a member". An empty sequence scores 0.

    As open-unlearning's ``MinKPlusPlusAttack`` (k = 0.4 in its TOFU and MUSE configs): the tokens are those of
    Min-K% (a TOFU answer without its final EOS) and ``var`` is clamped at ``1e-6`` before the square root. Deviation
    from the paper, kept to agree with open-unlearning: the score is negated (the paper's is higher for members).
    """
    lp = np.asarray(token_logps, dtype=np.float64)
    if lp.size == 0:
        return 0.0
    z = (lp - np.asarray(mu, dtype=np.float64)) / np.sqrt(np.maximum(np.asarray(var, dtype=np.float64), 1e-6))
    return float(-np.mean(np.sort(z)[: max(1, int(lp.size * k))]))


def gradnorm_score(param_grad_norms: Sequence[float]) -> float:
    """GradNorm attack (Wang et al. 2024, arXiv 2402.17012): the mean over parameter tensors of ``||dL/dW||_p``, where
    ``L = -(1/n) sum_t log p(y_t)`` is one example's mean NLL over the Min-K% tokens (no EOS) and ``W`` runs over the
    parameter tensors that receive a gradient. Higher (a larger gradient, i.e. a larger loss) = less likely a member.

    As open-unlearning's ``GradNormAttack`` (``p = 2``, batch size 1): a plain mean of per-tensor norms, not the norm
    of the whole gradient vector; the score is the norm itself (its docstring says "negative", its code returns it
    positive, which is what gives the loss-like sign).
    """
    norms = np.asarray(param_grad_norms, dtype=np.float64)
    if norms.size == 0:
        raise ValueError("gradnorm_score needs at least one parameter gradient norm")
    return float(norms.mean())


def reference_score(target_avg_loss: float, reference_avg_loss: float) -> float:
    """Reference attack (Carlini et al. 2021, arXiv 2012.07805, sec. 6.1; Mireshghallah et al. 2022): the evaluated
    model's LOSS score minus the reference model's on the same example, ``avg_nll_target - avg_nll_ref``.

    As open-unlearning's ``ReferenceAttack`` (with the retain model as reference in its configs): a difference of mean
    NLLs over every labelled token; the paper's variant is a ratio of log-perplexities."""
    return float(target_avg_loss) - float(reference_avg_loss)


def exact_memorization_score(preds: Sequence[int], labels: Sequence[int]) -> float | None:
    """Exact memorization (Tirumala et al. 2022, arXiv 2205.10770, sec. 2): the fraction of answer tokens where the
    teacher-forced greedy prediction equals the label, ``(1/n) sum_t [argmax_z p(z | x, y_<t) = y_t]``.

    As open-unlearning's ``exact_memorization``: the tokens are those of Min-K% and extraction strength (a TOFU answer
    without its final EOS), and an example with none scores ``None`` (left out of the mean)."""
    p, y = np.asarray(preds), np.asarray(labels)
    if p.shape != y.shape:
        raise ValueError(f"preds and labels differ in shape: {p.shape} vs {y.shape}")
    return float(np.mean(p == y)) if y.size else None


def exact_memorization(scores: Sequence[float | None], indices: Sequence | None = None) -> MetricResult:
    """Per-example exact memorization ``{"score": em}`` (``None`` kept) and the mean of the others."""
    by_index = {key: {"score": None if s is None else float(s)} for key, s in zip(index_keys(len(scores), indices), scores)}
    return result(mean_kept(list(scores)), by_index)
