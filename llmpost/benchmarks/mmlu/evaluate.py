"""MMLU evaluation as lm-evaluation-harness 0.4 scores its default ``mmlu`` group (``lm_eval/tasks/mmlu/default/``):
the subject's description line, ``num_fewshot`` labelled examples (the first rows of the subject's dev split), then
``doc_to_text`` and the four letter continuations (:mod:`llmpost.eval.mcq`).

``MMLU_EVAL.json``: per subject task (``mmlu_anatomy``, ...) ``{"agg_value": acc, "value_by_index": {"<i>": {"pred",
"answer", "loglikelihoods"}}}``, ``i`` the question's 0-based position in the subject's test file.
``MMLU_SUMMARY.json``: ``num_fewshot``, each subject's acc, each category group's acc (``mmlu_stem``,
``mmlu_other``, ``mmlu_social_sciences``, ``mmlu_humanities``: the size-weighted mean of its subjects), and ``mmlu``
(the size-weighted mean of the categories, each weighing its number of questions), as lm-eval aggregates with
``weight_by_size: True``. lm-eval reports only ``acc`` for these tasks, so there is no ``acc_norm``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from llmpost.benchmarks.mmlu.data import CATEGORIES, GROUP, SUBJECTS, category_group, description, load_mmlu, task_name
from llmpost.eval.mcq import build_context, score_contexts, task_result, weighted_acc, write_results

logger = logging.getLogger(__name__)

EVAL_FILE = "MMLU_EVAL.json"
SUMMARY_FILE = "MMLU_SUMMARY.json"


@dataclass(frozen=True)
class MmluEvalSettings:
    """What :func:`evaluate_mmlu` evaluates and how."""

    data_dir: str
    """Directory holding ``test/`` and ``dev/`` (the original CSV release)."""
    num_fewshot: int = 0
    """Labelled examples before each question: 0 or 5 (the first rows of the dev split; it has 5 per subject)."""
    subjects: tuple[str, ...] = SUBJECTS
    batch_size: int = 8
    """Questions per forward pass (each contributes its four choice sequences)."""
    max_length: int | None = None
    """Token limit of an input; ``None``: the model's context length, as lm-eval resolves it."""
    max_examples: int | None = None
    """Only the first questions of each subject (quick checks; not the benchmark)."""


def compute_mmlu(model, tokenizer, settings: MmluEvalSettings) -> dict[str, dict]:
    """``{task: {"agg_value", "value_by_index"}}`` for each subject; writes nothing."""
    s = settings
    data = load_mmlu(s.data_dir, s.subjects, s.num_fewshot, s.max_examples)
    logs, t0 = {}, time.perf_counter()
    for subject in s.subjects:
        items, shots = data[subject]
        contexts = [build_context(description(subject), item, shots) for item in items]
        lls = score_contexts(model, tokenizer, contexts, batch_size=s.batch_size, max_length=s.max_length,
                             desc=task_name(subject))  # fmt: skip
        logs[task_name(subject)] = task_result(items, lls)
    logger.info("MMLU (%d-shot): %d subjects, %d questions in %.1fs", s.num_fewshot, len(logs),
                sum(len(v["value_by_index"]) for v in logs.values()), time.perf_counter() - t0)  # fmt: skip
    return logs


def group_accuracies(logs: dict[str, dict]) -> dict[str, float]:
    """The category groups (those with an evaluated subject) and ``mmlu``, aggregated as lm-eval does."""
    groups, cat_accs, cat_sizes = {}, [], []
    for category, subjects in CATEGORIES.items():
        tasks = [task_name(s) for s in subjects if task_name(s) in logs]
        if not tasks:
            continue
        sizes = [len(logs[t]["value_by_index"]) for t in tasks]
        groups[category_group(category)] = weighted_acc([logs[t]["agg_value"] for t in tasks], sizes)
        cat_accs.append(groups[category_group(category)])
        cat_sizes.append(sum(sizes))
    return {GROUP: weighted_acc(cat_accs, cat_sizes), **groups}


def summarize(logs: dict[str, dict], num_fewshot: int) -> dict[str, float | int]:
    """``num_fewshot``, ``mmlu``, the category groups, then each subject's acc."""
    return {"num_fewshot": num_fewshot, **group_accuracies(logs),
            **{task: entry["agg_value"] for task, entry in logs.items()}}  # fmt: skip


def evaluate_mmlu(model, tokenizer, settings: MmluEvalSettings, output_dir: str | Path | None = None) -> dict:
    """Evaluate ``model`` on MMLU; write ``MMLU_EVAL.json`` / ``MMLU_SUMMARY.json`` into ``output_dir`` (rank 0, if
    given); return the summary. Every rank of a ``torch.distributed`` group must call it."""
    logs = compute_mmlu(model, tokenizer, settings)
    summary = summarize(logs, settings.num_fewshot)
    if output_dir is not None:
        write_results(logs, summary, output_dir, EVAL_FILE, SUMMARY_FILE)
    return summary
