"""Evaluation: one module per benchmark (``tofu``), plus the shared metric functions (``metrics``).

The benchmark entry points are imported lazily, so that ``llmpost.eval.metrics`` stays light (no transformers/TRL).
"""

from __future__ import annotations

__all__ = ["compute_tofu_metrics", "evaluate_tofu", "load_retain_logs"]


def __getattr__(name: str):
    if name in __all__:
        from . import tofu

        return getattr(tofu, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
