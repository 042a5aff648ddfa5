"""MUSE's two model passes, batched longest first and split across ranks (:mod:`llmpost.eval.shard`): greedy
continuations of the VerbMem / KnowMem prompts and per-token log-probs of the PrivLeak texts, each with a progress bar
on rank 0."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from llmpost.benchmarks.muse.data import GenerationItem, ScoreItem
from llmpost.data.collators import pad_examples
from llmpost.eval.shard import model_device, sharded_map, world
from llmpost.generation import generate_greedy
from llmpost.models import pad_token_id
from llmpost.ops import IGNORE_INDEX, token_logps


def _progress(desc: str, total: int):
    """A tqdm bar with rate and ETA on rank 0 (``TQDM_DISABLE=1`` turns it off)."""
    return tqdm(total=total, desc=desc, unit="ex", **({"disable": True} if world()[1] else {}))


def generate(model, tokenizer, items: list[GenerationItem], *, max_new_tokens: int, batch_size: int, stopwords=None,
             desc: str = "generating") -> list[str]:  # fmt: skip
    """Greedy continuations of ``items`` (:func:`llmpost.generation.generate_greedy`, one call per batch so the bar
    advances), longest first, split across ranks; returned in the items' order."""

    def run(shard: list[GenerationItem]) -> list[str]:
        out: list[str] = []
        with _progress(desc, len(shard)) as bar:
            for start in range(0, len(shard), batch_size):
                chunk = [it.prompt_ids for it in shard[start : start + batch_size]]
                out += generate_greedy(model, tokenizer, chunk, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                       stopwords=stopwords)  # fmt: skip
                bar.update(len(chunk))
        return out

    return sharded_map(run, items, [len(it.prompt_ids) for it in items])


@torch.no_grad()
def score_texts(model, tokenizer, items: list[ScoreItem], *, batch_size: int,
                desc: str = "scoring") -> list[np.ndarray]:  # fmt: skip
    """Per-token log-probs (float64 arrays) of each item's positions ``[first, end)``: one right-padded forward pass
    per batch (:func:`llmpost.ops.token_logps`), longest first, split across ranks; in the items' order."""
    pad_id, device = pad_token_id(tokenizer), model_device(model)

    def run(shard: list[ScoreItem]) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        with _progress(desc, len(shard)) as bar:
            for start in range(0, len(shard), batch_size):
                chunk = shard[start : start + batch_size]
                examples = [{"input_ids": it.input_ids, "attention_mask": [1] * len(it.input_ids),
                             "labels": [IGNORE_INDEX] * it.first + it.input_ids[it.first : it.end]
                             + [IGNORE_INDEX] * (len(it.input_ids) - it.end)} for it in chunk]  # fmt: skip
                batch = {k: v.to(device) for k, v in pad_examples(examples, pad_id).items()}
                logps, mask = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
                out += [logps[r][mask[r]].double().cpu().numpy() for r in range(len(chunk))]
                bar.update(len(chunk))
        return out

    return sharded_map(run, items, [len(it.input_ids) for it in items])
