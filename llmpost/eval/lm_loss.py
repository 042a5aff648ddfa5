"""Held-out language-modelling loss of a saved model (the pretraining recipes' evaluation)."""

from __future__ import annotations

import math
import os

import torch

from llmpost.eval import Evaluator
from llmpost.utils import atomic_write_json

PRETRAIN_EVAL_FILE = "PRETRAIN_EVAL.json"


def pretrain_evaluator(validation) -> Evaluator | None:
    """Held-out language-modelling loss of a pretraining recipe's saved model: the token-mean negative
    log-likelihood over every target token of the packed validation rows (and its perplexity), rows sharded over
    processes, written to ``eval_dir/PRETRAIN_EVAL.json``. ``None`` without a validation split."""
    if validation is None:
        return None
    rows = [list(r) for r in validation["input_ids"]]

    def evaluate(model, tokenizer, args, eval_dir: str) -> dict:
        from tqdm.auto import tqdm

        from llmpost.eval.shard import sharded_map, world
        from llmpost.ops import token_logps

        batch = max(1, args.per_device_eval_batch_size)

        def score(chunk: list[list[int]]) -> list[tuple[float, int]]:
            out = []
            model.eval()
            with torch.no_grad():
                for i in tqdm(range(0, len(chunk), batch), desc="validation loss", disable=world()[1] != 0):
                    ids = torch.tensor(chunk[i : i + batch], device=model.device)
                    logps, mask = token_logps(model, ids, torch.ones_like(ids), ids)
                    out += [(-lp.sum().item(), int(m.sum().item())) for lp, m in zip(logps, mask)]
            return out

        scored = sharded_map(score, rows, [len(r) for r in rows])
        nll, tokens = sum(s for s, _ in scored), sum(n for _, n in scored)
        summary = {"eval_loss": nll / tokens, "perplexity": math.exp(nll / tokens), "tokens": tokens,
                   "sequences": len(rows)}  # fmt: skip
        if world()[1] == 0:
            atomic_write_json(os.path.join(eval_dir, PRETRAIN_EVAL_FILE), summary)
        return summary

    return evaluate
