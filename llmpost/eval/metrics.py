"""Unlearning metrics as pure functions over numbers, in open-unlearning's result shape: TOFU's probability, truth
ratio, ROUGE, forget quality and model utility here; membership inference (Min-K%, AUC, privleak) and extraction
strength in :mod:`llmpost.eval.mia`.

Every per-example metric returns ``{"agg_value": float, "value_by_index": {str(index): {...}}}``, the shape that
open-unlearning (locuslab/open-unlearning, ``src/evals/metrics/``) writes into ``TOFU_EVAL.json``, with the same
per-example field names (``prob``/``avg_loss``, ``score``, ``rougeL_recall``/``input``/``ground_truth``/``generation``).
Aggregate-only metrics (forget quality, model utility, privleak) carry an empty ``value_by_index``; open-unlearning
writes only ``agg_value`` for them, and readers of its files look at nothing else.

Conventions shared with open-unlearning (checked against ``src/evals/metrics/{utils,memorization,privacy,utility}.py``
and ``src/evals/metrics/mia/``):

* a per-token "loss" is the negative log-probability of a label token; an answer's ``avg_loss`` is its mean over every
  labelled token (the answer and the EOS that tokenisation appends);
* statistics over an answer's *tokens* (min-k, extraction strength) leave out the last labelled token (the EOS);
* aggregates are plain means over examples; an example whose value is ``None`` is left out.

Sources: TOFU, Maini et al. 2024, arXiv 2401.06121 (probability, ROUGE, truth ratio, forget quality, model utility;
those of the membership-inference metrics in :mod:`llmpost.eval.mia`). open-unlearning itself: Dorna et al. 2025,
arXiv 2506.12618.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

import numpy as np
import torch
from rouge_score import rouge_scorer
from scipy import stats

EPS = 1e-10  # open-unlearning's guard against division by zero, kept so that values agree to the last digit

MetricResult = dict[str, Any]


def index_keys(n: int, indices: Sequence | None) -> list[str]:
    """``value_by_index`` keys: ``str(i)`` of ``indices`` (default ``0..n-1``); their count must be ``n``."""
    keys = [str(i) for i in (range(n) if indices is None else indices)]
    if len(keys) != n:
        raise ValueError(f"got {len(keys)} indices for {n} values")
    return keys


def mean_kept(values) -> float | None:
    """Mean over examples of each value's mean (a list enters through its mean); ``None`` values are left out, and
    ``None`` when nothing is left."""
    kept = [float(np.mean(v)) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def result(agg_value: float | None, value_by_index: Mapping | None = None) -> MetricResult:
    """``{"agg_value": ..., "value_by_index": ...}`` with plain Python floats (JSON-serialisable)."""
    return {"agg_value": None if agg_value is None else float(agg_value), "value_by_index": dict(value_by_index or {})}


# ----------------------------------------------------------------------------------------------------------------------
# Probabilities


def avg_nll(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean negative log-likelihood over the masked tokens: ``-(1/|y|) sum_t log p(y_t | x, y_<t)``.

    ``logps`` and ``mask`` are ``(B, T)`` (e.g. from :func:`llmpost.ops.logps_from_logits`); returns ``(B,)`` float64.
    A row with no masked token gets NaN (open-unlearning divides by zero there too).
    """
    logps, mask = logps.double(), mask.bool()
    count = mask.sum(-1)
    out = -(logps * mask).sum(-1) / count.clamp(min=1)
    return out.masked_fill(count == 0, float("nan"))


def prob_from_avg_nll(avg_loss: float) -> float:
    """Length-normalised answer probability ``exp(-avg_nll) = p(y|x)^(1/|y|)`` (TOFU sec. 2.2.1, open-unlearning
    ``evaluate_probability``)."""
    return math.exp(-avg_loss)


def probability(avg_losses: Sequence[float | Sequence[float] | None], indices: Sequence | None = None) -> MetricResult:
    """TOFU "Probability" of the given answers: ``agg = mean_i exp(-avg_nll_i)``.

    An entry of ``avg_losses`` may be a list (several answers to one question, e.g. the perturbed answers): its entry
    then holds lists, ``{"prob": [...], "avg_loss": [...]}``, and it enters the aggregate through its mean, as
    open-unlearning's ``aggregate_to_1D`` does. Source: open-unlearning ``probability``.
    """
    by_index, probs = {}, []
    for key, loss in zip(index_keys(len(avg_losses), indices), avg_losses):
        if loss is None:
            by_index[key] = {"prob": None, "avg_loss": None}
            continue
        if isinstance(loss, Sequence):
            p = [prob_from_avg_nll(x) for x in loss]
            by_index[key] = {"prob": p, "avg_loss": [float(x) for x in loss]}
        else:
            p = prob_from_avg_nll(loss)
            by_index[key] = {"prob": p, "avg_loss": float(loss)}
        probs.append(p)
    return result(mean_kept(probs), by_index)


