"""The transformers backend: length-sorted, left-padded batches decoded by the lean loop or ``model.generate``, with
per-batch seeding when sampling; and the automatic generation batch size."""

from __future__ import annotations

import contextlib

import torch
from transformers import StoppingCriteriaList

from llmpost.generation.common import GenerationImpl, Sampling, StopOnStrings, _eos_ids, _progress
from llmpost.generation.lean import _lean_decode, _lean_target, _resolve_impl, _StringStops
from llmpost.models import pad_token_id


def _left_pad(prompts, rows: list[int], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(prompts[i]) for i in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, i in enumerate(rows):
        n = len(prompts[i])
        input_ids[r, width - n :] = torch.as_tensor(prompts[i], dtype=torch.long)
        attention_mask[r, width - n :] = 1
    return input_ids.to(device), attention_mask.to(device)


def _seed(seed: int, device: torch.device) -> None:
    """Seed the generators a batch draws from: the CPU's and, on CUDA, the model's device's (the generators
    :func:`_rng_fork` restores; ``torch.manual_seed`` would also reseed every other GPU)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def _rng_fork(device: torch.device):
    """Save and restore the caller's CPU RNG (and the model's CUDA device's) around a sampling call."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.random.fork_rng(devices=[index], device_type="cuda")
    return torch.random.fork_rng(devices=[])


def _generate_transformers(model, tokenizer, prompts, max_new_tokens, batch_size, stopwords,
                           impl: str | GenerationImpl = GenerationImpl.AUTO, sampling: Sampling | None = None,
                           seed: int = 0, unit: str = "prompt") -> list[list[int]]:  # fmt: skip
    """New token ids of each prompt, in order. Rows are sorted longest first and left-padded into batches of
    ``batch_size``; with ``sampling``, batch ``b`` runs after a reseed to ``seed + b``, inside a fork of the RNG."""
    pad = pad_token_id(tokenizer)
    eos = _eos_ids(model, tokenizer)
    impl = _resolve_impl(model, impl, sampling is not None)
    target = _lean_target(model) if impl == GenerationImpl.LEAN else model
    device = torch.device(getattr(target, "device", None) or next(target.parameters()).device)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int] | None] = [None] * len(prompts)
    stops = _StringStops(tokenizer, stopwords) if stopwords and any(stopwords) else None
    kind = "sample" if sampling is not None else "generate"
    rng = _rng_fork(device) if sampling is not None else contextlib.nullcontext()
    with rng, _progress(len(prompts), f"{kind} ({impl.value}, batch {batch_size})", unit) as bar:
        for b, start in enumerate(range(0, len(order), batch_size)):
            rows = order[start : start + batch_size]
            input_ids, attention_mask = _left_pad(prompts, rows, pad, device)
            if sampling is not None:
                _seed(seed + b, device)
            if impl == GenerationImpl.LEAN:
                new = _lean_decode(target, input_ids, attention_mask, max_new_tokens, pad, eos, stops, sampling)
            else:
                new = _generate_hf(
                    model, tokenizer, input_ids, attention_mask, max_new_tokens, pad, eos, stopwords, sampling
                )
            for i, ids in zip(rows, new.tolist()):
                out[i] = ids
            bar.update(len(rows))
    return out  # type: ignore[return-value]


@torch.no_grad()
def _generate_hf(model, tokenizer, input_ids, attention_mask, max_new_tokens, pad, eos, stopwords,
                 sampling: Sampling | None = None) -> torch.Tensor:  # fmt: skip
    width = input_ids.shape[1]
    criteria = StoppingCriteriaList([StopOnStrings(tokenizer, stopwords, width)] if stopwords else [])
    if sampling is None:
        decoding = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:  # top_k=0 adds no TopKLogitsWarper (None would fall back to GenerationConfig's default of 50)
        decoding = dict(do_sample=True, temperature=float(sampling.temperature), top_p=float(sampling.top_p),
                        top_k=int(sampling.top_k))  # fmt: skip
    generated = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        max_length=None,  # the model's generation_config may set one; max_new_tokens rules
        num_beams=1,
        num_return_sequences=1,
        **decoding,
        pad_token_id=pad,
        eos_token_id=eos,
        stopping_criteria=criteria,
        use_cache=True,
    )
    return generated[:, width:]


def auto_generation_batch_size(model, n_prompts: int, max_prompt_len: int, max_new_tokens: int, floor: int,
                               cap: int = 1024) -> int:  # fmt: skip
    """A generation batch size for the transformers backend: as many rows as fit a memory budget, at least ``floor``
    (the caller's batch size) and at most ``cap`` and ``n_prompts``.

    A step of a small model costs about the same per call whatever the batch (per-call overhead), so bigger batches
    mean fewer steps. The estimate per row is its KV cache (``2 * layers * kv_heads * head_dim * (prompt + new)``
    elements) plus the prefill activations (``prompt * (4 * hidden + 3 * intermediate)`` elements); the budget is a
    quarter of the free GPU memory on CUDA, 1 GiB elsewhere. For a 7B model this is the floor; for the 260K-parameter
    test model, 1024 rows. Batch composition changes the left padding, which changes results only at float-noise
    level (as for the scoring batch size).
    """
    target = _lean_target(model) or model
    config = getattr(target, "config", None)
    text = config.get_text_config(decoder=True) if config is not None and hasattr(config, "get_text_config") else config
    try:
        hidden = int(text.hidden_size)
        layers = int(text.num_hidden_layers)
        heads = int(text.num_attention_heads)
        kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
        inter = int(getattr(text, "intermediate_size", None) or 4 * hidden)
        param = next(target.parameters())
    except (AttributeError, TypeError, ValueError, StopIteration):
        return max(1, min(floor, n_prompts))
    elem = param.element_size()
    per_row = elem * (2 * layers * kv_heads * head_dim * (max_prompt_len + max_new_tokens)
                      + max_prompt_len * (4 * hidden + 3 * inter))  # fmt: skip
    if param.device.type == "cuda":
        budget = torch.cuda.mem_get_info(param.device)[0] // 4
    else:
        budget = 1 << 30
    return max(1, min(n_prompts, max(floor, min(cap, budget // max(per_row, 1)))))
