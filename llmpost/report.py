"""Compare evaluations: TOFU (a before/after table and a forget-quality vs model-utility plot), MUSE (a table) and
MATH (a pass@k table and pass@k-vs-k curves).

Each run is a directory holding ``TOFU_EVAL.json`` and ``TOFU_SUMMARY.json`` (ours or open-unlearning's). When a
run has no forget_quality (it was evaluated without a retain log, e.g. the retain model itself) and a retain log is
given, forget_quality is computed here from the two logs' per-example forget truth ratios, with the same KS test.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .data.files import read_json
from .eval.metrics import forget_quality
from .eval.tofu import EVAL_FILE, SUMMARY_FILE, load_retain_logs

TABLE_KEYS = ("forget_quality", "model_utility", "forget_Q_A_Prob", "forget_truth_ratio", "retain_Q_A_Prob")


def _truth_ratios(logs: dict) -> list[float]:
    return [v["score"] for v in logs["forget_truth_ratio"]["value_by_index"].values()]


def load_summary(eval_dir: str | os.PathLike, summary_file: str, command: str) -> dict:
    """A run's summary file, or ``FileNotFoundError`` saying which command writes it."""
    path = Path(eval_dir) / summary_file
    if not path.is_file():
        raise FileNotFoundError(f"no {summary_file} in {str(eval_dir)!r}: evaluate the model first ({command})")
    return read_json(path)


def load_run(eval_dir: str | os.PathLike, retain_logs: dict | None = None) -> dict[str, float | None]:
    """The summary of one evaluated run, with forget_quality filled in from ``retain_logs`` where missing."""
    d = Path(eval_dir)
    summary = load_summary(d, SUMMARY_FILE, "llmpost eval tofu")
    if summary.get("forget_quality") is None and retain_logs is not None:
        logs = read_json(d / EVAL_FILE)
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


def markdown_table(runs: dict[str, dict], keys=TABLE_KEYS, first_column: str = "run") -> str:
    """A Markdown table: a row per named run, a column per key (numbers to 4 significant digits, '-' where missing)."""

    def fmt(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)

    lines = [f"| {first_column} | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {name} | " + " | ".join(fmt(s.get(k)) for k in keys) + " |" for name, s in runs.items()]
    return "\n".join(lines)


def scatter_panels(runs: dict[str, dict], panels, path: str | os.PathLike) -> None:
    """One labelled point per run in each panel; ``panels`` are ``(xkey, ykey, xlabel, ylabel, log_y, title)``.
    The PNG is written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), dpi=120, squeeze=False)
    for ax, (xkey, ykey, xlabel, ylabel, logy, title) in zip(axes[0], panels):
        for name, s in runs.items():
            x, y = s.get(xkey), s.get(ykey)
            if x is None or y is None:
                continue
            y = max(y, 1e-30) if logy else y
            ax.scatter(x, y, s=60)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4))
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)


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


def plot_muse_runs(runs: dict[str, dict], path: str | os.PathLike) -> None:
    """MUSE's trade-off: verbatim (C1) and knowledge (C2) memorisation of the forget set against utility, the retain
    set's knowledge memorisation (C4). Lower and to the right is better."""
    scatter_panels(runs, (
        ("retain_knowmem_ROUGE", "forget_verbmem_ROUGE", "utility: retain KnowMem ROUGE", "forget VerbMem ROUGE", False,
         "MUSE: VerbMem vs utility"),
        ("retain_knowmem_ROUGE", "forget_knowmem_ROUGE", "utility: retain KnowMem ROUGE", "forget KnowMem ROUGE", False,
         "MUSE: KnowMem vs utility"),
    ), path)


def tofu_report(runs: dict[str, str], retain_logs_path: str | None = None, plot_path: str | None = None) -> str:
    """Load each named run's evaluation, return the table, and write the plot if asked."""
    retain_logs = load_retain_logs(retain_logs_path) if retain_logs_path else None
    loaded = {name: load_run(d, retain_logs) for name, d in runs.items()}
    if plot_path:
        plot_runs(loaded, plot_path)
    return format_table(loaded)


def muse_report(runs: dict[str, str]) -> str:
    """The table of several MUSE runs: one column per named ``MUSE_SUMMARY.json`` directory, rows
    :data:`llmpost.eval.muse.SUMMARY_KEYS`."""
    from .eval.muse import SUMMARY_FILE as MUSE_SUMMARY
    from .eval.muse import SUMMARY_KEYS

    return format_table({name: load_summary(d, MUSE_SUMMARY, "llmpost eval muse") for name, d in runs.items()},
                        SUMMARY_KEYS)  # fmt: skip