def normalised_probability(correct: MetricResult, wrong: MetricResult) -> MetricResult:
    """TOFU's probability for Real Authors / World Facts: ``p(a) / (p(a) + sum_j p(a'_j))``.

    ``correct`` and ``wrong`` are :func:`probability` results over the same indices (``wrong`` with a list of
    perturbed answers per index). As in open-unlearning (``probability_w_options``) and the TOFU code, the
    probabilities are the *length-normalised* ones ``exp(-avg_nll)``, and ``1e-10`` is added to the denominator.
    Deviation from the TOFU paper, which writes unnormalised probabilities: none from open-unlearning.
    """
    c_idx, w_idx = correct["value_by_index"], wrong["value_by_index"]
    if list(c_idx) != list(w_idx):
        raise ValueError("correct and wrong answers must have the same indices")
    by_index, values = {}, []
    for key in c_idx:
        pc, pw = c_idx[key]["prob"], w_idx[key]["prob"]
        if pc is None or pw is None:
            continue
        value = pc / (pc + float(np.sum(pw)) + EPS)
        by_index[key] = {"prob": value}
        values.append(value)
    return result(mean_kept(values), by_index)


# ----------------------------------------------------------------------------------------------------------------------
# Truth ratio


class TruthRatioAggregator(str, Enum):  # (str, Enum), not StrEnum: Python 3.10
    """How per-example truth ratios ``R = p_false / p_true`` are averaged (open-unlearning ``truth_ratio``)."""

    CLOSER_TO_1_BETTER = "closer_to_1_better"  # forget set: mean(min(R, 1/R)); TOFU's forget-set truth ratio
    TRUE_BETTER = "true_better"  # retain / real authors / world facts: mean(max(0, 1 - R)); used in model utility
    PROB_MEAN = "prob_mean"  # mean(R); an option added later in open-unlearning, not TOFU's definition


def aggregate_truth_ratios(ratios: Sequence[float], aggregator: str | TruthRatioAggregator) -> float:
    """Aggregate per-example truth ratios; raises on an unknown aggregator."""
    r = np.asarray(ratios, dtype=np.float64)
    match TruthRatioAggregator(aggregator):
        case TruthRatioAggregator.CLOSER_TO_1_BETTER:
            return float(np.mean(np.minimum(r, 1 / (r + EPS))))
        case TruthRatioAggregator.TRUE_BETTER:
            return float(np.mean(np.maximum(0, 1 - r)))
        case TruthRatioAggregator.PROB_MEAN:
            return float(np.mean(r))
    raise AssertionError("unreachable")


def truth_ratio(correct: MetricResult, wrong: MetricResult, aggregator: str | TruthRatioAggregator) -> MetricResult:
    """TOFU truth ratio (arXiv 2401.06121, eq. 1), per example and aggregated.

    ``R_i = exp(-mean_j avg_nll(a'_ij)) / (exp(-avg_nll(a_i)) + 1e-10)``: the *geometric* mean of the perturbed
    (false) answers' length-normalised probabilities over the true answer's (the paraphrased answer for the forget and
    retain sets, the answer itself for Real Authors / World Facts). ``value_by_index`` holds ``{"score": R_i}``.
    ``correct`` / ``wrong`` are :func:`probability` results (``avg_loss`` fields are used). Source: open-unlearning
    ``truth_ratio`` (and TOFU's ``aggregate_eval_stat.py``, whose ratio is the reciprocal with the same aggregates).
    Deviation from the paper: the paper's ratio averages the perturbed probabilities arithmetically; both codebases
    average log-probabilities (a geometric mean), and so does this function.
    """
    c_idx, w_idx = correct["value_by_index"], wrong["value_by_index"]
    if list(c_idx) != list(w_idx):
        raise ValueError("correct and wrong answers must have the same indices")
    by_index = {}
    for key in c_idx:
        lc, lw = c_idx[key]["avg_loss"], w_idx[key]["avg_loss"]
        if lc is None or lw is None:
            continue
        p_true, p_false = math.exp(-float(np.mean(lc))), math.exp(-float(np.mean(lw)))
        by_index[key] = {"score": p_false / (p_true + EPS)}
    scores = [v["score"] for v in by_index.values()]
    return result(aggregate_truth_ratios(scores, aggregator) if scores else None, by_index)


