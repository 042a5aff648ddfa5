"""MUSE-News evaluation (arXiv 2407.06460): VerbMem, KnowMem (forget and retain) and PrivLeak.

Two protocols (:class:`llmpost.benchmarks.muse.data.MuseProtocol`). The default, ``muse``, follows the benchmark's own code
(``swj0419/muse_bench``: ``eval.py``, ``metrics/{verbmem,knowmem,privleak,logger}.py``, ``constants.py``):

* ``forget_verbmem_ROUGE`` (C1): for each ``verbmem/forget`` row, greedy generation of 128 new tokens from the
  ``prompt`` tokenised with special tokens (BOS + prompt), no template, no stop strings, decoded without special
  tokens; reference = ``gt`` tokenised with special tokens, cut to its first 128 ids (BOS included, so 127 text
  tokens), decoded. Score: ROUGE-L F1 (``rouge_score``, no stemmer); entry = mean.
* ``forget_knowmem_ROUGE`` (C2) / ``retain_knowmem_ROUGE`` (C4): ``knowmem/forget_qa`` with ``forget_qa_icl`` /
  ``retain_qa`` (local ``retain2_qa.json``) with ``retain_qa_icl``: the prompt is each in-context pair as
  ``"Question: {q}\\nAnswer: {a}\\n\\n"`` in file order, then ``"Question: {question}\\nAnswer: "``, tokenised with
  special tokens; greedy, 32 new tokens; the output is cut before the first ``"\\n\\n"``, then ``"\\nQuestion"``, then
  ``"Question:"``; ROUGE-L F1 without stemmer against ``answer``; mean. (Checked against ``metrics/knowmem.py``: as
  the brief describes; generation stops early at those strings here, which leaves the cut text unchanged.)
* ``privleak`` (C3): each ``privleak/forget`` and ``privleak/holdout`` text as ``tokenizer.encode(text)`` (BOS +
  text), one forward pass, the log-prob of every token after the BOS; Min-40% score = minus the mean of the
  ``int(0.4 n)`` lowest. ``privleak_auc`` = ``auc(roc_curve(labels, -score))`` with forget labelled 0 and holdout 1
  (MUSE's key ``forget_holdout_Min-40%``; ties count 1/2), and ``privleak = (AUC - AUC_ref) / AUC_ref * 100`` with
  ``AUC_ref`` = 0.4772 (``constants.py``, the retrained News model) unless a reference AUC or a retrained model's
  ``MUSE_EVAL.json`` is given. ``mia_min_k`` holds the per-text scores and open-unlearning's AUC ``1 - privleak_auc``.
* ``mia_loss``, ``mia_zlib``, ``mia_min_k_plus_plus``, ``mia_gradnorm`` and (with ``mia_reference_model_path``, e.g.
  the retrained model) ``mia_reference``: the rest of open-unlearning's membership-inference suite
  (``muse_metrics/mia_*.yaml``, :mod:`llmpost.eval.mia_passes`) on the same ``privleak/forget`` vs
  ``privleak/holdout`` texts, each an AUC in ``mia_min_k``'s layout (open-unlearning's orientation: 1 = the forget
  texts look seen), in ``MUSE_EVAL.json`` only. The texts are tokenised as the protocol's privleak tokenises them;
  the mean NLL (LOSS, ZLib, Reference) is over every token after the BOS, the token statistics (Min-K%++ with
  ``max(1, int(0.4 n))`` tokens, GradNorm) over privleak's positions (under ``open_unlearning`` without the last
  token, as its ``tokenwise_logprobs``). MUSE's own code has none of these attacks; ``mia_attacks=False`` skips them.
* No input is truncated: MUSE's prompts (~2,100-2,700 tokens) and texts (~4,400-5,300) may exceed the model's
  context; a warning says so once per evaluation.

``open_unlearning`` reproduces locuslab/open-unlearning's port (``configs/eval/muse.yaml``, ``muse_metrics/*.yaml``,
``configs/data/datasets/MUSE_*.yaml``, ``src/data/{pretraining,qa,utils}.py``, ``src/evals/metrics/{memorization,
utils,privacy}.py``, ``src/evals/metrics/mia/{min_k,utils}.py``). Its differences from ``muse``:

1. ROUGE uses the Porter stemmer (``eval_text_similarity``: ``use_stemmer=True``), for VerbMem and KnowMem.
2. VerbMem reference: the whole ``gt`` (up to 2048 tokens, ``MUSE_forget_verbmem.yaml``), not its first 128 tokens,
   tokenised jointly as ``prompt + " " + gt`` (``insert_space: True``) and taken from the prompt's token count on,
   decoded, minus the decoded prompt, stripped (``preprocess_pretraining_instance``, ``eval_text_similarity``).
3. KnowMem prompt and prompt + answer truncated to 512 tokens (``MUSE_*_knowmem.yaml`` ``max_length: 512``,
   right truncation in ``preprocess_chat_instance``): with MUSE-News's 10 in-context pairs (~850 tokens for Llama)
   the question itself is cut off; the reference is the decoded truncated prompt + answer + EOS minus the decoded
   prompt, stripped (the re-decoded answer, or "" once truncation removes it).
4. PrivLeak texts truncated to 2048 tokens after the BOS (``MUSE_MIA.yaml``), and the last token's log-prob left out
   (``tokenwise_logprobs`` drops the last labelled position as "EOS", but a completion has none).
5. Min-K keeps ``max(1, int(0.4 n))`` tokens (``MinKProbAttack``); MUSE keeps ``int(0.4 n)`` (NaN for n < 3).
6. privleak divides by ``AUC_ref + 1e-10`` (``privacy.privleak``); without a retain log the reference is 0.5
   (``muse_metrics/privleak.yaml`` ``ref_value``), here the default ``reference_auc`` of that protocol.
7. Generations are stripped and cut at the decoded EOS string (``eval_text_similarity``) - no effect on ROUGE. This
   implementation does so under both protocols (:func:`llmpost.generation.generate_greedy`).
8. Batched, left-padded generation (batch 8 / 16) and right-padded scoring (batch 8) instead of one example at a time;
   here both protocols batch (``batch_size``), which changes nothing beyond float noise (tested).

Deviations from MUSE's code common to both protocols: log-probs in float32 whatever the model dtype; generation also
stops at the tokenizer's EOS; ``rouge_score`` computes only ROUGE-1 and ROUGE-L (MUSE also computes ROUGE-2/Lsum and
bootstrap intervals, which its tables do not use); ROUGE values are fractions (MUSE's ``eval.py`` multiplies by 100).
The retrained model's reference is read from ``mia_min_k`` -> ``agg_value`` of its ``MUSE_EVAL.json`` (ours or
open-unlearning's; open-unlearning's AUC convention, so ``AUC_ref = 1 - agg_value``).

Result files (``output_dir``, rank 0, written atomically): ``MUSE_EVAL.json`` with every entry and its per-item values
(inputs, references, generations; per-text scores), ``MUSE_SUMMARY.json`` with ``forget_verbmem_ROUGE``,
``forget_knowmem_ROUGE``, ``retain_knowmem_ROUGE``, ``privleak`` (percent) and ``privleak_auc`` (MUSE's AUC). Under
``torch.distributed`` every rank calls :func:`evaluate_muse`; items are split across ranks (:mod:`llmpost.eval.shard`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llmpost.benchmarks.muse.data import (
    KNOWMEM_STOPS,
    MuseProtocol,
    cut_knowmem_output,
    knowmem_item,
    load_muse_split,
    privleak_item,
    verbmem_item,
)
from llmpost.benchmarks.muse.scoring import generate, score_texts
from llmpost.data.files import read_json
from llmpost.eval import metrics as M
from llmpost.eval import mia
from llmpost.eval.mia_passes import MiaItem, check_reference_tokenizer, run_mia_suite
from llmpost.eval.shard import world
from llmpost.utils import RetainLogError, atomic_write_json

logger = logging.getLogger(__name__)

EVAL_FILE = "MUSE_EVAL.json"
SUMMARY_FILE = "MUSE_SUMMARY.json"
SUMMARY_KEYS = ("forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "privleak", "privleak_auc")
VERBMEM_MAX_NEW_TOKENS = 128  # muse_bench eval.py verbmem_max_new_tokens
KNOWMEM_MAX_NEW_TOKENS = 32  # muse_bench eval.py knowmem_max_new_tokens
MIN_K = 0.4  # muse_bench eval.py privleak_auc_key "forget_holdout_Min-40%"
REFERENCE_AUC = {  # AUC of a model never trained on the forget set, used without a retain log
    MuseProtocol.MUSE: 0.4772,  # muse_bench constants.py AUC_RETRAIN["news"]["forget_holdout_Min-40%"]
    MuseProtocol.OPEN_UNLEARNING: 0.5,  # open-unlearning configs/eval/muse_metrics/privleak.yaml ref_value
}


def load_reference_auc(path: str | Path) -> float:
    """MUSE's AUC of a retrained model from its ``MUSE_EVAL.json`` (ours or open-unlearning's): ``1 -
    mia_min_k.agg_value``. Raises :class:`RetainLogError` naming the file when the entry is missing or not in (0, 1)."""
    logs = read_json(path)
    entry = logs.get("mia_min_k") if isinstance(logs, dict) else None
    value = entry.get("agg_value") if isinstance(entry, dict) else None
    if not isinstance(value, (int, float)):
        raise RetainLogError(f"retain log {str(path)!r} lacks a numeric 'mia_min_k' -> 'agg_value'")
    if not 0 < value < 1:
        raise RetainLogError(f"retain log {str(path)!r}: 'mia_min_k' AUC {value} is not in (0, 1)")
    return 1.0 - float(value)


def resolve_reference_auc(protocol, reference_auc: float | None = None, retain_logs_path=None) -> tuple[float, str]:
    """``(AUC_ref, where it came from)``: the retain log's, else ``reference_auc``, else the protocol's default.
    Raises ``ValueError`` when both are given or the AUC is not strictly between 0 and 1 (privleak divides by it)."""
    if reference_auc is not None and retain_logs_path:
        raise ValueError("give reference_auc or retain_logs_path, not both")
    if retain_logs_path:
        return load_reference_auc(retain_logs_path), str(retain_logs_path)
    if reference_auc is None:
        return REFERENCE_AUC[MuseProtocol(protocol)], f"default of protocol {MuseProtocol(protocol).value}"
    if not 0 < reference_auc < 1:
        raise ValueError(f"reference_auc must be strictly between 0 and 1, got {reference_auc}")
    return float(reference_auc), "reference_auc"


def load_muse_eval_splits(data_dir: str | Path | None, max_examples: int | None = None) -> dict[str, list[dict]]:
    """The evaluated splits (``max_examples``: only the first rows of each; in-context examples are kept whole)."""
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    names = {"verbmem": ("verbmem", "forget"), "forget_qa": ("knowmem", "forget_qa"),
             "forget_qa_icl": ("knowmem", "forget_qa_icl"), "retain_qa": ("knowmem", "retain_qa"),
             "retain_qa_icl": ("knowmem", "retain_qa_icl"), "privleak_forget": ("privleak", "forget"),
             "privleak_holdout": ("privleak", "holdout")}  # fmt: skip
    splits = {k: load_muse_split(subset, split, data_dir) for k, (subset, split) in names.items()}
    return {k: rows if k.endswith("_icl") else rows[:max_examples] for k, rows in splits.items()}


def _warn_if_too_long(model, lengths: list[int]) -> None:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    over = [n for n in lengths if limit and n > limit]
    if over:
        logger.warning("MUSE: %d of %d inputs (up to %d tokens, with the generated ones) exceed the model's "
                       "max_position_embeddings=%d; they are not truncated",
                       len(over), len(lengths), max(over), limit)  # fmt: skip


def privleak_entries(forget_scores, holdout_scores, reference_auc: float, protocol) -> dict[str, M.MetricResult]:
    """``mia_min_k`` (per-text Min-K scores and open-unlearning's AUC ``P(s_holdout > s_forget)``), ``privleak_auc``
    (MUSE's ``auc(roc_curve(labels, -score))``, forget = 0, holdout = 1, i.e. ``1 -`` the former) and ``privleak``
    ``= (privleak_auc - reference_auc) / reference_auc * 100`` (``+ 1e-10`` in the denominator for
    ``open_unlearning``). Source: muse_bench ``metrics/privleak.py`` (``sweep``) and ``eval.py``."""
    protocol = MuseProtocol(protocol)
    entry = mia.mia(forget_scores, holdout_scores)
    eps = M.EPS if protocol == MuseProtocol.OPEN_UNLEARNING else 0.0
    leak = mia.privleak(entry["auc"], 1.0 - reference_auc, eps=eps)
    return {"mia_min_k": entry, "privleak_auc": M.result(1.0 - entry["auc"]),
            "privleak": {**leak, "reference_auc": reference_auc, "protocol": protocol.value}}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# The evaluation


@dataclass(frozen=True)
class MuseEvalSettings:
    """What :func:`evaluate_muse` evaluates and how (defaults: the MUSE benchmark's)."""

    data_dir: str | Path | None = None
    """The MUSE-News directory (:mod:`llmpost.benchmarks.muse.data`); ``None`` loads hub ``muse-bench/MUSE-News``."""
    protocol: str | MuseProtocol = MuseProtocol.MUSE
    """``"muse"`` (the benchmark's code) or ``"open_unlearning"`` (its port; module docstring)."""
    batch_size: int = 8
    """Generation and scoring batch size (results do not depend on it beyond float noise)."""
    reference_auc: float | None = None
    """MUSE's AUC of a retrained model, strictly between 0 and 1; ``None``: the protocol's default (0.4772 for
    ``muse``, 0.5 for ``open_unlearning``), or the AUC in the ``retain_logs_path`` given to :func:`evaluate_muse`."""
    max_examples: int | None = None
    """Only the first rows of each evaluated split (quick checks and tests; not the benchmark)."""
    verbmem_max_new_tokens: int = VERBMEM_MAX_NEW_TOKENS
    """VerbMem generation length (MUSE: 128); under ``muse`` VerbMem's reference is cut to the same length."""
    knowmem_max_new_tokens: int = KNOWMEM_MAX_NEW_TOKENS
    """KnowMem generation length (MUSE: 32)."""
    mia_attacks: bool = True
    """Run open-unlearning's other MIA attacks on the privleak forget vs holdout texts (module docstring)."""
    mia_reference_model_path: str | None = None
    """The Reference attack's model (open-unlearning's ``reference_model_path``, e.g. the retrained model), with the
    evaluated model's tokenizer; ``None``: no ``mia_reference``."""


def compute_muse_metrics(
    model, tokenizer, settings: MuseEvalSettings, *, retain_logs_path: str | Path | None = None,
) -> dict[str, M.MetricResult]:  # fmt: skip
    """Every MUSE entry (see the module docstring) as ``{key: {"agg_value", "value_by_index", ...}}``; writes
    nothing. Arguments as in :func:`evaluate_muse`."""
    s = settings
    protocol = MuseProtocol(s.protocol)
    if min(s.batch_size, s.verbmem_max_new_tokens, s.knowmem_max_new_tokens) < 1:
        raise ValueError("batch_size and the max_new_tokens values must be >= 1")
    ref_auc, ref_source = resolve_reference_auc(protocol, s.reference_auc, retain_logs_path)
    splits = load_muse_eval_splits(s.data_dir, s.max_examples)
    if s.mia_attacks and s.mia_reference_model_path:
        check_reference_tokenizer(tokenizer, s.mia_reference_model_path)
    verbmem = [verbmem_item(tokenizer, r["prompt"], r["gt"], protocol, s.verbmem_max_new_tokens)
               for r in splits["verbmem"]]  # fmt: skip
    knowmem = {p: [knowmem_item(tokenizer, splits[f"{p}_qa_icl"], r["question"], r["answer"], protocol)
                   for r in splits[f"{p}_qa"]] for p in ("forget", "retain")}  # fmt: skip
    texts = {p: [privleak_item(tokenizer, r["text"], protocol) for r in splits[f"privleak_{p}"]]
             for p in ("forget", "holdout")}  # fmt: skip
    _warn_if_too_long(model, [len(it.prompt_ids) + s.verbmem_max_new_tokens for it in verbmem]
                      + [len(it.prompt_ids) + s.knowmem_max_new_tokens for p in knowmem for it in knowmem[p]]
                      + [len(it.input_ids) for p in texts for it in texts[p]])  # fmt: skip
    stem = protocol == MuseProtocol.OPEN_UNLEARNING
    logs: dict[str, M.MetricResult] = {}
    was_training = model.training
    model.eval()
    try:
        t0 = time.perf_counter()
        gens = generate(model, tokenizer, verbmem, max_new_tokens=s.verbmem_max_new_tokens, batch_size=s.batch_size,
                        desc="MUSE verbmem")  # fmt: skip
        logs["forget_verbmem_ROUGE"] = M.rouge(gens, [it.ground_truth for it in verbmem],
                                               [it.input_text for it in verbmem], rouge_type="rougeL_f1",
                                               use_stemmer=stem)  # fmt: skip
        for p, items in knowmem.items():
            gens = generate(model, tokenizer, items, max_new_tokens=s.knowmem_max_new_tokens, batch_size=s.batch_size,
                            stopwords=list(KNOWMEM_STOPS), desc=f"MUSE {p} knowmem")  # fmt: skip
            logs[f"{p}_knowmem_ROUGE"] = M.rouge([cut_knowmem_output(g) for g in gens],
                                                 [it.ground_truth for it in items], [it.input_text for it in items],
                                                 rouge_type="rougeL_f1", use_stemmer=stem)  # fmt: skip
        logger.info("MUSE: generated and scored %d answers in %.1fs", len(verbmem) + sum(map(len, knowmem.values())),
                    time.perf_counter() - t0)  # fmt: skip
        t0 = time.perf_counter()
        scores = {}
        for p, items in texts.items():
            lps = score_texts(model, tokenizer, items, batch_size=s.batch_size, desc=f"MUSE privleak {p}")
            scores[p] = [mia.min_k_score(lp, MIN_K, at_least_one=stem) for lp in lps]
        logger.info("MUSE: scored %d texts in %.1fs", sum(map(len, texts.values())), time.perf_counter() - t0)
        if s.mia_attacks:
            mia_items = {p: [MiaItem(it.input_ids, it.first, it.end, len(it.input_ids),
                                     tokenizer.decode(it.input_ids[it.first :], skip_special_tokens=True))
                             for it in items] for p, items in texts.items()}  # fmt: skip
            logs |= run_mia_suite(model, tokenizer, mia_items["forget"], mia_items["holdout"], batch_size=s.batch_size,
                                  reference_model_path=s.mia_reference_model_path, name="MUSE ")  # fmt: skip
    finally:
        model.train(was_training)
    logs.update(privleak_entries(scores["forget"], scores["holdout"], ref_auc, protocol))
    logs["privleak"] |= {"reference_source": ref_source}
    return dict(sorted(logs.items()))


def summarize(logs: dict[str, M.MetricResult]) -> dict[str, float | None]:
    """``{key: agg_value}`` for the :data:`SUMMARY_KEYS`."""
    return {k: logs[k]["agg_value"] for k in SUMMARY_KEYS if k in logs}


def evaluate_muse(
    model, tokenizer, settings: MuseEvalSettings, *, output_dir: str | Path | None = None,
    retain_logs_path: str | Path | None = None,
) -> dict[str, float | None]:  # fmt: skip
    """Evaluate ``model`` on MUSE-News; write ``MUSE_EVAL.json`` / ``MUSE_SUMMARY.json`` into ``output_dir`` (rank 0,
    atomically, replacing existing files) when given; return the summary.

    Args:
        model, tokenizer: a causal LM (unwrapped; eval mode during the call, restored after) and its tokenizer.
        settings: the data, protocol, batch size and generation lengths (:class:`MuseEvalSettings`).
        output_dir: where the two result files go; ``None``: nothing is written.
        retain_logs_path: a retrained model's ``MUSE_EVAL.json``, whose AUC is privleak's reference (instead of
            ``settings.reference_auc``; not both).
    """
    logs = compute_muse_metrics(model, tokenizer, settings, retain_logs_path=retain_logs_path)
    size, rank = world()
    if output_dir is not None and rank == 0:
        out = Path(output_dir)
        atomic_write_json(out / EVAL_FILE, logs)
        atomic_write_json(out / SUMMARY_FILE, summarize(logs))
        logger.info("MUSE results written to %s and %s", out / EVAL_FILE, out / SUMMARY_FILE)
    if output_dir is not None and size > 1:
        torch.distributed.barrier()
    return summarize(logs)
