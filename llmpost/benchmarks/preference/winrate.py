"""Win rates against gold completions after 0..k self-revisions (SRPO, Choi et al., arXiv 2406.01660, sec. 5).

A *judge* compares each candidate completion with the reference (gold) completion of the same prompt and returns one
score per example in [0, 1] (:class:`JudgeResult`). What the score means depends on the judge:

* :class:`RougeJudge` (``"rougeL_f1"``): ROUGE-L F1 of the candidate against the reference, a *similarity* (1 for the
  same words), not a win; it has no ``wins``. For CPU tests and smoke runs.
* :class:`RewardModelJudge` (``"reward_model"``): a scalar reward model ``r``; the score is the win *indicator*
  ``1[r(c) > r(r)]`` (0.5 on a tie), also in ``wins``; ``probs`` holds the Bradley-Terry probability
  ``sigmoid(r(c) - r(r))``.
* :class:`PairwiseLLMJudge` (``"pairwise_llm"``): a causal LM asked which of two responses is better; the score is the
  position-debiased *probability* that the candidate is preferred, ``wins`` its thresholded value.

The paper's judge is a large LLM (GPT-4) comparing answers in both orders; :class:`PairwiseLLMJudge` is that protocol
with any local causal LM and next-token probabilities instead of sampled verdicts.

:func:`revision_win_rates` judges every revision step ``y_0..y_k`` against the references in one judge call and
summarises each step (:func:`summarize_revisions`): the mean score, the win rate (win-type judges), the improvement over
``y_0`` (paired by prompt), each with a percentile-bootstrap interval over prompts (:func:`bootstrap_mean`; every
interval of one summary uses the same resampled prompt sets, since they share ``seed`` and ``n``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from llmpost.benchmarks.preference.judges import Judge, JudgeResult
from llmpost.eval.stats import bootstrap_mean, markdown_table, mean_stderr

__all__ = ["revision_win_rates", "summarize_revisions", "win_rate_table"]

logger = logging.getLogger(__name__)


def summarize_revisions(results: Sequence[JudgeResult], *, judge_name: str = "", n_resamples: int = 1000,
                        seed: int = 0, confidence: float = 0.95) -> list[dict]:  # fmt: skip
    """One row per revision step ``j`` from the judge results of ``y_j`` (``results[j]``, the same prompts in the same
    order at every step).

    Each row: ``step``, ``judge``, ``n``; ``score`` with ``score_stderr`` (:func:`llmpost.eval.stats.mean_stderr`) and
    ``score_ci_low``/``score_ci_high``; for win-type judges ``win_rate`` (ties count 0.5) with its stderr and interval;
    where the judge gives them, ``prob`` (mean win probability) with its interval; ``improvement`` = mean over prompts
    of ``score(y_j) - score(y_0)`` with a paired bootstrap interval (the differences are resampled by prompt; 0 at
    step 0). Intervals: :func:`bootstrap_mean` with ``n_resamples``, ``seed``, ``confidence``.
    """
    if not results:
        raise ValueError("summarize_revisions: no judge results")
    n = len(results[0].scores)
    if n == 0 or any(len(r.scores) != n for r in results):
        raise ValueError(f"summarize_revisions: every step needs the same, non-zero number of examples, got "
                         f"{[len(r.scores) for r in results]}")  # fmt: skip
    boot = lambda xs: bootstrap_mean(xs, n_resamples=n_resamples, seed=seed, confidence=confidence)  # noqa: E731
    base = np.asarray(results[0].scores, dtype=np.float64)
    rows = []
    for j, res in enumerate(results):
        row: dict = {"step": j, "judge": judge_name, "n": n}
        for key, values in (("score", res.scores), ("win_rate", res.wins), ("prob", res.probs)):
            if values is None:
                continue
            mean, low, high = boot(values)
            row.update({key: mean, f"{key}_stderr": mean_stderr([float(v) for v in values])[1],
                        f"{key}_ci_low": low, f"{key}_ci_high": high})  # fmt: skip
        diff = np.asarray(res.scores, dtype=np.float64) - base
        mean, low, high = boot(diff)
        row.update({"improvement": mean, "improvement_ci_low": low, "improvement_ci_high": high})
        rows.append(row)
    return rows


def revision_win_rates(drafts: Sequence[Sequence[str]], prompts: Sequence[str], references: Sequence[str],
                       judge: Judge, *, n_resamples: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> list[dict]:  # fmt: skip
    """Judge every revision step of :func:`llmpost.generation.revision.self_revise`'s ``drafts`` (``drafts[i][j]`` =
    ``y_j`` for prompt ``i``) against ``references[i]``, in one judge call, and summarise each step
    (:func:`summarize_revisions`: one row per step ``j = 0..k``)."""
    if not len(drafts) == len(prompts) == len(references):
        raise ValueError(f"drafts, prompts and references must have the same length, got {len(drafts)}, "
                         f"{len(prompts)} and {len(references)}")  # fmt: skip
    if not drafts:
        raise ValueError("revision_win_rates: no prompts")
    steps = len(drafts[0])
    if steps == 0 or any(len(d) != steps for d in drafts):
        raise ValueError(f"revision_win_rates: every prompt needs the same, non-zero number of drafts (k + 1), got "
                         f"{sorted({len(d) for d in drafts})}")  # fmt: skip
    n = len(prompts)
    flat = judge.judge([p for _ in range(steps) for p in prompts],
                       [d[j] for j in range(steps) for d in drafts],
                       [r for _ in range(steps) for r in references])  # fmt: skip
    if len(flat.scores) != n * steps:
        raise ValueError(f"judge {judge.name!r} returned {len(flat.scores)} scores for {n * steps} examples")
    results = [flat.select(range(j * n, (j + 1) * n)) for j in range(steps)]
    return summarize_revisions(results, judge_name=judge.name, n_resamples=n_resamples, seed=seed,
                               confidence=confidence)  # fmt: skip


def win_rate_table(rows: Sequence[dict], confidence: float = 0.95) -> str:
    """A Markdown table of :func:`revision_win_rates` rows: one line per revision step, the mean score, win rate and
    improvement over ``y_0`` each with its interval (``-`` where the judge gives no such value)."""

    def ci(row, key):
        return f"[{row[key + '_ci_low']:.3f}, {row[key + '_ci_high']:.3f}]" if key in row else None

    level = f"{100 * confidence:g}% CI"
    keys = ("judge", "n", "score", f"score {level}", "win_rate", f"win_rate {level}", "improvement",
            f"improvement {level}")  # fmt: skip
    table = {f"y_{r['step']}": {"judge": r.get("judge"), "n": r["n"], "score": r["score"],
                                 f"score {level}": ci(r, "score"), "win_rate": r.get("win_rate"),
                                 f"win_rate {level}": ci(r, "win_rate"), "improvement": r["improvement"],
                                 f"improvement {level}": ci(r, "improvement")}
             for r in rows}  # fmt: skip
    return markdown_table(table, keys, first_column="revision")
