"""Membership inference and extraction metrics as pure functions over numbers, in open-unlearning's result shape
(:func:`llmpost.eval.metrics.result`): Min-K% Prob scores, the forget-vs-holdout AUC and its MIA entry, MUSE's
PrivLeak, and extraction strength.

Conventions as in :mod:`llmpost.eval.metrics` (statistics over an answer's tokens leave out its final EOS; aggregates
are plain means over examples). Sources: Min-K% Prob, Shi et al. 2023, arXiv 2310.16789; MUSE, Shi et al. 2024,
arXiv 2407.06460 (PrivLeak); extraction strength, Wang et al. 2024, arXiv 2406.09179; open-unlearning
(``src/evals/metrics/{memorization,privacy}.py``, ``src/evals/metrics/mia/``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
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
