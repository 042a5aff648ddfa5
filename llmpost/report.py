"""Training curves across runs (``log_history.json``): one curve per logged key, the mean and standard error across
seeds, and a row of line plots. The benchmark reports live in ``llmpost.benchmarks.<name>.report``."""

from __future__ import annotations

import os

from llmpost.eval.plots import save_figure
from llmpost.eval.stats import mean_stderr


def curve(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of ``key`` in a trainer's log history (``log_history.json``), in step order; entries
    without the key, or with a null value, are skipped."""
    points = sorted((int(h["step"]), float(h[key])) for h in log_history if h.get(key) is not None and "step" in h)
    return [s for s, _ in points], [v for _, v in points]


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
    save_figure(fig, path)




def eval_curves(runs: dict[str, str | os.PathLike], keys: list[str], plot_path: str | os.PathLike | None = None) -> str:
    """``llmpost report curves``: the evaluation curves of runs that evaluated during training (their
    ``log_history.json``, keys ``eval_<key>``), one panel per key with each run's selected step marked (its
    ``SELECTION.json``); returns a text table (run, step, values; ``*`` marks the selected step)."""
    import json
    from pathlib import Path

    from llmpost.data.files import read_json

    rows, panels = [], {k: {} for k in keys}
    chosen = {}
    for name, run_dir in runs.items():
        d = Path(run_dir)
        history = read_json(d / "log_history.json")
        if not isinstance(history, list):
            raise ValueError(f"{d / 'log_history.json'}: expected a list of logged dicts")
        sel = d / "SELECTION.json"
        chosen[name] = json.loads(sel.read_text())["chosen"]["step"] if sel.is_file() else None
        per_key = {k: dict(zip(*curve(history, f"eval_{k}"))) for k in keys}
        steps = sorted(set().union(*(set(v) for v in per_key.values())))
        if not steps:
            raise ValueError(f"{d}: log_history.json has no eval_{keys[0]} (was the run evaluated during training?)")
        for step in steps:
            mark = "*" if step == chosen[name] else ""
            rows.append([name, f"{step}{mark}", *(f"{per_key[k][step]:.4g}" if step in per_key[k] else "-" for k in keys)])
        for k in keys:
            s = sorted(per_key[k])
            panels[k][name] = (s, [per_key[k][x] for x in s], [0.0] * len(s))
    if plot_path:
        plot_curves([{"title": k, "ylabel": k, "series": panels[k]} for k in keys], plot_path,
                    title="evaluation during training" + "".join(
                        f"; {n}: selected step {c}" for n, c in chosen.items() if c is not None))  # fmt: skip
    header = ["run", "step", *keys]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *rows])
