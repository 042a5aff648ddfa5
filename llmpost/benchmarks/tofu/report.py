"""``llmpost report tofu``: the table of evaluated TOFU runs and the forget-quality vs model-utility plot."""

from __future__ import annotations

import os
from pathlib import Path

from llmpost.benchmarks.tofu.evaluate import EVAL_FILE, SUMMARY_FILE, load_retain_logs
from llmpost.data.files import read_json
from llmpost.eval.metrics import forget_quality
from llmpost.eval.plots import scatter_panels
from llmpost.eval.stats import format_table, load_summary

TABLE_KEYS = ("forget_quality", "model_utility", "forget_Q_A_Prob", "forget_truth_ratio", "retain_Q_A_Prob")


def _truth_ratios(logs: dict) -> list[float]:
    return [v["score"] for v in logs["forget_truth_ratio"]["value_by_index"].values()]


def load_run(eval_dir: str | os.PathLike, retain_logs: dict | None = None) -> dict[str, float | None]:
    """The summary of one evaluated run, with forget_quality filled in from ``retain_logs`` where missing."""
    d = Path(eval_dir)
    summary = load_summary(d, SUMMARY_FILE, "llmpost eval tofu")
    if summary.get("forget_quality") is None and retain_logs is not None:
        logs = read_json(d / EVAL_FILE)
        summary["forget_quality"] = forget_quality(_truth_ratios(logs), _truth_ratios(retain_logs))["agg_value"]
    return summary


def plot_runs(runs: dict[str, dict], path: str | os.PathLike) -> None:
    """Two panels: forget quality (log scale) against model utility, TOFU's headline trade-off; and forget-set against
    retain-set answer probability, which still separates runs when a small model has no utility (its Real Authors /
    World Facts ROUGE of 0 makes the harmonic mean 0)."""
    scatter_panels(runs, (
        ("model_utility", "forget_quality", "model utility", "forget quality (KS-test p-value)", True,
         "TOFU: forget quality vs model utility"),
        ("retain_Q_A_Prob", "forget_Q_A_Prob", "retain Q/A probability", "forget Q/A probability", False,
         "forget vs retain answer probability"),
    ), path)


def tofu_report(runs: dict[str, str], retain_logs_path: str | None = None, plot_path: str | None = None) -> str:
    """Load each named run's evaluation, return the table, and write the plot if asked."""
    retain_logs = load_retain_logs(retain_logs_path) if retain_logs_path else None
    loaded = {name: load_run(d, retain_logs) for name, d in runs.items()}
    if plot_path:
        plot_runs(loaded, plot_path)
    return format_table(loaded, TABLE_KEYS)