# ----------------------------------------------------------------------------------------------------------------------
# ROUGE

_SCORERS: dict[bool, rouge_scorer.RougeScorer] = {}


def rouge_scores(generation: str, ground_truth: str, use_stemmer: bool = True) -> dict[str, float]:
    """ROUGE-1 recall, ROUGE-L F1 and ROUGE-L recall of ``generation`` against ``ground_truth``.

    ``RougeScorer(["rouge1", "rougeL"], use_stemmer=use_stemmer).score(target=ground_truth, prediction=generation)``
    (from ``rouge_score``); ROUGE-L recall = LCS(generation, ground truth) / |ground truth| in lower-cased words,
    Porter-stemmed when ``use_stemmer``. Source: TOFU sec. 2.2.1; open-unlearning ``eval_text_similarity`` (stemmer on,
    also for its MUSE port). MUSE's own code (``muse_bench/metrics/logger.py``) uses ``use_stemmer=False``.
    """
    scorer = _SCORERS.get(use_stemmer)
    if scorer is None:
        scorer = _SCORERS[use_stemmer] = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=use_stemmer)
        stemmer = getattr(getattr(scorer, "_tokenizer", None), "_stemmer", None)
        if stemmer is not None:  # Porter stemming is a pure function of the word and most of ROUGE's time: memoise it
            stemmer.stem = functools.lru_cache(maxsize=1 << 16)(stemmer.stem)
    s = scorer.score(ground_truth, generation)
    return {"rouge1_recall": s["rouge1"].recall, "rougeL_f1": s["rougeL"].fmeasure, "rougeL_recall": s["rougeL"].recall}


def rouge(
    generations: Sequence[str],
    ground_truths: Sequence[str],
    inputs: Sequence[str] | None = None,
    indices: Sequence | None = None,
    rouge_type: str = "rougeL_recall",
    use_stemmer: bool = True,
) -> MetricResult:
    """Per-example ROUGE (see :func:`rouge_scores`) with the prompt, ground truth and generation kept, as
    open-unlearning writes them; ``agg = mean_i rouge_type_i``."""
    if len(generations) != len(ground_truths) or (inputs is not None and len(inputs) != len(generations)):
        raise ValueError("generations, ground_truths and inputs must have the same length")
    inputs = inputs if inputs is not None else [""] * len(generations)
    by_index = {}
    for key, gen, gt, inp in zip(index_keys(len(generations), indices), generations, ground_truths, inputs):
        by_index[key] = {**rouge_scores(gen, gt, use_stemmer), "input": inp, "ground_truth": gt, "generation": gen}
    return result(mean_kept([v[rouge_type] for v in by_index.values()]), by_index)


# ----------------------------------------------------------------------------------------------------------------------
# Forget quality, model utility


def forget_quality(forget_truth_ratios: Sequence[float], retain_truth_ratios: Sequence[float] | None) -> MetricResult:
    """TOFU forget quality: the p-value of the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``, default
    two-sided, ``method="auto"``) between the evaluated model's per-example forget-set truth ratios and the retain
    model's. ``None`` when no retain values are given (open-unlearning ``ks_test`` does the same).
    Source: TOFU sec. 2.2.3; open-unlearning ``ks_test``. The statistic is invariant to TOFU's use of ``1/R``.
    """
    if retain_truth_ratios is None:
        return result(None)
    if len(forget_truth_ratios) == 0 or len(retain_truth_ratios) == 0:
        raise ValueError("forget_quality needs non-empty truth-ratio samples")
    return result(stats.ks_2samp(np.asarray(forget_truth_ratios), np.asarray(retain_truth_ratios)).pvalue)


MODEL_UTILITY_KEYS = (
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised",
    "ra_Q_A_ROUGE",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised",
    "wf_Q_A_ROUGE",
    "wf_Truth_Ratio",
)


def model_utility(values: Mapping[str, float | None]) -> MetricResult:
    """TOFU model utility: the harmonic mean (``scipy.stats.hmean``) of the nine retain / Real Authors / World Facts
    numbers named in :data:`MODEL_UTILITY_KEYS`; ``None`` if any is missing. A zero among them gives 0.
    Source: TOFU sec. 2.2.3; open-unlearning ``hm_aggregate``.
    """
    missing = [k for k in MODEL_UTILITY_KEYS if values.get(k) is None]
    if missing:
        return result(None)
    return result(stats.hmean([float(values[k]) for k in MODEL_UTILITY_KEYS]))
