"""TOFU's two model passes: answer log-probabilities (teacher-forced, equal-length batches) and greedy generations
scored with ROUGE, each sharded over processes."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from llmpost.data.collators import pad_examples
from llmpost.data.templates import TemplateArgs, encode_prompt, encode_qa_batch, wrap_question
from llmpost.eval import metrics as M
from llmpost.eval import mia
from llmpost.eval.mia_passes import labelled_item, run_mia_suite
from llmpost.eval.shard import model_device, sharded_map, world
from llmpost.generation import GenerationBackend, auto_generation_batch_size, generate_greedy
from llmpost.models import pad_token_id
from llmpost.ops import IGNORE_INDEX, logps_from_logits
from llmpost.utils import progress_disabled

logger = logging.getLogger(__name__)


@dataclass
class AnswerStats:
    """Teacher-forced statistics of one answer: mean NLL over its labelled tokens (incl. EOS), the per-token
    log-probs without the final labelled token (for min-k), its extraction strength and exact memorization."""

    avg_loss: float | None
    token_logps: np.ndarray
    extraction_strength: float
    exact_memorization: float | None = None


def _equal_length_batches(lengths: Sequence[int], batch_size: int) -> list[tuple[int, int]]:
    """``(start, end)`` slices of at most ``batch_size`` consecutive examples of one length each.

    Examples arrive sorted by length, so most slices are full; with no padding in a batch the model gets no attention
    mask and SDPA runs its causal kernel, which skips the blocks above the diagonal (about half the attention work of
    the masked kernel), and no padded positions are computed at all.
    """
    slices, start = [], 0
    for i in range(1, len(lengths) + 1):
        if i == len(lengths) or i - start == batch_size or lengths[i] != lengths[start]:
            slices.append((start, i))
            start = i
    return slices


def _row_stats(logits: torch.Tensor, labels: torch.Tensor) -> list[AnswerStats]:
    """:class:`AnswerStats` of each row of a forward's ``logits`` against its ``labels`` (``-100``: not scored)."""
    logps, mask = logps_from_logits(logits, labels)
    counts = mask.sum(-1).tolist()
    preds = logits[:, :-1][mask].argmax(-1).cpu().numpy()  # the argmax at the scored positions only
    targets = labels[:, 1:][mask].cpu().numpy()
    out, at = [], 0
    for r, n in enumerate(counts):
        lp = logps[r][mask[r]].double().cpu().numpy()
        avg_loss = float(-lp.mean()) if lp.size else None
        pred, target = preds[at : at + n][:-1], targets[at : at + n][:-1]
        es = mia.extraction_strength_score(pred, target)
        out.append(AnswerStats(avg_loss, lp[:-1], es, mia.exact_memorization_score(pred, target)))
        at += n
    return out


def _takes_logits_to_keep(model) -> bool:
    """Whether the model's forward (under a PEFT wrapper: its base model's) takes ``logits_to_keep``."""
    get_base = getattr(model, "get_base_model", None)
    target = get_base() if callable(get_base) and hasattr(model, "peft_config") else model
    try:
        return "logits_to_keep" in inspect.signature(target.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.inference_mode()
def _score_batches(model, examples: list[dict], batch_size: int, pad_id: int, bar=None) -> list[AnswerStats]:
    """Stats of ``examples`` (sorted longest first) in equal-length batches. Logits are computed only from the
    position before the batch's first label on (``logits_to_keep``): the prompt positions before it score nothing."""
    device, out = model_device(model), []
    keep = _takes_logits_to_keep(model)
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=len(examples), desc=f"score (batch {batch_size})", unit="answer",
                   disable=progress_disabled(), mininterval=5.0)  # fmt: skip
    for start, end in _equal_length_batches([len(e["input_ids"]) for e in examples], batch_size):
        batch = pad_examples(examples[start:end], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        labels, width = batch["labels"], batch["input_ids"].shape[1]
        start = max(int((labels != IGNORE_INDEX).int().argmax(-1).min()) - 1, 0) if keep else 0
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                       **({"logits_to_keep": width - start} if start else {})).logits  # fmt: skip
        out += _row_stats(logits, labels[:, start:])
        bar.update(logits.shape[0])
    if own_bar:
        bar.close()
    return out


