"""``llmpost report wmdp``: accuracy per subset and the ``wmdp`` group, one column per run."""

from __future__ import annotations

from llmpost.benchmarks.wmdp.data import GROUP, SUBSETS, task_name
from llmpost.benchmarks.wmdp.evaluate import SUMMARY_FILE
from llmpost.eval.stats import format_table, load_summary

TABLE_KEYS = (GROUP,) + tuple(task_name(s) for s in SUBSETS)


def wmdp_report(runs: dict[str, str]) -> str:
    """The table of the named runs' ``WMDP_SUMMARY.json`` (``-`` for a subset a run did not evaluate)."""
    loaded = {name: load_summary(d, SUMMARY_FILE, "llmpost eval wmdp") for name, d in runs.items()}
    return format_table(loaded, TABLE_KEYS)
