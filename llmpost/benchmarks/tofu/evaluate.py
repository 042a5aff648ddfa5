"""TOFU evaluation (arXiv 2401.06121) with open-unlearning's metric definitions, key names and result files.

The entries, their splits and definitions (:mod:`llmpost.eval.metrics`), as open-unlearning's
``configs/eval/tofu.yaml`` and ``configs/eval/tofu_metrics/*.yaml`` define them (``F`` = ``{forget_split}_perturbed``,
e.g. ``forget10_perturbed``):

* ``forget_Q_A_Prob`` / ``forget_Q_A_PARA_Prob`` / ``forget_Q_A_PERT_Prob``: length-normalised probability of F's
  ``answer`` / ``paraphrased_answer`` / each ``perturbed_answer`` (lists of 5);
* ``forget_truth_ratio``: truth ratio PERT vs PARA, aggregated ``closer_to_1_better``;
* ``forget_Q_A_ROUGE``: ROUGE-L recall of greedy generations for F's questions against its answers;
* ``forget_quality``: KS-test p-value between ``forget_truth_ratio`` and the retain log's ``forget_truth_ratio``;
* ``retain_*``: the same on ``retain_perturbed``, with ``retain_Truth_Ratio`` aggregated ``true_better``;
* ``ra_*`` / ``wf_*`` (``real_authors_perturbed`` / ``world_facts_perturbed``): ``_Q_A_Prob`` (answer),
  ``_Q_A_PERT_Prob`` (3 perturbed answers), ``_Q_A_Prob_normalised`` (p / (p + sum p_pert)), ``_Truth_Ratio``
  (PERT vs the answer itself, ``true_better``), ``_Q_A_ROUGE``;
* ``model_utility``: harmonic mean of the nine retain / ra / wf numbers;
* ``extraction_strength``: mean extraction strength of F's answers;
* ``mia_min_k``: Min-K% (k = 0.4) AUC, F's answers vs the holdout split's (``holdoutNN`` matching the forget split);
* ``privleak``: ``mia_min_k`` relative to the retain log's ``mia_min_k`` in percent (to an AUC of 0.5 without one).

Every question is asked with the ``question`` column (open-unlearning's ``question_key``). ``TOFU_EVAL.json`` holds
every entry (``{"agg_value", "value_by_index"}``, keys sorted as open-unlearning writes them), ``TOFU_SUMMARY.json``
each entry's ``agg_value``. Without a retain log, ``forget_quality`` is ``null`` in ``TOFU_EVAL.json`` and absent
from the summary (as in open-unlearning).

Forward passes are batched longest-first with right padding, so results do not depend on the batch size beyond float
noise; generations use left padding (:mod:`llmpost.generation`). Under ``torch.distributed`` (an initialised process
group, e.g. after ``Accelerator()`` under ``accelerate launch``), every rank must call :func:`evaluate_tofu`: examples
are split evenly across ranks (each runs the same number of batches, as DeepSpeed ZeRO-3 requires), results are
gathered on all ranks, and rank 0 writes the files. Pass the unwrapped model (``accelerator.unwrap_model(model)``).

Deviations from open-unlearning, none of which changes a number beyond float noise: log-probabilities are computed in
float32 whatever the model dtype; the ROUGE ground truth is decoded per example (no pad tokens to strip); generation
also stops at the tokenizer's EOS when the model's generation config lacks it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llmpost.benchmarks.tofu.data import load_split
from llmpost.benchmarks.tofu.scoring import _rouge_splits, _score_splits
from llmpost.data.templates import TemplateArgs
from llmpost.eval import metrics as M
from llmpost.eval.shard import world
from llmpost.generation import GenerationBackend
from llmpost.utils import DataError, RetainLogError, atomic_write_json

logger = logging.getLogger(__name__)

EVAL_FILE = "TOFU_EVAL.json"
SUMMARY_FILE = "TOFU_SUMMARY.json"
# The top-level metrics of open-unlearning's configs/eval/tofu.yaml, listed first in printed tables.
HEADLINE_KEYS = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE",
                 "privleak", "extraction_strength")  # fmt: skip
MIA_K = 0.4  # open-unlearning configs/eval/tofu_metrics/mia_min_k.yaml
PRIVLEAK_REF_VALUE = 0.5  # open-unlearning configs/eval/tofu_metrics/privleak.yaml: AUC used without a retain log


# ----------------------------------------------------------------------------------------------------------------------
# Retain logs


def load_retain_logs(path: str | Path) -> dict[str, Any]:
    """Read a retain model's ``TOFU_EVAL.json`` (ours or open-unlearning's) and check what forget quality needs.

    Requires ``["forget_truth_ratio"]["value_by_index"][i]["score"]`` (numbers); ``mia_min_k`` (for privleak) is
    optional. Raises :class:`RetainLogError` naming the file and the missing or malformed key.
    """
    path = Path(path)
    if not path.is_file():
        raise RetainLogError(f"retain log {str(path)!r} does not exist (expected the retain model's {EVAL_FILE})")
    try:
        logs = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RetainLogError(f"retain log {str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(logs, dict):
        raise RetainLogError(f"retain log {str(path)!r} must hold a JSON object, got {type(logs).__name__}")
    entry = logs.get("forget_truth_ratio")
    by_index = entry.get("value_by_index") if isinstance(entry, dict) else None
    if not isinstance(by_index, dict) or not by_index:
        raise RetainLogError(f"retain log {str(path)!r} lacks a non-empty 'forget_truth_ratio' -> 'value_by_index'")
    for key, value in by_index.items():
        score = value.get("score") if isinstance(value, dict) else None
        if not isinstance(score, (int, float)):
            raise RetainLogError(
                f"retain log {str(path)!r}: 'forget_truth_ratio' -> 'value_by_index' -> {key!r} has no numeric 'score'"
            )
    return logs


# ----------------------------------------------------------------------------------------------------------------------
# The evaluation


def _holdout_for(forget_split: str) -> str | None:
    match = re.fullmatch(r"forget(\d+)", forget_split)
    return f"holdout{match.group(1)}" if match else None


def _split_available(split: str, data_dir: str | None) -> bool:
    return data_dir is None or (Path(data_dir) / f"{split}.jsonl").is_file()


def load_tofu_eval_splits(
    data_dir: str | None, forget_split: str = "forget10", holdout_split: str | None = None,
    max_examples: int | None = None,
) -> dict[str, list[dict]]:  # fmt: skip
    """Rows of the evaluation splits: ``forget`` (``{forget_split}_perturbed``), ``retain`` (``retain_perturbed``),
    ``ra``, ``wf``, and ``holdout`` when available (``holdout_split``, by default the forget split's ``holdoutNN``;
    skipped with a warning when that default is absent). ``max_examples`` keeps the first rows of each (for tests)."""
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    perturbed = ("question", "answer", "paraphrased_answer", "perturbed_answer")
    wanted = {
        "forget": (f"{forget_split}_perturbed", perturbed),
        "retain": ("retain_perturbed", perturbed),
        "ra": ("real_authors_perturbed", ("question", "answer", "perturbed_answer")),
        "wf": ("world_facts_perturbed", ("question", "answer", "perturbed_answer")),
    }
    splits = {}
    for name, (split, columns) in wanted.items():
        splits[name] = _load_rows(split, data_dir, columns, max_examples)
    if holdout_split is None:
        holdout_split = _holdout_for(forget_split)
        if holdout_split is None or not _split_available(holdout_split, data_dir):
            logger.warning("No holdout split for %r: mia_min_k and privleak are not computed", forget_split)
            holdout_split = None
    if holdout_split is not None:
        splits["holdout"] = _load_rows(holdout_split, data_dir, ("question", "answer"), max_examples)
    return splits


def _load_rows(split: str, data_dir: str | None, columns: Sequence[str], max_examples: int | None) -> list[dict]:
    rows = load_split(split, data_dir, required_columns=tuple(columns)).to_list()
    if not rows:
        raise DataError(f"TOFU split {split!r} is empty")
    return rows[:max_examples] if max_examples else rows


def _assemble(stats, rouges, retain_logs, n_forget: int) -> dict[str, M.MetricResult]:
    """Every TOFU entry from the per-answer statistics, the ROUGE results and the retain log (may be ``None``)."""
    logs: dict[str, M.MetricResult] = {}
    for p in ("forget", "retain", "ra", "wf"):
        logs[f"{p}_Q_A_Prob"] = M.probability([s.avg_loss for s in stats[p]["answer"]])
        logs[f"{p}_Q_A_PERT_Prob"] = M.probability([[s.avg_loss for s in o] for o in stats[p]["perturbed_answer"]])
        if p in rouges:
            logs[f"{p}_Q_A_ROUGE"] = rouges[p]
    for p in ("forget", "retain"):
        logs[f"{p}_Q_A_PARA_Prob"] = M.probability([s.avg_loss for s in stats[p]["paraphrased_answer"]])
    tr = M.truth_ratio
    logs["forget_truth_ratio"] = tr(logs["forget_Q_A_PARA_Prob"], logs["forget_Q_A_PERT_Prob"], "closer_to_1_better")
    logs["retain_Truth_Ratio"] = tr(logs["retain_Q_A_PARA_Prob"], logs["retain_Q_A_PERT_Prob"], "true_better")
    for p in ("ra", "wf"):
        logs[f"{p}_Q_A_Prob_normalised"] = M.normalised_probability(logs[f"{p}_Q_A_Prob"], logs[f"{p}_Q_A_PERT_Prob"])
        logs[f"{p}_Truth_Ratio"] = tr(logs[f"{p}_Q_A_Prob"], logs[f"{p}_Q_A_PERT_Prob"], "true_better")
    logs["model_utility"] = M.model_utility({k: logs[k]["agg_value"] for k in M.MODEL_UTILITY_KEYS if k in logs})
    logs["extraction_strength"] = M.extraction_strength([s.extraction_strength for s in stats["forget"]["answer"]])

    retain_scores = None
    if retain_logs is not None:
        retain_scores = [v["score"] for v in retain_logs["forget_truth_ratio"]["value_by_index"].values()]
        if len(retain_scores) != n_forget:
            logger.warning("forget_quality: the retain log has %d forget truth ratios, this evaluation %d; check that "
                           "both used the same forget split", len(retain_scores), n_forget)  # fmt: skip
    else:
        logger.warning("forget_quality is not computed (null): no retain_logs_path given")
    forget_scores = [v["score"] for v in logs["forget_truth_ratio"]["value_by_index"].values()]
    logs["forget_quality"] = M.forget_quality(forget_scores, retain_scores)

    if "holdout" in stats:
        forget_mk = [M.min_k_score(s.token_logps, MIA_K) for s in stats["forget"]["answer"]]
        holdout_mk = [M.min_k_score(s.token_logps, MIA_K) for s in stats["holdout"]["answer"]]
        logs["mia_min_k"] = M.mia(forget_mk, holdout_mk)
        ref_entry = (retain_logs or {}).get("mia_min_k")
        ref = ref_entry.get("agg_value") if isinstance(ref_entry, dict) else None
        if ref is None:
            logger.warning("privleak: no mia_min_k in a retain log; relative to AUC %.1f instead", PRIVLEAK_REF_VALUE)
            ref = PRIVLEAK_REF_VALUE
        logs["privleak"] = M.privleak(logs["mia_min_k"]["agg_value"], ref)
    return dict(sorted(logs.items()))


def compute_tofu_metrics(
    model,
    tokenizer,
    *,
    data_dir: str | None = None,
    forget_split: str = "forget10",
    holdout_split: str | None = None,
    template: TemplateArgs | None = None,
    batch_size: int = 32,
    max_length: int = 512,
    max_new_tokens: int = 200,
    retain_logs_path: str | Path | None = None,
    compute_generation: bool = True,
    stopwords: Sequence[str] | None = None,
    generation_backend: str | GenerationBackend = GenerationBackend.TRANSFORMERS,
    vllm_model: Any = None,
    max_examples: int | None = None,
    generation_batch_size: int | None = None,
    generation_impl: str = "auto",
) -> dict[str, M.MetricResult]:
    """All TOFU entries (the module table) as ``{key: {"agg_value", "value_by_index"}}``, keys sorted; writes nothing.

    ``vllm_model``: a ``vllm.LLM`` or model path for ``generation_backend="vllm"`` (default: the model's
    ``name_or_path``). See :func:`evaluate_tofu` for the other arguments.
    """
    template = template or TemplateArgs()
    retain_logs = load_retain_logs(retain_logs_path) if retain_logs_path else None
    splits = load_tofu_eval_splits(data_dir, forget_split, holdout_split, max_examples)
    was_training = model.training
    model.eval()
    try:
        t0 = time.perf_counter()
        stats = _score_splits(model, tokenizer, template, splits, batch_size, max_length)
        logger.info("TOFU: scored the answers of %s in %.1fs", list(splits), time.perf_counter() - t0)
        rouges = {}
        if compute_generation:
            t0 = time.perf_counter()
            rouges = _rouge_splits(model, tokenizer, template, splits, batch_size=batch_size, max_length=max_length,
                                   max_new_tokens=max_new_tokens, stopwords=stopwords, backend=generation_backend,
                                   vllm_model=vllm_model, generation_batch_size=generation_batch_size,
                                   generation_impl=generation_impl)  # fmt: skip
            logger.info("TOFU: generated and scored answers in %.1fs", time.perf_counter() - t0)
        else:
            logger.warning("TOFU: compute_generation=False: no ROUGE entries, so no model_utility")
    finally:
        model.train(was_training)
    return _assemble(stats, rouges, retain_logs, len(splits["forget"]))


def summarize(logs: dict[str, M.MetricResult]) -> dict[str, float]:
    """``{key: agg_value}`` for every entry with a value (open-unlearning leaves ``None`` values out), keys sorted."""
    return {k: v["agg_value"] for k, v in sorted(logs.items()) if v.get("agg_value") is not None}


def write_tofu_results(logs: dict[str, M.MetricResult], output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``TOFU_EVAL.json`` and ``TOFU_SUMMARY.json`` atomically into ``output_dir``; returns their paths."""
    out = Path(output_dir)
    eval_path, summary_path = out / EVAL_FILE, out / SUMMARY_FILE
    atomic_write_json(eval_path, dict(sorted(logs.items())))
    atomic_write_json(summary_path, summarize(logs))
    return eval_path, summary_path


