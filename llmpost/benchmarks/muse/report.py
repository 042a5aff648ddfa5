"""``llmpost report muse``: the table of evaluated MUSE runs, and a plot."""

from __future__ import annotations

import os

from llmpost.eval.plots import scatter_panels
from llmpost.eval.stats import format_table, load_summary


def plot_muse_runs(runs: dict[str, dict], path: str | os.PathLike) -> None:
    """MUSE's trade-off: verbatim (C1) and knowledge (C2) memorisation of the forget set against utility, the retain
    set's knowledge memorisation (C4). Lower and to the right is better."""
    scatter_panels(runs, (
        ("retain_knowmem_ROUGE", "forget_verbmem_ROUGE", "utility: retain KnowMem ROUGE", "forget VerbMem ROUGE", False,
         "MUSE: VerbMem vs utility"),
        ("retain_knowmem_ROUGE", "forget_knowmem_ROUGE", "utility: retain KnowMem ROUGE", "forget KnowMem ROUGE", False,
         "MUSE: KnowMem vs utility"),
    ), path)


def muse_report(runs: dict[str, str]) -> str:
    """The table of several MUSE runs: one column per named ``MUSE_SUMMARY.json`` directory, rows
    :data:`llmpost.benchmarks.muse.evaluate.SUMMARY_KEYS`."""
    from llmpost.benchmarks.muse.evaluate import SUMMARY_FILE as MUSE_SUMMARY
    from llmpost.benchmarks.muse.evaluate import SUMMARY_KEYS

    return format_table({name: load_summary(d, MUSE_SUMMARY, "llmpost eval muse") for name, d in runs.items()},
                        SUMMARY_KEYS)  # fmt: skip
