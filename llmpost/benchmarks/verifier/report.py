"""``llmpost report verifier``: the false-negative and false-positive rates of several evaluated runs in one table."""

from __future__ import annotations

from llmpost.benchmarks.verifier.evaluate import SUMMARY_FILE, summary_rows
from llmpost.eval.stats import load_summary


def verifier_report(runs: dict[str, str]) -> str:
    """A Markdown table, a row per run, verifier and split (all items first), from each run's VERIFIER_SUMMARY.json."""
    lines = ["| run | verifier | split | false-negative rate [95% CI] (count/items) | false-positive rate [95% CI] "
             "(count/items) |", "|---|---|---|---|---|"]  # fmt: skip
    for run, eval_dir in runs.items():
        summary = load_summary(eval_dir, SUMMARY_FILE, "llmpost eval verifier")
        lines += [f"| {run} | {' | '.join(row)} |" for row in summary_rows(summary)]
    return "\n".join(lines)
