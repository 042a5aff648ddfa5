"""How noisy are the verifiers? Their false-negative and false-positive rates on HardVerify-Math.

Every verifier judges both answers of every item: the false-negative rate is the fraction of ``fn_output`` answers (all
correct) it rejects, the false-positive rate the fraction of ``tn_output`` answers (all incorrect) it accepts. Each rate
has a 95% percentile-bootstrap interval over items (:func:`llmpost.eval.stats.bootstrap_mean`, the same resampled items
for both rates), overall and per ``split``.

What the verifiers see:

* ``rule_based`` and ``math_verify`` (:mod:`llmpost.rewards.verifiers`) read a completion: each answer is given as
  ``\\boxed{answer}``, the form a GRPO completion ends in, against the item's ``ground_truth`` as the gold. The rule-based
  checker runs through ``safe_verify``; math-verify through :func:`llmpost.grading.verify.grade` (the batched
  ``is_correct`` that ``math_verify_verifier`` calls, each item bounded by ``grading_timeout``).
* ``llm`` (:class:`llmpost.rewards.llm_verifier.LLMVerifier`, TinyV's prompt) reads the question, the ground truth and
  the answer as it is (TinyV's own evaluation, ``benchmarks/tinyv_v1.py``, does the same).

The false-negative rates are conditional on HardVerify-Math's selection: its ``fn_output`` answers were chosen because
rule-based checkers reject them, so they are the rates on hard cases, not a verifier's false-negative rate on a policy's
completions (the rho1 of arXiv 2510.00915).

Outputs, written atomically: ``VERIFIER_EVAL.json`` (per item: the answers and every verifier's verdicts, and the LLM
verifier's raw answers) and ``VERIFIER_SUMMARY.json`` (the rates, intervals, per-split rates, counters, settings).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from llmpost.eval.stats import bootstrap_mean
from llmpost.grading.verify import grade
from llmpost.rewards.verifiers import VerifyStats, math_verify_verifier, rule_based_verifier, safe_verify
from llmpost.utils import atomic_write_json, progress_disabled

__all__ = ["ANSWERS", "EVAL_FILE", "SUMMARY_FILE", "evaluate_verifiers", "format_summary", "llm_judge",
           "math_verify_judge", "rule_based_judge", "summarize"]  # fmt: skip

logger = logging.getLogger(__name__)

EVAL_FILE = "VERIFIER_EVAL.json"
SUMMARY_FILE = "VERIFIER_SUMMARY.json"
ANSWERS = ("fn_output", "tn_output")  # the correct answer (a rejection is a false negative), the incorrect one
RATES = {"false_negative_rate": ("fn_output", 0), "false_positive_rate": ("tn_output", 1)}  # answer, counted verdict

# A judge: (questions, golds, answers) -> 0/1 verdicts, plus a description and counters for the summary.
Judge = Callable[[Sequence[str], Sequence[str], Sequence[str]], list[int]]


def as_completion(answer: str) -> str:
    """The completion a GRPO policy would end with for this answer: ``\\boxed{answer}``."""
    return "\\boxed{" + answer + "}"


def rule_based_judge() -> Judge:
    stats = VerifyStats()

    def judge(questions, golds, answers):
        return [safe_verify(rule_based_verifier, as_completion(a), g, stats) for g, a in zip(golds, answers)]

    judge.description, judge.stats = rule_based_verifier.description, stats
    return judge


def math_verify_judge(timeout: float = 5.0, workers: int | None = None) -> Judge:
    def judge(questions, golds, answers):
        return [int(ok) for ok in grade([as_completion(a) for a in answers], list(golds), timeout=timeout,
                                        workers=workers)]  # fmt: skip

    judge.description, judge.stats = math_verify_verifier.description, None
    return judge


def llm_judge(verifier, chunk: int = 64) -> Judge:
    """The LLM verifier, ``chunk`` items per ``verify_batch`` call (its time limit applies to each), with progress."""

    def judge(questions, golds, answers):
        verdicts, responses = [], []
        with tqdm(total=len(answers), desc="LLM verifier", unit="answer", mininterval=5.0,
                  disable=progress_disabled()) as bar:  # fmt: skip
            for start in range(0, len(answers), chunk):
                stop = start + chunk
                verdicts += verifier.verify_batch(questions[start:stop], golds[start:stop], answers[start:stop])
                responses += verifier.last_responses
                bar.update(len(answers[start:stop]))
                logger.info("LLM verifier: %d/%d answers judged (%d overturned so far)", len(verdicts), len(answers),
                            sum(verdicts))  # fmt: skip
        judge.responses = responses
        return verdicts

    judge.description, judge.stats, judge.responses = verifier.description, verifier.stats, []
    return judge


def judge_items(items: Sequence[dict], judges: dict[str, Judge]) -> dict[str, dict]:
    """Every judge on both answers of every item; the records of ``VERIFIER_EVAL.json``, keyed by item id."""
    records = {it["id"]: {"split": it["split"], "source": it["source"], "ground_truth": it["ground_truth"],
                          "fn_output": it["fn_output"], "tn_output": it["tn_output"], "verdicts": {}}
               for it in items}  # fmt: skip
    questions = [it["question"] for it in items for _ in ANSWERS]
    golds = [it["ground_truth"] for it in items for _ in ANSWERS]
    answers = [it[key] for it in items for key in ANSWERS]
    for name, judge in judges.items():
        logger.info("verifier %s: judging %d answers", name, len(answers))
        verdicts = judge(questions, golds, answers)
        responses = getattr(judge, "responses", None)
        for j, it in enumerate(items):
            rec = records[it["id"]]
            rec["verdicts"][name] = {key: int(verdicts[2 * j + k]) for k, key in enumerate(ANSWERS)}
            if responses:
                rec.setdefault("responses", {})[name] = {key: responses[2 * j + k] for k, key in enumerate(ANSWERS)}
    return records


def _rate(indicators: list[int], n_resamples: int, seed: int, confidence: float) -> dict:
    mean, low, high = bootstrap_mean(indicators, n_resamples=n_resamples, seed=seed, confidence=confidence)
    return {"agg_value": mean, "ci_low": low, "ci_high": high, "count": int(sum(indicators)), "num_items": len(indicators)}


def _rates(records: list[dict], name: str, n_resamples: int, seed: int, confidence: float) -> dict:
    return {rate: _rate([int(r["verdicts"][name][answer] == counted) for r in records], n_resamples, seed, confidence)
            for rate, (answer, counted) in RATES.items()}  # fmt: skip


def summarize(records: dict[str, dict], judges: dict[str, Judge] | None = None, n_resamples: int = 1000, seed: int = 0,
              confidence: float = 0.95) -> dict:  # fmt: skip
    """``VERIFIER_SUMMARY.json``: per verifier, ``false_negative_rate`` and ``false_positive_rate`` (``agg_value``,
    ``ci_low``, ``ci_high``, ``count``, ``num_items``), the same ``by_split``, and its description and counters."""
    if not records:
        raise ValueError("no judged items to summarize")
    rows = list(records.values())
    names = list(rows[0]["verdicts"])
    splits = sorted({r["split"] for r in rows})
    summary = {"num_items": len(rows), "num_items_by_split": {s: sum(r["split"] == s for r in rows) for s in splits},
               "verifiers": {}}  # fmt: skip
    for name in names:
        entry = _rates(rows, name, n_resamples, seed, confidence)
        entry["by_split"] = {s: _rates([r for r in rows if r["split"] == s], name, n_resamples, seed, confidence)
                             for s in splits}  # fmt: skip
        judge = (judges or {}).get(name)
        if judge is not None:
            entry["description"] = judge.description
            if judge.stats is not None:
                entry["stats"] = asdict(judge.stats)
        summary["verifiers"][name] = entry
    summary["bootstrap"] = {"n_resamples": n_resamples, "seed": seed, "confidence": confidence}
    return summary


def write_results(records: dict, summary: dict, output_dir: str | Path) -> None:
    """``VERIFIER_EVAL.json`` then ``VERIFIER_SUMMARY.json`` (its presence means done), each atomically."""
    atomic_write_json(Path(output_dir) / EVAL_FILE, records)
    atomic_write_json(Path(output_dir) / SUMMARY_FILE, summary)


def evaluate_verifiers(items: Sequence[dict], judges: dict[str, Judge], output_dir: str | Path | None = None,
                       n_resamples: int = 1000, seed: int = 0, settings: dict | None = None) -> dict:  # fmt: skip
    """Judge, summarise, write the two files into ``output_dir`` (when given); returns the summary."""
    if not items:
        raise ValueError("no items to evaluate")
    if not judges:
        raise ValueError("no verifier to evaluate")
    records = judge_items(items, judges)
    summary = {**summarize(records, judges, n_resamples=n_resamples, seed=seed), "settings": settings or {}}
    if output_dir is not None:
        write_results(records, summary, output_dir)
    return summary


def _cell(rate: dict) -> str:
    return f"{rate['agg_value']:.3f} [{rate['ci_low']:.3f}, {rate['ci_high']:.3f}] ({rate['count']}/{rate['num_items']})"


def summary_rows(summary: dict) -> list[tuple[str, str, str, str]]:
    """``(verifier, split, FN cell, FP cell)`` for every verifier, all items first, then each split."""
    rows = []
    for name, entry in summary["verifiers"].items():
        rows.append((name, "all", _cell(entry["false_negative_rate"]), _cell(entry["false_positive_rate"])))
        for split, rates in entry["by_split"].items():
            rows.append((name, split, _cell(rates["false_negative_rate"]), _cell(rates["false_positive_rate"])))
    return rows


def format_summary(summary: dict) -> str:
    """A Markdown table: per verifier and split, each rate with its interval and count."""
    conf = round(100 * summary.get("bootstrap", {}).get("confidence", 0.95))
    lines = [f"HardVerify-Math: {summary['num_items']} items; rate [{conf}% bootstrap interval] (count/items)", "",
             "| verifier | split | false-negative rate (fn_output rejected) | false-positive rate (tn_output accepted) |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {' | '.join(row)} |" for row in summary_rows(summary)]
    return "\n".join(lines)
