"""Statistics and tables shared by evaluations and reports: mean and standard error, the percentile bootstrap, result
summaries read back from disk, plain-text and markdown tables."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmpost.data.files import read_json


# ----- statistics ----------------------------------------------------------------------------------------------------
def bootstrap_mean(values: Sequence[float], n_resamples: int = 1000, seed: int = 0,
                   confidence: float = 0.95) -> tuple[float, float, float]:  # fmt: skip
    """``(mean, low, high)``: the sample mean and its percentile-bootstrap interval.

    ``n_resamples`` resamples of ``len(values)`` indices with replacement from ``numpy.random.Generator(PCG64(seed))``
    (the same seed and length give the same resamples, so intervals of paired quantities are computed on the same
    resampled examples); ``low``/``high`` are the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of
    the resample means (numpy's linear interpolation). All three are clipped to ``[min(values), max(values)]``, where
    every resample mean lies mathematically, so a constant input gives exactly ``(v, v, v)`` despite float rounding.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_mean: values must be a non-empty 1-D sequence, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("bootstrap_mean: values must be finite (no NaN or inf)")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"bootstrap_mean: n_resamples must be an integer >= 1, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap_mean: confidence must be in (0, 1), got {confidence!r}")
    rng = np.random.Generator(np.random.PCG64(seed))
    chunk = max(1, min(n_resamples, 2_000_000 // x.size))  # bounds the index matrix (~16 MB)
    means = np.concatenate([x[rng.integers(0, x.size, size=(min(chunk, n_resamples - s), x.size))].mean(axis=1)
                            for s in range(0, n_resamples, chunk)])  # fmt: skip
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    lo, hi = float(x.min()), float(x.max())
    clip = lambda v: float(min(max(float(v), lo), hi))  # noqa: E731
    return clip(x.mean()), clip(low), clip(high)


def load_summary(eval_dir: str | os.PathLike, summary_file: str, command: str) -> dict:
    """A run's summary file, or ``FileNotFoundError`` saying which command writes it."""
    path = Path(eval_dir) / summary_file
    if not path.is_file():
        raise FileNotFoundError(f"no {summary_file} in {str(eval_dir)!r}: evaluate the model first ({command})")
    return read_json(path)


def format_table(runs: dict[str, dict], keys) -> str:
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


def markdown_table(runs: dict[str, dict], keys, first_column: str = "run") -> str:
    """A Markdown table: a row per named run, a column per key (numbers to 4 significant digits, '-' where missing)."""

    def fmt(v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)

    lines = [f"| {first_column} | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {name} | " + " | ".join(fmt(s.get(k)) for k in keys) + " |" for name, s in runs.items()]
    return "\n".join(lines)


def mean_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample standard deviation / sqrt(n); 0 for one value)."""
    m = sum(values) / len(values)
    var = sum((x - m) ** 2 for x in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return m, math.sqrt(var / len(values))
