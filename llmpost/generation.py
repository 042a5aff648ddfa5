"""Batched greedy generation from token-id prompts: a transformers backend and an optional vLLM backend.

The decoding and post-processing follow open-unlearning's ``eval_text_similarity`` (``src/evals/metrics/utils.py``):
greedy decoding (``do_sample=False``) of at most ``max_new_tokens`` tokens, left-padded batches, the new tokens decoded
with ``skip_special_tokens=True``, the text cut before the first occurrence of the decoded EOS and of each stop word,
then stripped. Its default generation config (``configs/generation/default.yaml``) sets no stop words, so generation
ends at EOS or after ``max_new_tokens``; pass ``stopwords`` (e.g. the template's ``asst_end_tag``) to also stop there.

Prompts are processed longest first (padding is then small, and an out-of-memory error shows up in the first batch),
and the outputs are returned in the prompts' order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from enum import Enum

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

logger = logging.getLogger(__name__)


class GenerationBackend(str, Enum):
    TRANSFORMERS = "transformers"
    VLLM = "vllm"


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad token, else its EOS (open-unlearning and TRL fall back the same way)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    return pad


def postprocess(text: str, tokenizer, stopwords: Sequence[str] | None = None) -> str:
    """Cut ``text`` before the decoded EOS and before each stop word (in that order), then strip it."""
    cuts = ([tokenizer.decode([tokenizer.eos_token_id])] if tokenizer.eos_token_id is not None else []) + list(
        stopwords or []
    )
    for word in cuts:
        if word and word in text:
            text = text.split(word)[0]
    return text.strip()


class StopOnStrings(StoppingCriteria):
    """Per-row stop once any stop string appears in the text of the newly generated tokens.

    Only the generated part is inspected (never the prompt), over the last ``len(tokens(stop)) + 2`` tokens, since a
    stop string may be produced with a different tokenisation than its own (open-unlearning's ``MultiTokenEOSCriteria``
    looks back the same distance). Returns one flag per row, so finished rows are padded while others continue.
    """

    def __init__(self, tokenizer, stopwords: Sequence[str], prompt_length: int):
        self.tokenizer = tokenizer
        self.stopwords = [w for w in stopwords if w]
        self.prompt_length = prompt_length
        self.lookback = max(len(tokenizer.encode(w, add_special_tokens=False)) for w in self.stopwords) + 2

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tails = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :][:, -self.lookback :])
        done = [any(w in tail for w in self.stopwords) for tail in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def _generate_transformers(model, tokenizer, prompts, max_new_tokens, batch_size, stopwords) -> list[list[int]]:
    pad = pad_token_id(tokenizer)
    eos = _eos_ids(model, tokenizer)
    device = model.device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):  # left padding
            n = len(prompts[i])
            input_ids[r, width - n :] = torch.as_tensor(prompts[i], dtype=torch.long)
            attention_mask[r, width - n :] = 1
        criteria = StoppingCriteriaList([StopOnStrings(tokenizer, stopwords, width)] if stopwords else [])
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            max_length=None,  # the model's generation_config may set one; max_new_tokens rules
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad,
            eos_token_id=eos,
            stopping_criteria=criteria,
            use_cache=True,
        )
        for r, i in enumerate(rows):
            out[i] = generated[r, width:].tolist()
    return out  # type: ignore[return-value]


def _generate_vllm(model, prompts, max_new_tokens, stopwords) -> list[list[int]]:
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "generation backend 'vllm' was requested but vLLM is not installed: `pip install llmpost[vllm]` "
            "(GPU only), or use the 'transformers' backend"
        ) from e
    # Built from a path, the engine shares the GPU with the transformers model used for scoring: take half of it.
    llm = model if isinstance(model, vllm.LLM) else vllm.LLM(model=str(model), gpu_memory_utilization=0.5)
    params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=list(stopwords or []) or None)
    outputs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params)
    return [list(o.outputs[0].token_ids) for o in outputs]


def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 200,
    batch_size: int = 32,
    stopwords: Sequence[str] | None = None,
    backend: str | GenerationBackend = GenerationBackend.TRANSFORMERS,
) -> list[str]:
    """Greedy continuations of token-id ``prompts``, decoded and post-processed (:func:`postprocess`), in order.

    ``backend="transformers"``: ``model`` is a causal LM (a PEFT model too; call it on the unwrapped model, not a DDP
    wrapper). ``backend="vllm"`` (single process, GPU): ``model`` is a ``vllm.LLM`` or a model path to build one from
    (with ``gpu_memory_utilization=0.5``); vLLM is optional and an ``ImportError`` says so when it is missing.
    Stop words end generation early; the text is cut at them either way.
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
    if not prompts:
        return []
    match GenerationBackend(backend):
        case GenerationBackend.TRANSFORMERS:
            token_ids = _generate_transformers(model, tokenizer, prompts, max_new_tokens, batch_size, stopwords)
        case GenerationBackend.VLLM:
            token_ids = _generate_vllm(model, prompts, max_new_tokens, stopwords)
    texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return [postprocess(t, tokenizer, stopwords) for t in texts]
