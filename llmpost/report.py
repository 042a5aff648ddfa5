"""Compare TOFU evaluations: a before/after table and a forget-quality vs model-utility plot.

Each run is a directory holding ``TOFU_EVAL.json`` and ``TOFU_SUMMARY.json`` (ours or open-unlearning's). When a
run has no forget_quality (it was evaluated without a retain log, e.g. the retain model itself) and a retain log is
given, forget_quality is computed here from the two logs' per-example forget truth ratios, with the same KS test.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .eval.metrics import forget_quality
from .eval.tofu import EVAL_FILE, SUMMARY_FILE, load_retain_logs

TABLE_KEYS = ("forget_quality", "model_utility", "forget_Q_A_Prob", "forget_truth_ratio", "retain_Q_A_Prob")


def _truth_ratios(logs: dict) -> list[float]:
    return [v["score"] for v in logs["forget_truth_ratio"]["value_by_index"].values()]


def load_run(eval_dir: str | os.PathLike, retain_logs: dict | None = None) -> dict[str, float | None]:
    """The summary of one evaluated run, with forget_quality filled in from ``retain_logs`` where missing."""
    d = Path(eval_dir)
    summary_path = d / SUMMARY_FILE
    if not summary_path.is_file():
        raise FileNotFoundError(f"no {SUMMARY_FILE} in {str(d)!r}: evaluate the model first (llmpost eval tofu)")
    summary = json.loads(summary_path.read_text())
    if summary.get("forget_quality") is None and retain_logs is not None:
        logs = json.loads((d / EVAL_FILE).read_text())
        summary["forget_quality"] = forget_quality(_truth_ratios(logs), _truth_ratios(retain_logs))["agg_value"]
    return summary


def format_table(runs: dict[str, dict], keys=TABLE_KEYS) -> str:
    """Rows are metrics, columns are runs, in the given order."""
    names = list(runs)
    width = max(len(k) for k in keys)
    cols = [max(10, len(n)) for n in names]

    def fmt(v, w):
        return f"{'-':>{w}}" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:>{w}.4g}"

    lines = [f"{'metric':<{width}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, cols))]
    for key in keys:
        lines.append(f"{key:<{width}}  " + "  ".join(fmt(runs[n].get(key), w) for n, w in zip(names, cols)))
    return "\n".join(lines)


def plot_runs(runs: dict[str, dict], path: str | os.PathLike) -> None:
    """Scatter of forget quality (log scale, higher is better) against model utility, one labelled point per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    for name, s in runs.items():
        fq, mu = s.get("forget_quality"), s.get("model_utility")
        if fq is None or mu is None:
            continue
        ax.scatter(mu, max(fq, 1e-30), s=60)
        ax.annotate(name, (mu, max(fq, 1e-30)), textcoords="offset points", xytext=(6, 4))
    ax.set_yscale("log")
    ax.set_xlabel("model utility")
    ax.set_ylabel("forget quality (KS-test p-value)")
    ax.set_title("TOFU: forget quality vs model utility")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def tofu_report(runs: dict[str, str], retain_logs_path: str | None = None, plot_path: str | None = None) -> str:
    """Load each named run's evaluation, return the table, and write the plot if asked."""
    retain_logs = load_retain_logs(retain_logs_path) if retain_logs_path else None
    loaded = {name: load_run(d, retain_logs) for name, d in runs.items()}
    if plot_path:
        plot_runs(loaded, plot_path)
    return format_table(loaded)
