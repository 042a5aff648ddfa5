"""MATH evaluation: n sampled solutions per problem, graded with math-verify, summarised as pass@k.

* Grading: :func:`is_correct` (math-verify, gold first, each call bounded in time; :mod:`llmpost.grading.verify`);
  the Hendrycks-style normalised string match :func:`is_equiv` of the extracted final answer is reported alongside.
* pass@k: the unbiased estimator ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021, arXiv 2107.03374) per problem,
  averaged over problems, for k = 1, 2, 4, ... n, with its standard error across problems and a bootstrap 95% interval
  (:mod:`llmpost.eval.passk`).
* Outputs, written atomically into ``output_dir``: ``MATH_EVAL.json`` (per problem: the samples, their extracted
  answers, math-verify and is_equiv correctness) and ``MATH_SUMMARY.json`` (pass@k, accuracy by subject and by level,
  the settings).

Sampling runs on the shared generation layer (:func:`llmpost.generation.generate_samples`: transformers or vLLM).
Under ``torch.distributed`` each rank samples a shard of the problems; the samples then depend on the number of ranks
(the random draws of a batch depend on its composition, as with ``generate``), not on anything else.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmpost.benchmarks.math.data import math_prompts
from llmpost.data.files import iter_jsonl
from llmpost.data.templates import TemplateArgs
from llmpost.eval.passk import pass_at_k, pass_at_k_curve, powers_of_two_upto
from llmpost.eval.shard import sharded_map, world
from llmpost.grading.normalize import extract_boxed, is_equiv
from llmpost.grading.verify import grade, is_correct
from llmpost.utils import DataError, atomic_write_json

__all__ = ["EVAL_FILE", "SUMMARY_FILE", "MathEvalSettings", "evaluate_math", "extract_answer", "grade_problems",
           "is_correct", "is_equiv", "load_predictions", "pass_at_k", "summarize"]  # fmt: skip

logger = logging.getLogger(__name__)

EVAL_FILE = "MATH_EVAL.json"
SUMMARY_FILE = "MATH_SUMMARY.json"
_DOLLARS = re.compile(r"\$([^$]+)\$")


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion as a string: the last ``\\boxed{}`` (brace-matched), else the last ``$...$``
    span, else None. Used for ``is_equiv`` and shown in ``MATH_EVAL.json``; math-verify does its own extraction."""
    boxed = extract_boxed(completion)
    if boxed is not None:
        return boxed
    spans = _DOLLARS.findall(completion or "")
    return spans[-1].strip() if spans else None


def grade_problems(problems: Sequence[dict], completions: Sequence[Sequence[str]], timeout: float = 5.0) -> dict:
    """Grade every completion of every problem; the per-problem records of ``MATH_EVAL.json``, keyed by ``unique_id``.

    ``problems``: rows with ``unique_id``, ``answer`` (and optionally ``subject``, ``level``); ``completions[i]``: the
    samples for ``problems[i]`` (any number >= 1).
    """
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} lists of completions")
    flat = [(i, text) for i, texts in enumerate(completions) for text in texts]
    verdicts = grade([text for _, text in flat], [str(problems[i]["answer"]) for i, _ in flat], timeout=timeout)
    records: dict[str, dict] = {}
    for i, row in enumerate(problems):
        records[str(row["unique_id"])] = {"answer": str(row["answer"]), "subject": row.get("subject"),
                                          "level": row.get("level"), "samples": list(completions[i]),
                                          "extracted": [], "correct": [], "is_equiv": []}  # fmt: skip
    for (i, text), ok in zip(flat, verdicts):
        rec = records[str(problems[i]["unique_id"])]
        answer = extract_answer(text)
        rec["extracted"].append(answer)
        rec["correct"].append(bool(ok))
        rec["is_equiv"].append(is_equiv(answer, rec["answer"]))
    for rec in records.values():
        rec["num_correct"] = sum(rec["correct"])
    return records


def summarize(records: dict, ks: Sequence[int] | None = None, bootstrap: int = 1000, seed: int = 0) -> dict:
    """``MATH_SUMMARY.json`` from the records of :func:`grade_problems`: pass@k (mean, stderr, 95% bootstrap interval)
    by math-verify and by is_equiv, accuracy (mean fraction of correct samples) overall, by subject and by level."""
    if not records:
        raise ValueError("no graded problems to summarize")
    ns = [len(r["correct"]) for r in records.values()]
    ks = list(ks) if ks is not None else powers_of_two_upto(min(ns))
    curve = pass_at_k_curve(ns, [r["num_correct"] for r in records.values()], ks, bootstrap=bootstrap, seed=seed)
    equiv = pass_at_k_curve(ns, [sum(r["is_equiv"]) for r in records.values()], ks, bootstrap=bootstrap, seed=seed)
    by_subject, by_level = defaultdict(list), defaultdict(list)
    for r in records.values():
        acc = r["num_correct"] / len(r["correct"])
        by_subject[str(r.get("subject"))].append(acc)
        by_level[str(r.get("level"))].append(acc)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "num_problems": len(records),
        "num_samples": min(ns) if min(ns) == max(ns) else {"min": min(ns), "max": max(ns)},
        "accuracy": mean([r["num_correct"] / len(r["correct"]) for r in records.values()]),
        "pass@k": {str(k): v for k, v in curve.items()},
        "is_equiv_pass@k": {str(k): v for k, v in equiv.items()},
        "accuracy_by_subject": {k: mean(v) for k, v in sorted(by_subject.items())},
        "accuracy_by_level": {k: mean(v) for k, v in sorted(by_level.items())},
    }