def _save_figure(fig, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


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
    _save_figure(fig, path)


def math_report(runs: dict[str, str], plot_path: str | None = None) -> str:
    """The pass@k table of several MATH runs (rows: runs; columns: pass@k for every k all runs share), and the plot."""
    from .eval.math import SUMMARY_FILE as MATH_SUMMARY

    loaded = {name: load_summary(d, MATH_SUMMARY, "llmpost eval math") for name, d in runs.items()}
    shared = set.intersection(*(set(s["pass@k"]) for s in loaded.values()))
    ks = sorted(shared, key=int)
    rows = {name: {f"pass@{k}": s["pass@k"][k]["mean"] for k in ks} | {"problems": s["num_problems"]}
            for name, s in loaded.items()}  # fmt: skip
    if plot_path:
        plot_passk(loaded, plot_path)
    return markdown_table(rows, ["problems"] + [f"pass@{k}" for k in ks])


# ----------------------------------------------------------------------------------------------------------------------
# Training curves and comparison runs


def curve(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of ``key`` in a trainer's log history (``log_history.json``), in step order; entries
    without the key, or with a null value, are skipped."""
    points = sorted((int(h["step"]), float(h[key])) for h in log_history if h.get(key) is not None and "step" in h)
    return [s for s, _ in points], [v for _, v in points]


def mean_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n); 0 for one value)."""
    m = sum(values) / len(values)
    var = sum((x - m) ** 2 for x in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return m, math.sqrt(var / len(values))


def mean_curve(curves: list[tuple[list[int], list[float]]]) -> tuple[list[int], list[float], list[float]]:
    """Mean and standard error (0 for one curve) across runs at the steps every run logged."""
    if not curves:
        return [], [], []
    steps = sorted(set.intersection(*(set(s) for s, _ in curves)))
    stats = [mean_stderr([v[s.index(step)] for s, v in curves]) for step in steps]
    return steps, [m for m, _ in stats], [e for _, e in stats]


def plot_curves(panels: list[dict], path: str | os.PathLike, title: str | None = None) -> None:
    """One row of line plots. Each panel: ``{"title", "ylabel", "series": {name: (steps, means, stderrs)},
    "hline": optional (value, label), "xlabel": optional (default "optimizer step"), "xticks": optional}``; a band of +-1 standard error is drawn where it is non-zero, and a series
    name has the same colour in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), dpi=120, squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors: dict[str, str] = {}  # one colour per series name in every panel
    for panel in panels:
        for name in panel["series"]:
            colors.setdefault(name, cycle[len(colors) % len(cycle)])
    for ax, panel in zip(axes[0], panels):
        for name, (steps, means, errs) in panel["series"].items():
            line = ax.plot(steps, means, label=name, color=colors[name])[0]
            if any(errs):
                ax.fill_between(steps, [m - e for m, e in zip(means, errs)], [m + e for m, e in zip(means, errs)],
                                color=line.get_color(), alpha=0.2)
        if panel.get("hline") is not None:
            value, label = panel["hline"]
            ax.axhline(value, color="black", linestyle="--", linewidth=1, label=label)
        ax.set_title(panel["title"])
        ax.set_xlabel(panel.get("xlabel", "optimizer step"))
        if panel.get("xticks") is not None:
            ax.set_xticks(panel["xticks"])
        ax.set_ylabel(panel["ylabel"])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save_figure(fig, path)


class RecipeRunner:
    """Runs recipes for a comparison script, each in its own process with its output streaming to the terminal,
    skipping a run whose result file exists (so an interrupted comparison resumes) unless ``rerun``; records wall
    times in ``timings``."""

    def __init__(self, root: str | os.PathLike, rerun: bool = False):
        self.root, self.rerun, self.timings = Path(root), rerun, {}

    def run(self, name: str, done_marker: str | os.PathLike, cmd: list[str]) -> None:
        import subprocess
        import sys
        import time

        done_marker = Path(done_marker)
        if done_marker.is_file() and not self.rerun:
            print(f"[compare] {name}: reusing {done_marker.parent}", flush=True)
            return
        print(f"[compare] {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, *cmd], cwd=self.root, env=env)
        if proc.returncode:
            raise SystemExit(f"[compare] {name} failed with exit status {proc.returncode}")
        self.timings[name] = round(time.perf_counter() - t0, 1)
        print(f"[compare] {name}: done in {self.timings[name]:.0f} s", flush=True)
