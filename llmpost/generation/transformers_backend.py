"""The transformers backend: length-sorted, left-padded batches decoded by the lean loop or ``model.generate``, with
per-batch seeding when sampling; and the automatic generation batch size."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

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


# Fixed cost of one decoding step of one batch, in units of (row x attended token) of that step: measured on CPU with
# the 260K-parameter test model (1 thread: ~3 ms per batch-step vs ~0.65 us per row-token; docs/speed.md).
_CPU_STEP_COST_ROW_TOKENS = 4096


def _greedy_batches(
    lengths: list[int], batch_size: int, max_new_tokens: int, device: torch.device
) -> list[tuple[int, int]]:
    """``(start, end)`` slices of the prompts sorted longest first, each at most ``batch_size`` rows.

    On CPU the cut points minimise the estimated decoding cost ``sum_b [F + rows_b * (longest_b + max_new_tokens / 2)]``
    (dynamic programming over the sorted lengths; ``F`` = :data:`_CPU_STEP_COST_ROW_TOKENS`): a step's attention runs
    over the left-padded width of its batch, so one batch of 1,000 rows whose longest prompt is 160 tokens while most
    are 60 spends most of its attention on padding, while every extra batch adds a step's fixed cost. Elsewhere (GPU,
    unmeasured): consecutive chunks of ``batch_size``. The tokens do not depend on the cut beyond float noise in the
    masked attention (tests/test_generation.py checks equal tokens for different cuts).
    """
    n = len(lengths)
    if device.type != "cpu" or n <= 1:
        return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    width = np.asarray(lengths, dtype=np.float64) + max_new_tokens / 2  # mean attended width over the steps
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        starts = np.arange(max(0, end - batch_size), end)
        cost = best[starts] + _CPU_STEP_COST_ROW_TOKENS + (end - starts) * width[starts]
        k = int(np.argmin(cost))
        best[end], cut[end] = cost[k], starts[k]
    slices, end = [], n
    while end > 0:
        slices.append((int(cut[end]), end))
        end = int(cut[end])
    return slices[::-1]


class _TickEachStep(StoppingCriteria):
    """A stopping criterion that never stops: it advances the progress bar once per decoding step of ``generate``."""

    def __init__(self, tick):
        self.tick = tick

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.tick()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


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
    ``batch_size``; with ``sampling``, batch ``b`` runs after a reseed to ``seed + b``, inside a fork of the RNG.
    Greedy batches on CPU are cut by prompt length (:func:`_greedy_batches`). The progress bar counts decoding steps
    (``max_new_tokens`` per batch; a batch that finishes early jumps to its end), with the rows done as a postfix."""
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
    lengths = [len(prompts[i]) for i in order]
    if sampling is None:
        slices = _greedy_batches(lengths, batch_size, max_new_tokens, device)
    else:  # sampling: the batches the seeds are documented for
        slices = [(s, min(s + batch_size, len(order))) for s in range(0, len(order), batch_size)]
    desc = f"{kind} ({impl.value}, {len(prompts)} {unit}s in {len(slices)} batch{'es' if len(slices) > 1 else ''})"
    with rng, _progress(len(slices) * max_new_tokens, desc, "step") as bar:
        tick = lambda: bar.update(1)  # noqa: E731
        for b, (start, end) in enumerate(slices):
            rows = order[start:end]
            input_ids, attention_mask = _left_pad(prompts, rows, pad, device)
            if sampling is not None:
                _seed(seed + b, device)
            if impl == GenerationImpl.LEAN:
                new = _lean_decode(target, input_ids, attention_mask, max_new_tokens, pad, eos, stops, sampling,
                                   on_step=tick)  # fmt: skip
            else:
                new = _generate_hf(
                    model, tokenizer, input_ids, attention_mask, max_new_tokens, pad, eos, stopwords, sampling, tick
                )
            for i, ids in zip(rows, new.tolist()):
                out[i] = ids
            if new.shape[1] < max_new_tokens:  # finished early: skip the bar to the batch's end
                bar.update(max_new_tokens - new.shape[1])
            bar.set_postfix_str(f"{end}/{len(order)} {unit}s", refresh=False)
    return out  # type: ignore[return-value]


@torch.no_grad()
def _generate_hf(model, tokenizer, input_ids, attention_mask, max_new_tokens, pad, eos, stopwords,
                 sampling: Sampling | None = None, tick=None) -> torch.Tensor:  # fmt: skip
    width = input_ids.shape[1]
    criteria = StoppingCriteriaList([StopOnStrings(tokenizer, stopwords, width)] if stopwords else [])
    if tick is not None:
        criteria.append(_TickEachStep(tick))
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
