"""Batched greedy generation from token-id prompts: a transformers backend and an optional vLLM backend.

The decoding and post-processing follow open-unlearning's ``eval_text_similarity`` (``src/evals/metrics/utils.py``):
greedy decoding (``do_sample=False``) of at most ``max_new_tokens`` tokens, left-padded batches, the new tokens decoded
with ``skip_special_tokens=True``, the text cut before the first occurrence of the decoded EOS and of each stop word,
then stripped. Its default generation config (``configs/generation/default.yaml``) sets no stop words, so generation
ends at EOS or after ``max_new_tokens``; pass ``stopwords`` (e.g. the template's ``asst_end_tag``) to also stop there.

Prompts are processed longest first (padding is then small, and an out-of-memory error shows up in the first batch),
and the outputs are returned in the prompts' order.

The transformers backend has two implementations of the same greedy decoding (``impl``):

* ``"lean"``: a plain loop over the model's forward (:func:`_greedy_lean`): one prefill, then one forward per new
  token with a ``DynamicCache``, argmax of the float32 last-position logits, per-row EOS finishing (finished rows are
  padded, as in ``generate``), stop strings checked only for unfinished rows, and an exit as soon as every row is
  finished. It makes the same model calls with the same inputs as ``generate(do_sample=False)`` (position ids from
  the left-padded mask, the mask dropped when there is no padding, ``logits_to_keep=1``), so its tokens are identical
  (tests/test_generation.py checks this against ``generate``); it skips ``generate``'s per-step bookkeeping
  (input preparation, logits-processor and stopping-criteria lists, kwargs updates), which is most of the time of a
  small model's step.
* ``"hf"``: ``model.generate`` with the same settings.
* ``"auto"`` (default): ``"lean"`` when :func:`lean_supported` says the loop reproduces ``generate`` for this model
  (a decoder-only transformers causal LM, or a non-prompt-learning PEFT wrapper of one, whose forward takes
  ``cache``/``position_ids``/``logits_to_keep`` and whose generation config adds nothing to greedy decoding: no
  repetition penalty, forced or suppressed tokens, minimum length, static cache, ...); ``"hf"`` otherwise.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Sequence
from enum import Enum

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicLayer

logger = logging.getLogger(__name__)


class GenerationBackend(str, Enum):
    TRANSFORMERS = "transformers"
    VLLM = "vllm"


class GenerationImpl(str, Enum):
    """How the transformers backend decodes: see the module docstring."""

    AUTO = "auto"
    LEAN = "lean"
    HF = "hf"


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


# Generation-config fields that add a logits processor, a stopping criterion or a cache other than DynamicCache to
# greedy decoding, with the value meaning "off". Any other value sends "auto" to model.generate.
_GREEDY_NEUTRAL = {
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "min_length": (None, 0),
    "min_new_tokens": (None, 0), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,), "guidance_scale": (None, 1.0), "watermarking_config": (None,),
    "remove_invalid_values": (None, False), "cache_implementation": (None, "dynamic"), "prefill_chunk_size": (None,),
    "max_time": (None,), "stop_strings": (None,), "assistant_model": (None,), "prompt_lookup_num_tokens": (None,),
    "num_assistant_tokens": (None,), "token_healing": (None, False), "use_cache": (None, True),
    "output_scores": (None, False), "output_logits": (None, False), "return_dict_in_generate": (None, False),
}  # fmt: skip
_LEAN_FORWARD_ARGS = ("input_ids", "attention_mask", "position_ids", "cache", "use_cache", "logits_to_keep")


def _lean_target(model):
    """The module the lean loop calls: the model itself, or the base model of a (non-prompt-learning) PEFT wrapper,
    whose forward already runs through the adapters. ``None`` when the loop may not reproduce ``generate``."""
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base) and hasattr(model, "peft_config"):
        active = getattr(model, "active_peft_config", None)
        if active is None or getattr(active, "is_prompt_learning", False):
            return None
        model = get_base()
    return model


def lean_supported(model) -> bool:
    """Whether the lean loop makes the same model calls as ``model.generate(do_sample=False)`` for ``model``."""
    target = _lean_target(model)
    config = getattr(target, "config", None)
    if target is None or config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if not callable(getattr(target, "_supports_default_dynamic_cache", None)):
        return False
    try:
        if not target._supports_default_dynamic_cache():
            return False
        params = inspect.signature(target.forward).parameters
    except (TypeError, ValueError):
        return False
    if not all(name in params for name in _LEAN_FORWARD_ARGS):
        return False
    if type(target).prepare_inputs_for_generation is not _base_prepare_inputs():
        return False  # a model-specific input preparation may add inputs the loop would not pass
    gen_config = getattr(target, "generation_config", None)
    for field, neutral in _GREEDY_NEUTRAL.items():
        if getattr(gen_config, field, None) not in neutral:
            return False
    return True


def _base_prepare_inputs():
    from transformers.generation.utils import GenerationMixin

    return GenerationMixin.prepare_inputs_for_generation


def _resolve_impl(model, impl: str | GenerationImpl) -> GenerationImpl:
    impl = GenerationImpl(impl)
    if impl == GenerationImpl.AUTO:
        return GenerationImpl.LEAN if lean_supported(model) else GenerationImpl.HF
    if impl == GenerationImpl.LEAN and not lean_supported(model):
        raise ValueError(f"impl='lean' cannot reproduce generate() for {type(model).__name__}; use 'auto' or 'hf'")
    return impl


class _StringStops:
    """Per-row stop-string check with :class:`StopOnStrings`'s semantics (the decoded last ``lookback`` generated
    tokens contain a stop word), evaluated only for rows that are still unfinished."""

    def __init__(self, tokenizer, stopwords: Sequence[str]):
        self.tokenizer = tokenizer
        self.stopwords = [w for w in stopwords if w]
        self.lookback = max(len(tokenizer.encode(w, add_special_tokens=False)) for w in self.stopwords) + 2

    def __call__(self, generated: torch.Tensor, rows: list[int]) -> list[int]:
        tails = self.tokenizer.batch_decode(generated[rows, -self.lookback :])
        return [r for r, tail in zip(rows, tails) if any(w in tail for w in self.stopwords)]


class _PreallocatedLayer(DynamicLayer):
    """A :class:`DynamicLayer` that holds keys and values in a buffer sized once for the whole generation and returns
    views of its filled part: the attention sees the same values, shapes and order as with ``DynamicLayer``'s
    ``torch.cat`` (which re-copies the whole cache at every step, the largest cost of a small model's step on CPU)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        new = key_states.shape[-2]
        if not self.is_initialized:
            self.device, self.is_initialized = key_states.device, True
            shape = lambda t: (*t.shape[:-2], max(self.capacity, new), t.shape[-1])  # noqa: E731
            self._k = key_states.new_empty(shape(key_states))
            self._v = value_states.new_empty(shape(value_states))
        if self.length + new > self._k.shape[-2]:  # more tokens than planned: grow (not reached by _greedy_lean)
            grow = lambda b: torch.cat([b, b.new_empty((*b.shape[:-2], self.length + new, b.shape[-1]))], -2)  # noqa: E731
            self._k, self._v = grow(self._k), grow(self._v)
        self._k[..., self.length : self.length + new, :] = key_states
        self._v[..., self.length : self.length + new, :] = value_states
        self.length += new
        self.keys, self.values = self._k[..., : self.length, :], self._v[..., : self.length, :]
        return self.keys, self.values


def _lean_cache(model, capacity: int) -> DynamicCache:
    """``generate()``'s default ``DynamicCache`` with its plain (non-sliding) layers preallocated for ``capacity``
    tokens."""
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    cache.layers = [_PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


@torch.inference_mode()
def _greedy_lean(model, input_ids, attention_mask, max_new_tokens, pad, eos, stops: _StringStops | None):
    """Greedy tokens of a left-padded batch, ``(B, steps)``: the same calls and the same output as
    ``model.generate(do_sample=False, use_cache=True, pad_token_id=pad, eos_token_id=eos, stopping_criteria=...)``.
    """
    batch = input_ids.shape[0]
    device = input_ids.device
    # As generate(): position ids from the mask (padding at 0); the mask is dropped when there is no padding.
    position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    mask = None if bool((attention_mask == 1).all()) else attention_mask
    cache = _lean_cache(model, input_ids.shape[1] + max_new_tokens)
    eos_t = torch.tensor(eos, dtype=torch.long, device=device) if eos else None
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    tokens = torch.empty((batch, max_new_tokens), dtype=torch.long, device=device)
    out = model(input_ids=input_ids.contiguous(), attention_mask=mask, position_ids=position_ids, cache=cache,
                use_cache=True, logits_to_keep=1, return_dict=True)  # fmt: skip
    last_pos = position_ids[:, -1:]
    steps = 0
    for step in range(max_new_tokens):
        if step:
            last_pos = last_pos + 1
            out = model(input_ids=tokens[:, step - 1 : step], attention_mask=mask, position_ids=last_pos, cache=cache,
                        use_cache=True, logits_to_keep=1, return_dict=True)  # fmt: skip
        next_tokens = out.logits[:, -1].to(dtype=torch.float32).argmax(-1)
        del out
        if eos_t is not None:  # finished rows get the pad token, as in generate()
            next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad))
        tokens[:, step] = next_tokens
        steps = step + 1
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=-1)
        if eos_t is not None:
            unfinished &= ~torch.isin(next_tokens, eos_t)
        if stops is not None:
            rows = unfinished.nonzero().flatten().tolist()
            if rows:
                for r in stops(tokens[:, :steps], rows):
                    unfinished[r] = False
        if not bool(unfinished.any()):
            break
    return tokens[:, :steps]


