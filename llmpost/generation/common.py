"""What every generation backend shares: the backend/impl enums, the pad and EOS tokens, post-processing of decoded
text, the stop-string criterion for ``generate``, the sampling settings (:class:`Sampling`, :class:`SampleSettings`)
and the progress bar."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria

from llmpost.utils import progress_disabled


class GenerationBackend(str, Enum):
    TRANSFORMERS = "transformers"
    VLLM = "vllm"


class GenerationImpl(str, Enum):
    """How the transformers backend decodes: see the package docstring."""

    AUTO = "auto"
    LEAN = "lean"
    HF = "hf"


@dataclass(frozen=True)
class Sampling:
    """Multinomial sampling settings, applied as ``generate(do_sample=True, ...)`` applies them: temperature, then
    top-k (``0``: off), then top-p (``1.0``: off)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclass(frozen=True)
class SampleSettings:
    """What :func:`llmpost.generation.generate_samples` draws and how it runs the decoding."""

    n: int = 1
    """Completions per prompt (each prompt becomes ``n`` rows of the batches)."""
    sampling: Sampling = Sampling()
    """Temperature, top-k and top-p (:class:`Sampling`); ``temperature=0`` is greedy decoding, computed once per
    prompt and repeated ``n`` times."""
    max_new_tokens: int = 256
    """Generation length limit in tokens."""
    seed: int = 0
    """Batch ``b`` (0, 1, ...) draws from seed ``seed + b``; the caller's RNG state is left untouched."""
    batch_size: int = 32
    """Rows per batch (a prompt's ``n`` samples count as ``n`` rows); the samples depend on it."""
    stopwords: Sequence[str] | None = None
    """Strings that end a generation early; the text is cut before them either way."""
    backend: str | GenerationBackend = GenerationBackend.TRANSFORMERS
    """``"transformers"`` or ``"vllm"`` (GPU, optional)."""
    impl: str | GenerationImpl = GenerationImpl.AUTO
    """Transformers backend: ``"auto"``, ``"lean"`` or ``"hf"`` (the same tokens either way)."""


def postprocess(text: str, tokenizer, stopwords: Sequence[str] | None = None) -> str:
    """Cut ``text`` before the decoded EOS and before each stop word (in that order), then strip it."""
    cuts = ([tokenizer.decode([tokenizer.eos_token_id])] if tokenizer.eos_token_id is not None else []) + list(
        stopwords or []
    )
    for word in cuts:
        if word and word in text:
            text = text.split(word)[0]
    return text.strip()


def _decode(tokenizer, token_ids: Sequence[Sequence[int]], stopwords: Sequence[str] | None) -> list[str]:
    """New tokens -> text: decoded without special tokens, then :func:`postprocess`-ed."""
    texts = tokenizer.batch_decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return [postprocess(t, tokenizer, stopwords) for t in texts]


def _count_generated(rows: Sequence[Sequence[int]], eos: Sequence[int], pad: int) -> int:
    """Tokens a batch of padded output rows really generated: each row up to and including its first EOS, else up to
    its trailing padding (rows finished by a stop string are padded after it)."""
    eos_set, total = set(eos), 0
    for row in rows:
        n = next((i + 1 for i, t in enumerate(row) if t in eos_set), None)
        if n is None:
            n = len(row)
            while n and row[n - 1] == pad:
                n -= 1
        total += n
    return total


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
    """The model's generation-config EOS ids plus the tokenizer's EOS."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _progress(total: int, desc: str, unit: str = "prompt"):
    """A tqdm bar on stderr (count, rate, ETA), also when stderr is a log file; off under ``TQDM_DISABLE``."""
    return tqdm(total=total, desc=desc, unit=unit, disable=progress_disabled(), mininterval=5.0)
