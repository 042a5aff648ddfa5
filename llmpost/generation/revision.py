"""Self-revision at inference (SRPO, Choi et al., arXiv 2406.01660, sec. 3 and 5): one model, two roles.

SRPO trains a single policy for two tasks told apart only by the prompt: *generation* (answer the prompt) and
*self-revision* (given the prompt and a previous answer, write a better one). At evaluation time the model drafts an
answer, then revises its own answer ``k`` times; the paper reports the win rate of each revision step against the gold
completions (:mod:`llmpost.benchmarks.preference.winrate`).

:func:`self_revise` runs that loop with greedy decoding on the shared generation layer
(:func:`llmpost.generation.generate_greedy`, transformers or vLLM backend):

* round 0: ``y_0 = greedy(templates.generation_prompt(x))``;
* round ``j = 1..k``: ``y_j = greedy(templates.revision_prompt(x, y_{j-1}))``.

Each round is one batched call over all prompts (the prompts of a round depend on the previous round's outputs, so the
rounds run one after the other). Prompt texts are tokenised as in the rest of the package (``tokenizer(text,
add_special_tokens=True)["input_ids"]``, as :func:`llmpost.data.templates.encode_prompt` without a chat template and SRPO
training's :func:`llmpost.data.templates.tokenize_prompt_completion` do), so a Llama tokenizer prepends its BOS; they
are cut only when ``max_prompt_length`` is given (a long draft makes a long revision prompt). An empty draft is
allowed: it enters the revision prompt as empty text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llmpost.generation import GenerationBackend, generate_greedy

if TYPE_CHECKING:
    from llmpost.data.templates import PreferenceTemplates

__all__ = ["self_revise"]

logger = logging.getLogger(__name__)


def _encode(tokenizer, texts: Sequence[str], max_prompt_length: int | None) -> list[list[int]]:
    """Token ids of each prompt text; longer than ``max_prompt_length``: the first (BOS) token and the last tokens, as
    training cuts prompts (:func:`llmpost.data.templates.tokenize_prompt_completion`)."""
    from llmpost.data.templates import cut_prompt

    out = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        out.append(ids if max_prompt_length is None else cut_prompt(ids, max_prompt_length))
    return out


def self_revise(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    k: int,
    templates: PreferenceTemplates,
    max_new_tokens: int = 128,
    batch_size: int = 32,
    backend: str | GenerationBackend = "transformers",
    impl: str = "auto",
    stopwords: Sequence[str] | None = None,
    max_prompt_length: int | None = None,
) -> list[list[str]]:
    """For each raw prompt, the ``k + 1`` greedy texts ``[y_0, y_1, ..., y_k]``: ``y_0`` answers
    ``templates.generation_prompt(prompt)``, ``y_j`` answers ``templates.revision_prompt(prompt, y_{j-1})``.

    Returns one list per prompt, in the prompts' order. ``k = 0`` is plain greedy generation. ``model``, ``backend``
    (``"transformers"`` or ``"vllm"``), ``impl``, ``batch_size``, ``max_new_tokens`` and ``stopwords`` are passed to
    :func:`llmpost.generation.generate_greedy` unchanged; with ``backend="vllm"`` a model path is turned into one
    ``vllm.LLM`` engine for all rounds (rather than one per round). ``max_prompt_length`` (default ``None``: no cut)
    keeps the first token and the end of longer prompts (the question's end, the draft and the answer cue), as
    training's ``max_prompt_length`` does. Logs one line per round.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"self_revise: k (the number of revisions) must be an integer >= 0, got {k!r}")
    if max_prompt_length is not None and max_prompt_length < 1:
        raise ValueError(f"self_revise: max_prompt_length must be >= 1 or None, got {max_prompt_length!r}")
    if isinstance(prompts, str):
        raise TypeError("self_revise: prompts must be a list of strings, got a single string")
    prompts = list(prompts)
    if not prompts:
        return []
    if GenerationBackend(backend) == GenerationBackend.VLLM:
        from llmpost.generation.vllm_backend import _vllm_engine

        model = _vllm_engine(model)[1]  # the engine itself when given one; else built once, not once per round

    drafts: list[list[str]] = [[] for _ in prompts]
    previous: list[str] | None = None
    for j in range(k + 1):
        if previous is None:
            texts = [templates.generation_prompt(p) for p in prompts]
        else:
            texts = [templates.revision_prompt(p, y) for p, y in zip(prompts, previous)]
        ids = _encode(tokenizer, texts, max_prompt_length)
        start = time.perf_counter()
        previous = generate_greedy(model, tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   stopwords=stopwords, backend=backend, impl=impl)  # fmt: skip
        for row, text in zip(drafts, previous):
            row.append(text)
        logger.info("self-revision round %d/%d (%s): %d prompts, mean prompt length %.0f tokens, %.1f s, %d empty",
                    j, k, "generation" if j == 0 else "revision", len(ids), sum(map(len, ids)) / len(ids),
                    time.perf_counter() - start, sum(not t for t in previous))  # fmt: skip
    return drafts