@dataclass
class _Group:
    """The answers to one question: their first ``shared`` tokens (the prompt, less its last token) are the same, so
    they are run once for the whole group (0: scored as separate sequences)."""

    examples: list[dict]
    shared: int


def _shared_prefix(examples: list[dict]) -> int:
    """Length of the longest common prefix of the examples' ``input_ids``, cut to end before the position whose logits
    score the first label, so every scored logit comes from the pass over the answers."""
    ids = [e["input_ids"] for e in examples]
    n = min(len(x) for x in ids)
    p = 0
    while p < n and all(x[p] == ids[0][p] for x in ids):
        p += 1
    first_label = min(next((t for t, y in enumerate(e["labels"]) if y != IGNORE_INDEX), len(e["labels"]))
                      for e in examples)  # fmt: skip
    return max(0, min(p, first_label - 1))


def _can_share_prefix(model) -> bool:
    """Whether ``model`` takes a ``DynamicCache`` of a prefix (``past_key_values``) for the rows that continue it: a
    decoder-only transformers model or a non-prompt-learning PEFT wrapper of one (prompt learning brings its own)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return False
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    try:
        return bool(callable(supports) and supports())
    except Exception:  # noqa: BLE001 - any failure means: do not share
        return False


def _group_batches(groups: list[_Group], batch_size: int) -> list[list[int]]:
    """Indices of the sharing groups in batches of one prefix length and at most ``batch_size`` answers (a larger
    group alone), by prefix length and then longest answer, so the answers' right padding is small."""
    order = sorted(range(len(groups)), key=lambda i: (-groups[i].shared,
                                                      -max(len(e["input_ids"]) for e in groups[i].examples)))  # fmt: skip
    batches: list[list[int]] = []
    rows = 0
    for i in order:
        n = len(groups[i].examples)
        if batches and groups[batches[-1][0]].shared == groups[i].shared and rows + n <= batch_size:
            batches[-1].append(i)
            rows += n
        else:
            batches.append([i])
            rows = n
    return batches


@torch.inference_mode()
def _score_groups(model, groups: list[_Group], batch_size: int, pad_id: int) -> list[list[AnswerStats]]:
    """:class:`AnswerStats` of every answer of every group (in the groups' order).

    Prefix sharing: a batch of groups with a common prefix length ``P`` runs its prompts once, ``(groups, P)``, with
    the model's KV cache; the cache rows are repeated for each group's answers, and the answers' remaining tokens run
    in one right-padded batch at positions ``P, P+1, ...`` attending to the cached prefix (causal attention, so the
    right padding is never attended by a real token). The log-probabilities equal those of whole-sequence forwards up
    to float32 summation order (tests/test_eval_tofu.py). Groups without a shared prefix (one answer, or a model
    without a cache) take the equal-length batches of :func:`_score_batches`.
    """
    device = model_device(model)
    out: list[list[AnswerStats] | None] = [None] * len(groups)
    bar = tqdm(total=sum(len(g.examples) for g in groups), desc=f"score (batch {batch_size}, shared prompts)",
               unit="answer", disable=progress_disabled(), mininterval=5.0)  # fmt: skip
    alone = [i for i, g in enumerate(groups) if g.shared == 0]
    if alone:
        flat = [(i, e) for i in alone for e in groups[i].examples]
        order = sorted(range(len(flat)), key=lambda k: -len(flat[k][1]["input_ids"]))  # longest first, as sharded_map
        stats = _score_batches(model, [flat[k][1] for k in order], batch_size, pad_id, bar)
        by_pos: list = [None] * len(flat)
        for k, st in zip(order, stats):
            by_pos[k] = st
        for i in alone:
            out[i] = []
        for (i, _), st in zip(flat, by_pos):
            out[i].append(st)  # type: ignore[union-attr]
    sharing = [i for i, g in enumerate(groups) if g.shared]
    last_only = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}  # the prefix's logits are not used
    for batch in _group_batches([groups[i] for i in sharing], batch_size):
        batch = [sharing[k] for k in batch]
        p = groups[batch[0]].shared
        prefix = torch.tensor([groups[i].examples[0]["input_ids"][:p] for i in batch], device=device)
        cache = model(input_ids=prefix, use_cache=True, **last_only).cache
        owner = [k for k, i in enumerate(batch) for _ in groups[i].examples]
        cache.batch_select_indices(torch.tensor(owner, device=device))
        rest = pad_examples([{k: e[k][p:] for k in ("input_ids", "labels", "attention_mask")}
                             for i in batch for e in groups[i].examples], pad_id)  # fmt: skip
        input_ids, labels = rest["input_ids"].to(device), rest["labels"].to(device)
        positions = torch.arange(p, p + input_ids.shape[1], device=device).expand(input_ids.shape[0], -1)
        logits = model(input_ids=input_ids, position_ids=positions, cache=cache, use_cache=True).logits
        stats = iter(_row_stats(logits, labels))
        for i in batch:
            out[i] = [next(stats) for _ in groups[i].examples]
        bar.update(len(owner))
        del cache, logits
    bar.close()
    return out  # type: ignore[return-value]


