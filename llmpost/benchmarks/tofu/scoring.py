"""TOFU's two model passes: answer log-probabilities (teacher-forced, equal-length batches) and greedy generations
scored with ROUGE, each sharded over processes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from llmpost.data.collators import pad_examples
from llmpost.data.templates import TemplateArgs, encode_prompt, encode_qa
from llmpost.eval import metrics as M
from llmpost.eval import mia
from llmpost.eval.mia_passes import labelled_item, run_mia_suite
from llmpost.eval.shard import model_device, sharded_map, world
from llmpost.generation import GenerationBackend, auto_generation_batch_size, generate_greedy
from llmpost.models import pad_token_id
from llmpost.ops import logps_from_logits
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


@torch.inference_mode()
def _score_batches(model, examples: list[dict], batch_size: int, pad_id: int) -> list[AnswerStats]:
    device, out = model_device(model), []
    bar = tqdm(total=len(examples), desc=f"score (batch {batch_size})", unit="answer", disable=progress_disabled(),
               mininterval=5.0)  # fmt: skip
    for start, end in _equal_length_batches([len(e["input_ids"]) for e in examples], batch_size):
        batch = pad_examples(examples[start:end], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        logps, mask = logps_from_logits(logits, batch["labels"])
        preds, targets = logits[:, :-1].argmax(-1), batch["labels"][:, 1:]
        for r in range(logits.shape[0]):
            m = mask[r]
            lp = logps[r][m].double().cpu().numpy()
            avg_loss = float(-lp.mean()) if lp.size else None
            pred, target = preds[r][m][:-1].cpu().numpy(), targets[r][m][:-1].cpu().numpy()
            es = mia.extraction_strength_score(pred, target)
            out.append(AnswerStats(avg_loss, lp[:-1], es, mia.exact_memorization_score(pred, target)))
        bar.update(logits.shape[0])
    bar.close()
    return out


def score_answers(
    model, tokenizer, template: TemplateArgs, pairs: Sequence[tuple[str, str]], *, batch_size: int = 32,
    max_length: int = 512,
) -> list[AnswerStats]:  # fmt: skip
    """Teacher-forced :class:`AnswerStats` of each ``(question, answer)`` pair, tokenised with the TOFU template
    (:func:`llmpost.data.templates.encode_qa`), batched longest first, split across ranks when distributed."""
    examples = [encode_qa(tokenizer, template, q, a, max_length) for q, a in pairs]
    pad_id = pad_token_id(tokenizer)
    return sharded_map(
        lambda ex: _score_batches(model, ex, batch_size, pad_id), examples, [len(e["input_ids"]) for e in examples]
    )


def mia_suite_splits(model, tokenizer, template: TemplateArgs, splits, *, batch_size: int, max_length: int,
                     reference_model_path: str | None = None) -> dict[str, M.MetricResult]:  # fmt: skip
    """open-unlearning's membership-inference suite (:func:`llmpost.eval.mia_passes.run_mia_suite`) on the forget
    split's answers vs the holdout split's, tokenised as the probability pass tokenises them (template, labels over the
    answer and its EOS, ``max_length``): ``mia_loss``, ``mia_zlib``, ``mia_min_k_plus_plus``, ``mia_gradnorm`` and,
    with ``reference_model_path``, ``mia_reference``."""

    def items(name: str):
        return [labelled_item(tokenizer, **{k: ex[k] for k in ("input_ids", "labels")})
                for ex in (encode_qa(tokenizer, template, r["question"], r["answer"], max_length)
                           for r in splits[name])]  # fmt: skip

    return run_mia_suite(model, tokenizer, items("forget"), items("holdout"), batch_size=batch_size,
                         reference_model_path=reference_model_path, name="TOFU ")  # fmt: skip


@dataclass
class _GenItem:
    prompt_ids: list[int]
    input_text: str
    ground_truth: str


def _gen_item(tokenizer, template: TemplateArgs, question: str, answer: str, max_length: int) -> _GenItem:
    # Ground truth as open-unlearning derives it: decode(prompt + answer) with the decoded prompt removed, stripped.
    full = encode_qa(tokenizer, template, question, answer, max_length)["input_ids"]
    prompt = encode_prompt(tokenizer, template, question, max_length)
    dec = lambda ids: tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)  # noqa: E731
    input_text = dec(prompt)
    return _GenItem(list(prompt), input_text, dec(full).replace(input_text, "").strip())


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
    items = [(n, _gen_item(tokenizer, template, r["question"], r["answer"], max_length))
             for n in ("forget", "retain", "ra", "wf") for r in splits[n]]  # fmt: skip
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
