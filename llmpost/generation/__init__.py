"""Batched generation from token-id prompts, greedy or sampled: a transformers backend and an optional vLLM backend.

Greedy decoding (:func:`generate_greedy`) and its post-processing follow open-unlearning's ``eval_text_similarity``
(``src/evals/metrics/utils.py``): greedy decoding (``do_sample=False``) of at most ``max_new_tokens`` tokens, left-padded
batches, the new tokens decoded with ``skip_special_tokens=True``, the text cut before the first occurrence of the
decoded EOS and of each stop word, then stripped. Its default generation config (``configs/generation/default.yaml``)
sets no stop words, so generation ends at EOS or after ``max_new_tokens``; pass ``stopwords`` (e.g. the template's
``asst_end_tag``) to also stop there.

Prompts are processed longest first (padding is then small, and an out-of-memory error shows up in the first batch),
and the outputs are returned in the prompts' order. Greedy batches on CPU are cut where the prompt length drops enough
that less left padding pays for an extra batch's per-step cost (``transformers_backend._greedy_batches``; at most
``batch_size`` rows each); the tokens are the same as with plain chunks of ``batch_size`` (float noise in the masked
attention aside; tested). The progress bar counts decoding steps, with the rows done as a postfix.

The transformers backend has two implementations of the same decoding (``impl``):

* ``"lean"``: a plain loop over the model's forward (:func:`lean._lean_decode`): one prefill, then one forward per new
  token with a ``DynamicCache``, the next token from the float32 last-position logits, per-row EOS finishing (finished
  rows are padded, as in ``generate``), stop strings checked only for unfinished rows, and an exit as soon as every
  row is finished. It makes the same model calls with the same inputs as ``generate`` (position ids from the
  left-padded mask, the mask dropped when there is no padding, ``logits_to_keep=1``), so its tokens are identical
  (tests/test_generation.py checks this against ``generate``); it skips ``generate``'s per-step bookkeeping (input
  preparation, logits-processor and stopping-criteria lists, kwargs updates), which is most of the time of a small
  model's step.
* ``"hf"``: ``model.generate`` with the same settings.
* ``"auto"`` (default): ``"lean"`` when :func:`lean_supported` says the loop reproduces ``generate`` for this model
  (a decoder-only transformers causal LM, or a non-prompt-learning PEFT wrapper of one, whose forward takes
  ``cache``/``position_ids``/``logits_to_keep`` and whose generation config adds nothing to the decoding: no
  repetition penalty, forced or suppressed tokens, minimum length, static cache, and when sampling no ``min_p``,
  ``typical_p``, ``epsilon_cutoff``, ``eta_cutoff`` or ``top_h``, ...); ``"hf"`` otherwise.

Sampling (:func:`generate_samples`, its settings a :class:`SampleSettings`): ``n`` completions per prompt, each prompt
repeated as ``n`` rows of the same length-sorted, left-padded batches of ``batch_size`` rows.

* What is identical to ``generate``: the lean loop applies to the float32 last-position logits the warpers
  ``generate(do_sample=True, temperature=t, top_k=k, top_p=p)`` applies, in its order and with its arithmetic
  (``TemperatureLogitsWarper``, ``TopKLogitsWarper`` unless ``k == 0``, ``TopPLogitsWarper`` unless ``p == 1``), then
  a softmax and ``torch.multinomial(probs, 1)`` from the global RNG, every row at every step (finished rows too). Under
  the same RNG state its tokens equal ``generate``'s for the same batch (tests/test_generation.py checks this), and
  ``impl="hf"`` calls ``generate`` with those settings. ``temperature=0`` is greedy decoding: the greedy text, computed
  once per prompt, is each of its ``n`` samples.
* Seeding: the whole call runs inside ``torch.random.fork_rng`` (the CPU generator and, on CUDA, the model's device's),
  and batch ``b`` (0, 1, ...) starts from seed ``seed + b``. The results depend on ``seed`` only, not on the caller's
  RNG state, and the caller's RNG state is left as it was.
* The results depend on the batch composition: ``batch_size`` (and the other prompts of the call) decide which rows
  share a batch, hence each row's padding and its draws from the batch's RNG stream, exactly as for ``generate``'s
  sampling of a batch. The same call with the same arguments gives the same samples.
* vLLM: ``SamplingParams(n=n, temperature, top_p, top_k, max_tokens, seed, stop)``; its sampler and seeding are
  vLLM's own (the same distribution, not the same draws).
"""

from __future__ import annotations

from collections.abc import Sequence

from llmpost.generation.common import (
    GenerationBackend,
    GenerationImpl,
    SampleSettings,
    Sampling,
    StopOnStrings,
    _count_generated,
    _decode,
    _eos_ids,
    postprocess,
)
from llmpost.generation.lean import lean_supported
from llmpost.generation.transformers_backend import _generate_transformers, auto_generation_batch_size
from llmpost.generation.vllm_backend import _generate_vllm, _sample_vllm
from llmpost.models import pad_token_id

