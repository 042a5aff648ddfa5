"""Evaluation pieces every benchmark shares: metric functions (``metrics``; membership inference and extraction in
``mia``), pass@k (``passk``), sharding over processes (``shard``), statistics and tables (``stats``), plots (``plots``)
and the held-out language-modelling loss (``lm_loss``). The benchmarks themselves live in :mod:`llmpost.benchmarks`."""

from __future__ import annotations

from collections.abc import Callable

Evaluator = Callable[..., dict]
"""``evaluate(model, tokenizer, training_args, eval_dir) -> summary``: a benchmark's evaluation of a saved model, run
on every process (items sharded), writing its result files into ``eval_dir`` on the main process."""
