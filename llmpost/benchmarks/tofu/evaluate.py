"""TOFU evaluation (arXiv 2401.06121) with open-unlearning's metric definitions, key names and result files.

The entries, their splits and definitions (:mod:`llmpost.eval.metrics`, :mod:`llmpost.eval.mia`; assembled in
:mod:`llmpost.benchmarks.tofu.entries`), as open-unlearning's ``configs/eval/tofu.yaml`` and
``configs/eval/tofu_metrics/*.yaml`` define them (``F`` = ``{forget_split}_perturbed``, e.g. ``forget10_perturbed``):

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
* ``privleak``: ``mia_min_k`` relative to the retain log's ``mia_min_k`` in percent (to an AUC of 0.5 without one);
* ``exact_memorization``: mean fraction of F's answer tokens (without the EOS) that teacher-forced greedy decoding
  reproduces (open-unlearning ``exact_memorization.yaml``);
* the rest of open-unlearning's MIA suite (``tofu_metrics/mia_*.yaml``), each an AUC of F's answers vs the holdout's
  in ``mia_min_k``'s layout (:mod:`llmpost.eval.mia_passes`): ``mia_loss`` (mean NLL), ``mia_zlib`` (NLL / zlib length
  of the answer), ``mia_min_k_plus_plus`` (Min-K%++, k = 0.4), ``mia_gradnorm`` (mean per-tensor gradient 2-norm),
  and ``mia_reference`` (NLL minus a reference model's NLL; only with ``mia_reference_model_path``, e.g. the retain
  model). ``mia_attacks=False`` leaves these five out.

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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmpost.benchmarks.tofu.data import load_tofu_eval_splits
from llmpost.benchmarks.tofu.entries import assemble_entries
from llmpost.benchmarks.tofu.scoring import _rouge_splits, _score_splits, mia_suite_splits
from llmpost.data.templates import TemplateArgs
from llmpost.eval import metrics as M
from llmpost.eval.mia_passes import check_reference_tokenizer
from llmpost.eval.shard import world
from llmpost.generation import GenerationBackend
from llmpost.utils import RetainLogError, atomic_write_json

logger = logging.getLogger(__name__)

EVAL_FILE = "TOFU_EVAL.json"
SUMMARY_FILE = "TOFU_SUMMARY.json"
# The top-level metrics of open-unlearning's configs/eval/tofu.yaml, listed first in printed tables.
HEADLINE_KEYS = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE",
                 "privleak", "extraction_strength")  # fmt: skip


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


@dataclass(frozen=True)
class TofuEvalSettings:
    """What :func:`evaluate_tofu` evaluates and how (defaults: open-unlearning's TOFU evaluation)."""

    data_dir: str | None = None
    """Directory of TOFU ``*.jsonl`` splits; ``None`` loads hub ``locuslab/TOFU``."""
    forget_split: str = "forget10"
    """``forget01`` / ``forget05`` / ``forget10``; its ``_perturbed`` split is evaluated."""
    holdout_split: str | None = None
    """The split for mia_min_k / privleak; default the matching ``holdoutNN`` (skipped if absent)."""
    template: TemplateArgs = field(default_factory=TemplateArgs)
    """Prompt template (:class:`llmpost.data.templates.TemplateArgs`); default the base-model template."""
    batch_size: int = 32
    """Forward-pass batch size, and the least generation batch size (open-unlearning: 32)."""
    max_length: int = 512
    """Token truncation length (open-unlearning: 512)."""
    max_new_tokens: int = 200
    """Greedy generation length for ROUGE (200)."""
    compute_generation: bool = True
    """``False`` skips generation: no ROUGE entries and no model_utility."""
    stopwords: Sequence[str] | None = None
    """Extra strings that end a generation (open-unlearning's ``generation_args.stopwords``; none by default), e.g.
    ``[template.asst_end_tag]``."""
    generation_backend: str | GenerationBackend = GenerationBackend.TRANSFORMERS
    """``"transformers"`` or ``"vllm"`` (:func:`llmpost.generation.generate_greedy`; for vLLM see ``vllm_model``)."""
    generation_batch_size: int | None = None
    """Rows per generation batch; ``None``: ``batch_size`` for vLLM, else
    :func:`llmpost.generation.auto_generation_batch_size` (at least ``batch_size``, as many as a memory budget allows:
    a small model's step costs about the same for 32 or 1,000 rows)."""
    generation_impl: str = "auto"
    """``"auto"`` / ``"lean"`` / ``"hf"`` (:func:`llmpost.generation.generate_greedy`'s ``impl``)."""
    max_examples: int | None = None
    """Evaluate only the first rows of each split (quick checks and tests; not the benchmark)."""
    mia_attacks: bool = True
    """Run open-unlearning's other MIA attacks (``mia_loss``, ``mia_zlib``, ``mia_min_k_plus_plus``, ``mia_gradnorm``,
    ``mia_reference``) on the forget vs holdout answers; they need the holdout split."""
    mia_reference_model_path: str | None = None
    """The Reference attack's model (open-unlearning's ``reference_model_path``, e.g. the retain model): a directory or
    PEFT adapter with the evaluated model's tokenizer; ``None``: no ``mia_reference``."""


def compute_tofu_metrics(
    model, tokenizer, settings: TofuEvalSettings, *, retain_logs_path: str | Path | None = None, vllm_model: Any = None,
) -> dict[str, M.MetricResult]:  # fmt: skip
    """All TOFU entries (the module table) as ``{key: {"agg_value", "value_by_index"}}``, keys sorted; writes nothing.
    Arguments as in :func:`evaluate_tofu`."""
    s = settings
    retain_logs = load_retain_logs(retain_logs_path) if retain_logs_path else None
    splits = load_tofu_eval_splits(s.data_dir, s.forget_split, s.holdout_split, s.max_examples)
    if s.mia_attacks and s.mia_reference_model_path:
        check_reference_tokenizer(tokenizer, s.mia_reference_model_path)
    was_training = model.training
    model.eval()
    try:
        t0 = time.perf_counter()
        stats = _score_splits(model, tokenizer, s.template, splits, s.batch_size, s.max_length)
        logger.info("TOFU: scored the answers of %s in %.1fs", list(splits), time.perf_counter() - t0)
        mia_logs = {}
        if s.mia_attacks and "holdout" in splits:
            t0 = time.perf_counter()
            mia_logs = mia_suite_splits(model, tokenizer, s.template, splits, batch_size=s.batch_size,
                                        max_length=s.max_length, reference_model_path=s.mia_reference_model_path)  # fmt: skip
            logger.info("TOFU: membership-inference attacks in %.1fs", time.perf_counter() - t0)
        rouges = {}
        if s.compute_generation:
            t0 = time.perf_counter()
            rouges = _rouge_splits(model, tokenizer, s.template, splits, batch_size=s.batch_size,
                                   max_length=s.max_length, max_new_tokens=s.max_new_tokens, stopwords=s.stopwords,
                                   backend=s.generation_backend, vllm_model=vllm_model,
                                   generation_batch_size=s.generation_batch_size,
                                   generation_impl=s.generation_impl)  # fmt: skip
            logger.info("TOFU: generated and scored answers in %.1fs", time.perf_counter() - t0)
        else:
            logger.warning("TOFU: compute_generation=False: no ROUGE entries, so no model_utility")
    finally:
        model.train(was_training)
    return dict(sorted((assemble_entries(stats, rouges, retain_logs, len(splits["forget"])) | mia_logs).items()))


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
    model, tokenizer, settings: TofuEvalSettings, *, output_dir: str | Path | None = None,
    retain_logs_path: str | Path | None = None, vllm_model: Any = None,
) -> dict[str, float]:  # fmt: skip
    """Evaluate ``model`` on TOFU; write ``TOFU_EVAL.json`` / ``TOFU_SUMMARY.json`` to ``output_dir`` (rank 0, if
    given; existing files are replaced); return the summary ``{key: agg_value}``.

    Args:
        model: a causal LM (or PEFT model), used in eval mode under ``torch.no_grad`` and restored to its mode.
        tokenizer: its tokenizer; the pad token falls back to EOS.
        settings: the splits, template, batch sizes and generation options (:class:`TofuEvalSettings`).
        output_dir: where the two result files go; ``None``: nothing is written.
        retain_logs_path: the retain model's ``TOFU_EVAL.json``, for forget_quality (and privleak); ``None``: no
            forget_quality (logged).
        vllm_model: a ``vllm.LLM`` or model path for ``settings.generation_backend="vllm"`` (default: the model's
            ``name_or_path``).
    """
    logs = compute_tofu_metrics(model, tokenizer, settings, retain_logs_path=retain_logs_path, vllm_model=vllm_model)
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