def score_answers(
    model, tokenizer, template: TemplateArgs, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32,
    max_length: int = 512, share_prefix: bool = False,
) -> list[AnswerStats]:  # fmt: skip
    """Teacher-forced :class:`AnswerStats` of each ``(question, answer)`` pair, tokenised with the TOFU template
    (:func:`llmpost.data.templates.encode_qa`), split across ranks when distributed.

    The answers to one question are scored together, their shared prompt run once (:func:`_score_groups`;
    ``share_prefix=False``: every pair as a whole sequence, in equal-length batches, longest first).
    """
    examples = encode_qa_batch(tokenizer, template, list(pairs), max_length)
    pad_id = pad_token_id(tokenizer)
    share = share_prefix and _can_share_prefix(model)
    members: dict[str, list[int]] = {}
    for k, (q, _) in enumerate(pairs):
        members.setdefault(q if share else str(k), []).append(k)
    groups = []
    for idx in members.values():
        exs = [examples[k] for k in idx]
        groups.append(_Group(exs, _shared_prefix(exs) if len(exs) > 1 else 0))
    scored = sharded_map(lambda gs: _score_groups(model, gs, batch_size, pad_id), groups,
                         [sum(len(e["input_ids"]) for e in g.examples) for g in groups])  # fmt: skip
    out: list = [None] * len(pairs)
    for idx, stats in zip(members.values(), scored):
        for k, st in zip(idx, stats):
            out[k] = st
    return out


def mia_suite_splits(model, tokenizer, template: TemplateArgs, splits, *, batch_size: int, max_length: int,
                     reference_model_path: str | None = None) -> dict[str, M.MetricResult]:  # fmt: skip
    """open-unlearning's membership-inference suite (:func:`llmpost.eval.mia_passes.run_mia_suite`) on the forget
    split's answers vs the holdout split's, tokenised as the probability pass tokenises them (template, labels over the
    answer and its EOS, ``max_length``): ``mia_loss``, ``mia_zlib``, ``mia_min_k_plus_plus``, ``mia_gradnorm`` and,
    with ``reference_model_path``, ``mia_reference``."""

    def items(name: str):
        encoded = encode_qa_batch(tokenizer, template, [(r["question"], r["answer"]) for r in splits[name]], max_length)
        return [labelled_item(tokenizer, input_ids=ex["input_ids"], labels=ex["labels"]) for ex in encoded]

    return run_mia_suite(model, tokenizer, items("forget"), items("holdout"), batch_size=batch_size,
                         reference_model_path=reference_model_path, name="TOFU ")  # fmt: skip


@dataclass
class _GenItem:
    prompt_ids: list[int]
    input_text: str
    ground_truth: str