__all__ = [
    "GenerationBackend", "GenerationImpl", "SampleSettings", "Sampling", "StopOnStrings", "auto_generation_batch_size",
    "generate_greedy", "generate_samples", "lean_supported", "postprocess",
]  # fmt: skip


def _greedy_ids(model, tokenizer, prompts, max_new_tokens, batch_size, stopwords, backend, impl) -> list[list[int]]:
    match GenerationBackend(backend):
        case GenerationBackend.TRANSFORMERS:
            return _generate_transformers(model, tokenizer, prompts, max_new_tokens, batch_size, stopwords, impl)
        case GenerationBackend.VLLM:
            return _generate_vllm(model, prompts, max_new_tokens, stopwords)


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
    ``"auto"`` (default), ``"lean"`` or ``"hf"``, the same tokens either way (package docstring).
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
    if not prompts:
        return []
    token_ids = _greedy_ids(model, tokenizer, prompts, max_new_tokens, batch_size, stopwords, backend, impl)
    return _decode(tokenizer, token_ids, stopwords)


def _check_sample_settings(s: SampleSettings) -> None:
    checks = [
        ("n", s.n, s.n >= 1, "an integer >= 1"),
        ("temperature", s.sampling.temperature, s.sampling.temperature >= 0, ">= 0 (0 means greedy decoding)"),
        ("top_p", s.sampling.top_p, 0 < s.sampling.top_p <= 1, "in (0, 1] (1 means off)"),
        ("top_k", s.sampling.top_k, s.sampling.top_k >= 0, "an integer >= 0 (0 means off)"),
        ("max_new_tokens", s.max_new_tokens, s.max_new_tokens >= 1, "an integer >= 1"),
        ("batch_size", s.batch_size, s.batch_size >= 1, "an integer >= 1"),
    ]
    for name, value, ok, expected in checks:
        if not ok:
            raise ValueError(f"generate_samples: {name} must be {expected}, got {value!r}")


def generate_samples(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    settings: SampleSettings | None = None,
    *,
    return_token_counts: bool = False,
) -> list[list[str]] | tuple[list[list[str]], int]:
    """``settings.n`` sampled continuations of each token-id prompt, decoded and post-processed (:func:`postprocess`):
    one list of ``n`` texts per prompt, in the prompts' order.

    Sampling applies ``temperature``, then ``top_k`` (``0``: off), then ``top_p`` (``1.0``: off), as
    ``generate(do_sample=True)`` does; ``temperature=0`` is greedy decoding (computed once per prompt, repeated ``n``
    times). ``batch_size`` counts rows (a prompt's ``n`` samples are ``n`` rows). The samples are a function of
    ``seed`` and the batch composition, independent of the caller's RNG state, which is left untouched (package
    docstring). ``model``, ``backend``, ``impl`` and ``stopwords`` as for :func:`generate_greedy`; every setting is a
    field of :class:`SampleSettings` (``None``: its defaults, one sample of up to 256 tokens).

    With ``return_token_counts=True`` returns ``(texts, n_tokens)``: the number of tokens the call generated (each row
    to its first EOS, stop or limit; greedy rows once per prompt), for throughput figures.
    """
    settings = settings if settings is not None else SampleSettings()
    _check_sample_settings(settings)
    n, max_new_tokens, batch_size = settings.n, settings.max_new_tokens, settings.batch_size
    stopwords = settings.stopwords
    backend, impl = GenerationBackend(settings.backend), GenerationImpl(settings.impl)
    if not prompts:
        return ([], 0) if return_token_counts else []
    vllm = backend == GenerationBackend.VLLM
    if settings.sampling.temperature == 0:
        ids = _greedy_ids(model, tokenizer, prompts, max_new_tokens, batch_size, stopwords, backend, impl)
        texts = [[t] * n for t in _decode(tokenizer, ids, stopwords)]
    else:
        s = settings.sampling
        sampling = Sampling(temperature=float(s.temperature), top_k=int(s.top_k), top_p=float(s.top_p))
        if vllm:
            per_prompt = _sample_vllm(model, prompts, n, sampling, max_new_tokens, settings.seed, stopwords)
            ids = [row for rows in per_prompt for row in rows]
        else:
            rows = [p for p in prompts for _ in range(n)]
            ids = _generate_transformers(model, tokenizer, rows, max_new_tokens, batch_size, stopwords, impl,
                                         sampling=sampling, seed=settings.seed, unit="sample")  # fmt: skip
        flat = _decode(tokenizer, ids, stopwords)
        texts = [flat[i * n : (i + 1) * n] for i in range(len(prompts))]
    if not return_token_counts:
        return texts
    if vllm:
        return texts, sum(len(row) for row in ids)
    return texts, _count_generated(ids, _eos_ids(model, tokenizer), pad_token_id(tokenizer))
