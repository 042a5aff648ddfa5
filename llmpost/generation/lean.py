"""The lean decoding loop of the transformers backend (``impl="lean"``): a plain loop over the model's forward that
makes the same model calls as ``generate`` and gives the same tokens, greedy or sampled (package docstring)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from llmpost.generation.common import GenerationImpl, Sampling

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
# Fields that add a logits warper to sampling (beyond temperature, top-k and top-p, which the caller sets), "off" values.
_SAMPLING_NEUTRAL = {
    "top_h": (None,), "min_p": (None, 0.0), "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
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


def lean_supported(model, sampling: bool = False) -> bool:
    """Whether the lean loop makes the same model calls as ``model.generate(do_sample=False)`` for ``model`` (with
    ``sampling=True``: as ``generate(do_sample=True, temperature=..., top_k=..., top_p=...)``, whose generation config
    must then add no other warper such as ``min_p`` or ``typical_p``)."""
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
    neutral_fields = {**_GREEDY_NEUTRAL, **(_SAMPLING_NEUTRAL if sampling else {})}
    return all(getattr(gen_config, field, None) in neutral for field, neutral in neutral_fields.items())


def _base_prepare_inputs():
    from transformers.generation.utils import GenerationMixin

    return GenerationMixin.prepare_inputs_for_generation


def _resolve_impl(model, impl: str | GenerationImpl, sampling: bool = False) -> GenerationImpl:
    impl = GenerationImpl(impl)
    if impl == GenerationImpl.AUTO:
        return GenerationImpl.LEAN if lean_supported(model, sampling) else GenerationImpl.HF
    if impl == GenerationImpl.LEAN and not lean_supported(model, sampling):
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


def _next_tokens(logits: torch.Tensor, sampling: Sampling | None) -> torch.Tensor:
    """The next token of each row from its float32 last-position logits ``(B, V)``: the argmax, or a draw from the
    global RNG after the warpers ``generate(do_sample=True)`` applies, in its order and with its arithmetic
    (``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper`` with ``min_tokens_to_keep=1``)."""
    if sampling is None:
        return logits.argmax(-1)
    scores = logits
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(scores, min(sampling.top_k, scores.shape[-1]))[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if sampling.top_p < 1.0:
        sorted_scores, sorted_idx = torch.sort(scores, descending=False)
        remove = sorted_scores.softmax(-1).cumsum(-1) <= 1 - sampling.top_p
        remove[..., -1:] = False  # keep at least the most likely token
        scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), -float("inf"))
    return torch.multinomial(scores.softmax(-1), num_samples=1).squeeze(1)


def _greedy_lean(model, input_ids, attention_mask, max_new_tokens, pad, eos, stops: _StringStops | None):
    """Greedy tokens of a left-padded batch (:func:`_lean_decode` without sampling)."""
    return _lean_decode(model, input_ids, attention_mask, max_new_tokens, pad, eos, stops, None)


@torch.inference_mode()
def _lean_decode(model, input_ids, attention_mask, max_new_tokens, pad, eos, stops: _StringStops | None,
                 sampling: Sampling | None = None, on_step: Callable[[], object] | None = None) -> torch.Tensor:  # fmt: skip
    """New tokens of a left-padded batch, ``(B, steps)``: the same calls and the same output as ``model.generate(
    do_sample=False, use_cache=True, pad_token_id=pad, eos_token_id=eos, stopping_criteria=...)``, or with
    ``sampling`` as ``generate(do_sample=True, temperature=..., top_k=..., top_p=..., ...)`` under the same global RNG
    state (every row draws at every step, finished ones too, as in ``generate``). ``on_step`` (e.g. a progress bar's
    tick) is called after each new token.
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
        next_tokens = _next_tokens(out.logits[:, -1].to(dtype=torch.float32), sampling)
        del out
        if eos_t is not None:  # finished rows get the pad token, as in generate()
            next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad))
        tokens[:, step] = next_tokens
        steps = step + 1
        if on_step is not None:
            on_step()
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
