"""Unbiased pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", arXiv 2107.03374, eq. 1).

With ``n`` samples per problem of which ``c`` are correct, the unbiased estimate of pass@k is
``1 - C(n - c, k) / C(n, k)``: one minus the probability that ``k`` samples drawn without replacement are all wrong.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np

__all__ = ["pass_at_k", "pass_at_k_curve", "powers_of_two_upto"]


def _as_int(name: str, value) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021, arXiv 2107.03374).

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` in log space (``-expm1(sum(log1p(-k/i)))``), which has no huge
    binomials and keeps relative accuracy both near 0 and near 1 (checked against exact fractions for n = 10^4).
    Returns 1.0 when ``n - c < k`` (every draw of k samples holds a correct one).
    Deviations from the paper: none (the paper's numpy snippet uses the same product form, without log space).

    Raises ValueError (naming the argument) for n < 1, c < 0, c > n, k < 1 or k > n.
    """
    n, c, k = _as_int("n", n), _as_int("c", c), _as_int("k", k)
    if n < 1:
        raise ValueError(f"n (samples per problem) must be >= 1, got n={n}")
    if c < 0:
        raise ValueError(f"c (correct samples) must be >= 0, got c={c}")
    if c > n:
        raise ValueError(f"c (correct samples) must be <= n, got c={c} > n={n}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}")
    if k > n:
        raise ValueError(f"k must be <= n, got k={k} > n={n}")
    if n - c < k:
        return 1.0
    if c == 0:
        return 0.0
    log_all_wrong = float(np.log1p(-k / np.arange(n - c + 1, n + 1, dtype=np.float64)).sum())
    return float(-math.expm1(log_all_wrong))


def powers_of_two_upto(n: int) -> list[int]:
    """``[1, 2, 4, ...]`` up to and including ``n`` (empty for n < 1)."""
    n = _as_int("n", n)
    out, p = [], 1
    while p <= n:
        out.append(p)
        p *= 2
    return out


def pass_at_k_curve(
    ns: Sequence[int],
    cs: Sequence[int],
    ks: Sequence[int] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[int, dict]:
    """pass@k averaged over problems, for several k.

    ``ns[i]`` samples were drawn for problem i and ``cs[i]`` of them are correct; problems may have different n.
    ``ks`` defaults to the powers of two up to ``min(ns)`` plus ``min(ns)`` itself. For each k returns
    ``{"mean", "stderr", "ci_low", "ci_high"}``: the mean over problems of :func:`pass_at_k`, its standard error across
    problems (``std(ddof=1) / sqrt(P)``, 0 for one problem), and a percentile bootstrap 95% interval from ``bootstrap``
    resamples of the problems (``numpy.random.Generator(PCG64(seed))``; the same resamples serve every k).

    Raises ValueError for empty input, ``len(ns) != len(cs)``, a k larger than some n, or ``bootstrap < 1``.
    """
    if len(ns) == 0:
        raise ValueError("ns is empty: pass@k needs at least one problem")
    if len(ns) != len(cs):
        raise ValueError(f"ns and cs must have the same length, got {len(ns)} and {len(cs)}")
    if _as_int("bootstrap", bootstrap) < 1:
        raise ValueError(f"bootstrap must be >= 1, got bootstrap={bootstrap}")
    min_n = min(_as_int("ns[i]", n) for n in ns)
    if ks is None:
        ks = sorted(set(powers_of_two_upto(min_n)) | {min_n})
    if len(ks) == 0:
        raise ValueError("ks is empty")
    for k in ks:
        if _as_int("k", k) > min_n:
            raise ValueError(f"k={k} exceeds the smallest number of samples per problem (min(ns)={min_n})")
    num_problems = len(ns)
    rng = np.random.Generator(np.random.PCG64(seed))
    resamples = [rng.integers(0, num_problems, size=(min(100, bootstrap - s), num_problems)) for s in range(0, bootstrap, 100)]
    out: dict[int, dict] = {}
    for k in ks:
        values = np.array([pass_at_k(n, c, k) for n, c in zip(ns, cs)], dtype=np.float64)
        stderr = float(values.std(ddof=1) / math.sqrt(num_problems)) if num_problems > 1 else 0.0
        boot_means = np.concatenate([values[idx].mean(axis=1) for idx in resamples])
        low, high = np.percentile(boot_means, [2.5, 97.5])
        out[int(k)] = {"mean": float(values.mean()), "stderr": stderr, "ci_low": float(low), "ci_high": float(high)}
    return out
