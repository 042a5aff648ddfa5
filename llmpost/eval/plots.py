"""Plot helpers shared by the benchmark reports: scatter panels of runs and an atomic PNG save."""

from __future__ import annotations

import os
from pathlib import Path


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
    save_figure(fig, path)


def save_figure(fig, path: str | os.PathLike) -> None:
    import matplotlib.pyplot as plt

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
