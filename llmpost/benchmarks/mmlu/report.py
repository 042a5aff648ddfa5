"""``llmpost report mmlu``: the ``mmlu`` group and its four categories, one column per run."""

from __future__ import annotations

from llmpost.benchmarks.mmlu.data import CATEGORIES, GROUP, category_group
from llmpost.benchmarks.mmlu.evaluate import SUMMARY_FILE
from llmpost.eval.stats import format_table, load_summary

TABLE_KEYS = ("num_fewshot", GROUP) + tuple(category_group(c) for c in CATEGORIES)


def mmlu_report(runs: dict[str, str], subjects: bool = False) -> str:
    """The table of the named runs' ``MMLU_SUMMARY.json``; ``subjects`` adds a row per subject task."""
    loaded = {name: load_summary(d, SUMMARY_FILE, "llmpost eval mmlu") for name, d in runs.items()}
    keys = list(TABLE_KEYS)
    if subjects:
        keys += sorted({k for s in loaded.values() for k in s if k.startswith("mmlu_") and k not in keys})
    return format_table(loaded, keys)
