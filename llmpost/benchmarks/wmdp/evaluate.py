"""WMDP evaluation as lm-evaluation-harness 0.4 scores its ``wmdp`` group (``lm_eval/tasks/wmdp/``): zero-shot, the
task's description line, then ``doc_to_text`` and the four letter continuations (:mod:`llmpost.eval.mcq`).

``WMDP_EVAL.json``: per task (``wmdp_bio``, ``wmdp_chem``, ``wmdp_cyber``) ``{"agg_value": acc, "value_by_index":
{"<i>": {"pred", "answer", "loglikelihoods"}}}``, ``i`` the question's 0-based position in its file.
``WMDP_SUMMARY.json``: each task's acc and the group ``wmdp``, the size-weighted mean of the tasks' acc (lm-eval's
``weight_by_size: True``). lm-eval reports only ``acc`` for these tasks (their ``metric_list``), so there is no
``acc_norm``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from llmpost.benchmarks.wmdp.data import GROUP, SUBSETS, description, load_wmdp, task_name
from llmpost.eval.mcq import build_context, score_contexts, task_result, weighted_acc, write_results

logger = logging.getLogger(__name__)

EVAL_FILE = "WMDP_EVAL.json"
SUMMARY_FILE = "WMDP_SUMMARY.json"


@dataclass(frozen=True)
class WmdpEvalSettings:
    """What :func:`evaluate_wmdp` evaluates and how."""

    data_dir: str
    """Directory of ``{bio,chem,cyber}_questions.json``."""
    subsets: tuple[str, ...] = SUBSETS
    batch_size: int = 8
    """Questions per forward pass (each contributes its four choice sequences)."""
    max_length: int | None = None
    """Token limit of an input; ``None``: the model's context length, as lm-eval resolves it."""
    max_examples: int | None = None
    """Only the first questions of each subset (quick checks; not the benchmark)."""


def compute_wmdp(model, tokenizer, settings: WmdpEvalSettings) -> dict[str, dict]:
    """``{task: {"agg_value", "value_by_index"}}`` for each subset; writes nothing."""
    s = settings
    tasks = load_wmdp(s.data_dir, s.subsets, s.max_examples)
    logs = {}
    for subset in s.subsets:
        items, t0 = tasks[task_name(subset)], time.perf_counter()
        contexts = [build_context(description(subset), item) for item in items]
        lls = score_contexts(model, tokenizer, contexts, batch_size=s.batch_size, max_length=s.max_length,
                             desc=task_name(subset))  # fmt: skip
        logs[task_name(subset)] = task_result(items, lls)
        logger.info("%s: %d questions in %.1fs, acc %.4f", task_name(subset), len(items), time.perf_counter() - t0,
                    logs[task_name(subset)]["agg_value"])  # fmt: skip
    return logs


def summarize(logs: dict[str, dict]) -> dict[str, float]:
    """Each task's acc, then the group ``wmdp`` (size-weighted over the evaluated tasks)."""
    summary = {task: entry["agg_value"] for task, entry in logs.items()}
    sizes = [len(entry["value_by_index"]) for entry in logs.values()]
    summary[GROUP] = weighted_acc(list(summary.values()), sizes)
    return summary


def evaluate_wmdp(model, tokenizer, settings: WmdpEvalSettings, output_dir: str | Path | None = None) -> dict:
    """Evaluate ``model`` on WMDP; write ``WMDP_EVAL.json`` / ``WMDP_SUMMARY.json`` into ``output_dir`` (rank 0, if
    given); return the summary. Every rank of a ``torch.distributed`` group must call it."""
    logs = compute_wmdp(model, tokenizer, settings)
    summary = summarize(logs)
    if output_dir is not None:
        write_results(logs, summary, output_dir, EVAL_FILE, SUMMARY_FILE)
    return summary