def progress_disabled() -> bool:
    """Whether the ``TQDM_DISABLE`` environment variable turns progress bars off (any value but ``""``/``0``/``false``)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")


def _progress(total: int, desc: str):
    """A tqdm bar on stderr (count, rate, ETA), also when stderr is a log file; off under ``TQDM_DISABLE``."""
    return tqdm(total=total, desc=desc, unit="prompt", disable=progress_disabled(), mininterval=5.0)


def _generate_transformers(model, tokenizer, prompts, max_new_tokens, batch_size, stopwords,
                           impl: str | GenerationImpl = GenerationImpl.AUTO) -> list[list[int]]:  # fmt: skip
    pad = pad_token_id(tokenizer)
    eos = _eos_ids(model, tokenizer)
    impl = _resolve_impl(model, impl)
    target = _lean_target(model) if impl == GenerationImpl.LEAN else model
    device = getattr(target, "device", None) or next(target.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int] | None] = [None] * len(prompts)
    stops = _StringStops(tokenizer, stopwords) if stopwords and any(stopwords) else None
    with _progress(len(prompts), f"generate ({impl.value}, batch {batch_size})") as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in rows)
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):  # left padding
                n = len(prompts[i])
                input_ids[r, width - n :] = torch.as_tensor(prompts[i], dtype=torch.long)
                attention_mask[r, width - n :] = 1
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            if impl == GenerationImpl.LEAN:
                new = _greedy_lean(target, input_ids, attention_mask, max_new_tokens, pad, eos, stops)
            else:
                new = _generate_hf(model, tokenizer, input_ids, attention_mask, max_new_tokens, pad, eos, stopwords)
            for i, ids in zip(rows, new.tolist()):
                out[i] = ids
            bar.update(len(rows))
    return out  # type: ignore[return-value]


@torch.no_grad()
def _generate_hf(model, tokenizer, input_ids, attention_mask, max_new_tokens, pad, eos, stopwords) -> torch.Tensor:
    width = input_ids.shape[1]
    criteria = StoppingCriteriaList([StopOnStrings(tokenizer, stopwords, width)] if stopwords else [])
    generated = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
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
    impl: str | GenerationImpl = GenerationImpl.AUTO,
) -> list[str]:
    """Greedy continuations of token-id ``prompts``, decoded and post-processed (:func:`postprocess`), in order.

    ``backend="transformers"``: ``model`` is a causal LM (a PEFT model too; call it on the unwrapped model, not a DDP
    wrapper). ``backend="vllm"`` (single process, GPU): ``model`` is a ``vllm.LLM`` or a model path to build one from
    (with ``gpu_memory_utilization=0.5``); vLLM is optional and an ``ImportError`` says so when it is missing.
    Stop words end generation early; the text is cut at them either way. ``impl`` (transformers backend only):
    ``"auto"`` (default), ``"lean"`` or ``"hf"``, the same tokens either way (module docstring).
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
    if not prompts:
        return []
    match GenerationBackend(backend):
        case GenerationBackend.TRANSFORMERS:
            token_ids = _generate_transformers(model, tokenizer, prompts, max_new_tokens, batch_size, stopwords,
                                               impl)
        case GenerationBackend.VLLM:
            token_ids = _generate_vllm(model, prompts, max_new_tokens, stopwords)
    texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return [postprocess(t, tokenizer, stopwords) for t in texts]