def evaluate_tofu(
    model,
    tokenizer,
    *,
    data_dir: str | None = None,
    forget_split: str = "forget10",
    holdout_split: str | None = None,
    template: TemplateArgs | None = None,
    batch_size: int = 32,
    max_length: int = 512,
    max_new_tokens: int = 200,
    retain_logs_path: str | Path | None = None,
    output_dir: str | Path | None = None,
    compute_generation: bool = True,
    stopwords: Sequence[str] | None = None,
    generation_backend: str | GenerationBackend = GenerationBackend.TRANSFORMERS,
    vllm_model: Any = None,
    max_examples: int | None = None,
    generation_batch_size: int | None = None,
    generation_impl: str = "auto",
) -> dict[str, float]:
    """Evaluate ``model`` on TOFU; write ``TOFU_EVAL.json`` / ``TOFU_SUMMARY.json`` to ``output_dir`` (rank 0, if
    given; existing files are replaced); return the summary ``{key: agg_value}``.

    Args:
        model: a causal LM (or PEFT model), used in eval mode under ``torch.no_grad`` and restored to its mode.
        tokenizer: its tokenizer; the pad token falls back to EOS.
        data_dir: directory of TOFU ``*.jsonl`` splits; ``None`` loads hub ``locuslab/TOFU``.
        forget_split: ``forget01`` / ``forget05`` / ``forget10``; its ``_perturbed`` split is evaluated.
        holdout_split: for mia_min_k / privleak; default the matching ``holdoutNN`` (skipped if absent).
        template: prompt template (:class:`llmpost.data.templates.TemplateArgs`); default the base-model template.
        batch_size, max_length: forward/generation batch size; token truncation length (open-unlearning: 32, 512).
        max_new_tokens: greedy generation length for ROUGE (200).
        retain_logs_path: the retain model's ``TOFU_EVAL.json``, for forget_quality (and privleak); ``None``: no
            forget_quality (logged).
        compute_generation: ``False`` skips generation: no ROUGE entries and no model_utility.
        stopwords: extra strings that end a generation (open-unlearning's ``generation_args.stopwords``; none by
            default); e.g. ``[template.asst_end_tag]``.
        generation_backend, vllm_model: ``"transformers"`` or ``"vllm"`` (:func:`llmpost.generation.generate_greedy`).
        max_examples: evaluate only the first rows of each split (quick checks and tests; not the benchmark).
        generation_batch_size: rows per generation batch; ``None`` (default): ``batch_size`` for vLLM, else
            :func:`llmpost.generation.auto_generation_batch_size` (at least ``batch_size``, as many as a memory budget
            allows: a small model's step costs about the same for 32 or 1,000 rows).
        generation_impl: ``"auto"`` / ``"lean"`` / ``"hf"`` (:func:`llmpost.generation.generate_greedy`'s ``impl``).
    """
    logs = compute_tofu_metrics(
        model, tokenizer, data_dir=data_dir, forget_split=forget_split, holdout_split=holdout_split,
        template=template, batch_size=batch_size, max_length=max_length, max_new_tokens=max_new_tokens,
        retain_logs_path=retain_logs_path, compute_generation=compute_generation, stopwords=stopwords,
        generation_backend=generation_backend, vllm_model=vllm_model, max_examples=max_examples,
        generation_batch_size=generation_batch_size, generation_impl=generation_impl,
    )  # fmt: skip
    size, rank = world()
    if output_dir is not None and rank == 0:
        eval_path, summary_path = write_tofu_results(logs, output_dir)
        logger.info("TOFU results written to %s and %s", eval_path, summary_path)
    if output_dir is not None and size > 1:
        torch.distributed.barrier()
    return summarize(logs)


def format_summary(summary: dict[str, float | None]) -> str:
    """A two-column text table, headline metrics first (``-`` for a missing value)."""
    keys = [k for k in HEADLINE_KEYS if k in summary or k == "forget_quality"]
    keys += [k for k in summary if k not in keys]
    width = max(len(k) for k in keys)

    def fmt(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"

    return "\n".join(f"{k:<{width}}  {fmt(summary.get(k))}" for k in keys)
