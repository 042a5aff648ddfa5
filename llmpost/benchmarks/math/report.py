"""``llmpost report math``: pass@k tables and curves of evaluated runs."""

from __future__ import annotations

import os

from llmpost.eval.plots import save_figure
from llmpost.eval.stats import load_summary, markdown_table


def plot_passk(runs: dict[str, dict], path: str | os.PathLike, key: str = "pass@k") -> None:
    """pass@k against k (log2 axis) for several MATH summaries, one line per run with its 95% bootstrap band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for name, summary in runs.items():
        curve = sorted((int(k), v) for k, v in summary[key].items())
        ks = [k for k, _ in curve]
        ax.plot(ks, [v["mean"] for _, v in curve], marker="o", label=name)
        ax.fill_between(ks, [v["ci_low"] for _, v in curve], [v["ci_high"] for _, v in curve], alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel(key.replace("@k", "@k (mean over problems)"))
    ax.set_title("MATH: pass@k")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def math_report(runs: dict[str, str], plot_path: str | None = None) -> str:
    """The pass@k table of several MATH runs (rows: runs; columns: pass@k for every k all runs share), and the plot."""
    from llmpost.benchmarks.math.evaluate import SUMMARY_FILE as MATH_SUMMARY

    loaded = {name: load_summary(d, MATH_SUMMARY, "llmpost eval math") for name, d in runs.items()}
    shared = set.intersection(*(set(s["pass@k"]) for s in loaded.values()))
    ks = sorted(shared, key=int)
    rows = {name: {f"pass@{k}": s["pass@k"][k]["mean"] for k in ks} | {"problems": s["num_problems"]}
            for name, s in loaded.items()}  # fmt: skip
    if plot_path:
        plot_passk(loaded, plot_path)
    return markdown_table(rows, ["problems"] + [f"pass@{k}" for k in ks])