def write_results(records: dict, summary: dict, output_dir: str | Path) -> None:
    """Write ``MATH_EVAL.json`` and ``MATH_SUMMARY.json`` atomically (the summary last: its presence means done)."""
    atomic_write_json(Path(output_dir) / EVAL_FILE, records)
    atomic_write_json(Path(output_dir) / SUMMARY_FILE, summary)


@dataclass(frozen=True)
class MathEvalSettings:
    """How :func:`evaluate_math` samples (defaults: ``llmpost eval math``'s)."""

    num_samples: int = 16
    """Samples per problem (``n`` of pass@k)."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy decoding, the same text ``num_samples`` times)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1: off)."""
    max_new_tokens: int = 512
    """Generation length limit in tokens."""
    seed: int = 0
    """Seed of the samples (and of the bootstrap intervals)."""
    batch_size: int = 32
    """Generation batch size in rows (prompts x samples)."""
    max_length: int = 2048
    """Prompt truncation length in tokens."""
    backend: str = "transformers"
    """Generation backend: ``"transformers"`` or ``"vllm"`` (GPU; then pass ``vllm_model``)."""
    max_problems: int | None = None
    """Evaluate only the first problems (smoke runs); ``None``: all."""
    stopwords: Sequence[str] | None = None
    """Strings that end a generation."""


def evaluate_math(model, tokenizer, problems, template: TemplateArgs, settings: MathEvalSettings, *,
                  output_dir: str | Path | None = None, vllm_model=None) -> dict:  # fmt: skip
    """Sample ``settings.num_samples`` completions per problem, grade them, write the result files (main process, when
    ``output_dir`` is given), return the summary. ``problems``: a dataset or list of MATH rows; ``template``: the prompt
    (:mod:`llmpost.benchmarks.math.data`). ``vllm_model`` (backend ``vllm``): a ``vllm.LLM`` or a model path."""
    from llmpost.generation import SampleSettings, Sampling, generate_samples

    s = settings
    rows = [dict(r) for r in problems]
    if s.max_problems is not None:
        rows = rows[: s.max_problems]
    if not rows:
        raise DataError("no problems to evaluate")
    prompts = math_prompts(rows, tokenizer, template, s.max_length)
    recorded = {"num_samples": s.num_samples, "temperature": s.temperature, "top_p": s.top_p,
                "max_new_tokens": s.max_new_tokens, "seed": s.seed, "backend": s.backend,
                "world_size": world()[0]}  # fmt: skip
    logger.info("MATH: sampling %d x %d completions (%s)", len(rows), s.num_samples, recorded)
    sample_settings = SampleSettings(n=s.num_samples, sampling=Sampling(temperature=s.temperature, top_p=s.top_p),
                                     max_new_tokens=s.max_new_tokens, seed=s.seed, batch_size=s.batch_size,
                                     stopwords=s.stopwords, backend=s.backend)  # fmt: skip

    def sample(batch_prompts):
        target = vllm_model if s.backend == "vllm" else model
        return generate_samples(target, tokenizer, batch_prompts, sample_settings)

    completions = sharded_map(sample, prompts, [len(p) for p in prompts])
    records = grade_problems(rows, completions)
    summary = {**summarize(records, seed=s.seed), "settings": recorded}
    if output_dir is not None and world()[1] == 0:
        write_results(records, summary, output_dir)
    return summary


def load_predictions(path: str | Path, problems: Sequence[dict]) -> tuple[list[dict], list[list[str]]]:
    """Completions produced elsewhere: a JSON-lines file, one object per problem with ``unique_id`` and
    ``completions`` (a list of strings, or one string). Returns the predicted problems (in file order) and their
    completions. Unknown or repeated ids, a missing key or an empty list are :class:`DataError`\\ s naming the line;
    problems without a prediction are left out (and logged)."""
    by_id = {str(r["unique_id"]): dict(r) for r in problems}
    rows, completions, seen = [], [], set()
    for line, obj in iter_jsonl(path):
        missing = [key for key in ("unique_id", "completions") if key not in obj]
        if missing:
            raise DataError(f"{path}: line {line}: lacks {missing} (every line needs 'unique_id' and 'completions')")
        uid, texts = str(obj["unique_id"]), obj["completions"]
        if uid not in by_id:
            raise DataError(f"{path}: line {line}: unknown unique_id {uid!r} (not in the evaluated problems)")
        if uid in seen:
            raise DataError(f"{path}: line {line}: unique_id {uid!r} occurs more than once")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise DataError(f"{path}: line {line}: 'completions' must be a non-empty list of strings")
        seen.add(uid)
        rows.append(by_id[uid])
        completions.append(texts)
    if len(rows) < len(by_id):
        logger.warning("%s: %d of %d problems have no prediction and are not graded", path, len(by_id) - len(rows), len(by_id))
    return rows, completions


def format_summary(summary: dict) -> str:
    """A short text table: pass@k with its standard error, then accuracy by level."""
    lines = [f"MATH: {summary['num_problems']} problems, {summary['num_samples']} samples each"]
    for k, v in summary["pass@k"].items():
        eq = summary["is_equiv_pass@k"][k]["mean"]
        lines.append(f"  pass@{k:<5} {v['mean']:.4f} ± {v['stderr']:.4f}   (is_equiv {eq:.4f})")
    lines.append("  accuracy by level: " + json.dumps({k: round(v, 4) for k, v in summary["accuracy_by_level"].items()}))
    return "\n".join(lines)
