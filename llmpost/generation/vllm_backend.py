"""The optional vLLM backend (single process, GPU): greedy decoding and sampling. vLLM is imported only when used."""

from __future__ import annotations

from collections.abc import Sequence

from llmpost.generation.common import Sampling


def _vllm_engine(model):
    """``model`` itself when it is a ``vllm.LLM``, else an engine built from the path ``model``; the module too."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "generation backend 'vllm' was requested but vLLM is not installed: `pip install llmpost[vllm]` "
            "(GPU only), or use the 'transformers' backend"
        ) from e
    # Built from a path, the engine shares the GPU with the transformers model used for scoring: take half of it.
    llm = model if isinstance(model, vllm.LLM) else vllm.LLM(model=str(model), gpu_memory_utilization=0.5)
    return vllm, llm


def _generate_vllm(model, prompts, max_new_tokens, stopwords) -> list[list[int]]:
    vllm, llm = _vllm_engine(model)
    params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=list(stopwords or []) or None)
    outputs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params)
    return [list(o.outputs[0].token_ids) for o in outputs]


def _sample_vllm(model, prompts: Sequence[Sequence[int]], n: int, sampling: Sampling, max_new_tokens: int, seed: int,
                 stopwords: Sequence[str] | None) -> list[list[list[int]]]:  # fmt: skip
    """``n`` sampled continuations (token ids) of each prompt, in order. ``top_k=0`` ("off") is passed as ``-1``,
    which every vLLM version reads as off (older ones reject ``0``; newer ones prefer it but accept ``-1``)."""
    vllm, llm = _vllm_engine(model)
    params = vllm.SamplingParams(
        n=n,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k if sampling.top_k > 0 else -1,
        max_tokens=max_new_tokens,
        seed=seed,
        stop=list(stopwords or []) or None,
    )
    outputs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params)
    return [[list(c.token_ids) for c in sorted(o.outputs, key=lambda c: c.index)] for o in outputs]