def _gen_items(tokenizer, template: TemplateArgs, qa: list[tuple[str, str]], max_length: int) -> list[_GenItem]:
    # Ground truth as open-unlearning derives it: decode(prompt + answer) with the decoded prompt removed, stripped.
    fulls = [e["input_ids"] for e in encode_qa_batch(tokenizer, template, qa, max_length)]
    if template.apply_chat_template:
        prompts = [encode_prompt(tokenizer, template, q, max_length) for q, _ in qa]
    else:
        prompts = tokenizer([wrap_question(template, q) for q, _ in qa], add_special_tokens=True, max_length=max_length,
                            truncation=True)["input_ids"]  # fmt: skip  (= encode_prompt of each, in one call)
    decode = lambda ids: tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)  # noqa: E731
    inputs = decode(prompts)
    return [_GenItem(list(p), text, full.replace(text, "").strip()) for p, text, full in zip(prompts, inputs, decode(fulls))]


def _score_splits(model, tokenizer, template, splits, batch_size, max_length) -> dict[str, dict[str, list]]:
    """One teacher-forced pass over every (question, answer) pair of every split: ``{split: {column: [stats]}}``,
    where a list column (perturbed answers) gives a list of stats per row."""
    jobs, pairs = [], []  # jobs: (split, column, row, is_list)
    for name, rows in splits.items():
        columns = [c for c in ("answer", "paraphrased_answer", "perturbed_answer") if c in rows[0]]
        for i, row in enumerate(rows):
            for col in columns:
                is_list = isinstance(row[col], list)
                for ans in row[col] if is_list else [row[col]]:
                    jobs.append((name, col, i, is_list))
                    pairs.append((row["question"], ans))
    scored = score_answers(model, tokenizer, template, pairs, batch_size=batch_size, max_length=max_length)
    stats: dict[str, dict[str, list]] = {}
    for (name, col, i, is_list), s in zip(jobs, scored):
        column = stats.setdefault(name, {}).setdefault(col, [[] if is_list else None for _ in splits[name]])
        if is_list:
            column[i].append(s)
        else:
            column[i] = s
    return stats


def _rouge_splits(model, tokenizer, template, splits, *, batch_size, max_length, max_new_tokens, stopwords, backend,
                  vllm_model, generation_batch_size=None, generation_impl="auto") -> dict[str, M.MetricResult]:  # fmt: skip
    """Greedy generations for the forget / retain / ra / wf questions, scored against their answers."""
    names = [n for n in ("forget", "retain", "ra", "wf") for _ in splits[n]]
    qa = [(r["question"], r["answer"]) for n in ("forget", "retain", "ra", "wf") for r in splits[n]]
    items = list(zip(names, _gen_items(tokenizer, template, qa, max_length)))
    gen_model = model
    if GenerationBackend(backend) == GenerationBackend.VLLM:
        gen_model = vllm_model if vllm_model is not None else getattr(model, "name_or_path", None)
    if generation_batch_size is None:
        longest = max((len(it.prompt_ids) for _, it in items), default=1)
        generation_batch_size = batch_size
        if GenerationBackend(backend) == GenerationBackend.TRANSFORMERS:
            world_size, _ = world()
            generation_batch_size = auto_generation_batch_size(model, -(-len(items) // world_size), longest, max_new_tokens,
                                                               batch_size)  # fmt: skip
    logger.info("TOFU: generating %d answers (batch size %d, %d threads)", len(items), generation_batch_size,
                torch.get_num_threads())  # fmt: skip
    texts = sharded_map(
        lambda its: generate_greedy(gen_model, tokenizer, [it.prompt_ids for _, it in its], backend=backend,
                                    max_new_tokens=max_new_tokens, batch_size=generation_batch_size,
                                    stopwords=stopwords, impl=generation_impl),
        items,
        [len(it.prompt_ids) for _, it in items],
    )  # fmt: skip
    out = {}
    for name in ("forget", "retain", "ra", "wf"):
        sel = [(it, text) for (n, it), text in zip(items, texts) if n == name]
        out[name] = M.rouge([t for _, t in sel], [it.ground_truth for it, _ in sel], [it.input_text for it, _ in sel])
    return out
