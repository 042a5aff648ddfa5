"""Held-out evaluation of a preference-trained model, the same for SRPO, DPO, IPO and the SFT -> DPO pipeline.

* **Implicit-reward accuracy** (:func:`implicit_reward_metrics`): for held-out pairs, the DPO implicit reward margin
  ``m = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]`` under the generation prompt,
  ``pi_ref`` the model before training (its log-probs are taken before training, so no second model is loaded).
  Reported: accuracy ``mean(m > 0)`` (ties count 1/2; the starting model scores exactly 0.5), mean margin and the
  bootstrap 95% interval of the accuracy. This is TRL DPO's ``rewards/accuracies`` on held-out pairs.
* **Win rate after 0..k self-revisions** (:func:`revision_evaluation`): the judge's score of the model's drafts
  ``y_0 .. y_k`` (:func:`llmpost.generation.revision.self_revise`) against the gold (chosen) completions
  (:mod:`llmpost.benchmarks.preference.winrate`).
"""

from __future__ import annotations

import json
import os

import torch

from llmpost.data.collators import pad_examples
from llmpost.data.templates import PreferenceTemplates, tokenize_prompt_completion
from llmpost.eval import Evaluator
from llmpost.eval.shard import model_device, sharded_map
from llmpost.models import pad_token_id
from llmpost.ops import sequence_logps, token_logps
from llmpost.utils import atomic_write_json, atomic_write_text

PREFERENCE_EVAL_FILE = "PREFERENCE_EVAL.json"


@torch.no_grad()
def pair_logps(model, tokenizer, dataset, templates: PreferenceTemplates, max_length: int, batch_size: int = 16,
               max_prompt_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen, rejected)`` completion log-prob sums, each ``(N,)`` float32 in dataset order, under the generation
    prompt; the rows are shared over processes (every process gets all values)."""
    rows = []
    for r in dataset:
        prompt = templates.generation_prompt(r["prompt"])
        for key in ("chosen", "rejected"):
            rows.append(tokenize_prompt_completion(tokenizer, prompt, templates.completion(r[key]), max_length,
                                                   max_prompt_length))
    pad, device = pad_token_id(tokenizer), model_device(model)
    was_training = model.training
    model.eval()

    def score(items):
        out = []
        for start in range(0, len(items), batch_size):
            batch = {k: v.to(device) for k, v in pad_examples(items[start:start + batch_size], pad).items()}
            logps, mask = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            out.extend(sequence_logps(logps, mask).float().cpu().tolist())
        return out

    values = torch.tensor(sharded_map(score, rows, [len(r["input_ids"]) for r in rows]))
    model.train(was_training)
    return values[0::2], values[1::2]


def implicit_reward_metrics(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
                            ref_rejected: torch.Tensor, seed: int = 0) -> dict:
    """Accuracy (``m > 0``, ties 1/2), its bootstrap 95% interval, and the mean margin ``m`` (no beta: nats)."""
    from llmpost.eval.stats import bootstrap_mean

    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    correct = (margin > 0).double() + 0.5 * (margin == 0).double()
    acc, low, high = bootstrap_mean(correct.tolist(), seed=seed)
    return {"accuracy": acc, "accuracy_ci95": [low, high], "mean_margin": float(margin.mean()), "n": len(margin)}


def preference_evaluator(data_args, heldout, model, tokenizer, max_length: int, batch_size: int = 16) -> Evaluator | None:
    """Held-out evaluation of a preference recipe (:mod:`llmpost.benchmarks.preference.evaluate`), as an :data:`Evaluator`.

    ``model`` is the starting model (the reference of the implicit reward): its held-out log-probs are taken now,
    before training, so no second model is loaded afterwards. ``data_args`` is a
    :class:`llmpost.benchmarks.preference.data.PreferenceArguments`. The judge is built now, so a bad judge path stops the recipe
    before training. Writes ``eval_dir/PREFERENCE_EVAL.json`` (implicit-reward accuracy, win rate after 0..k
    revisions) and ``eval_dir/drafts.jsonl`` (every draft of every held-out prompt)."""
    if not data_args.eval_after_training or heldout is None:
        return None
    from accelerate import PartialState

    from llmpost.benchmarks.preference.model_judges import build_judge
    from llmpost.benchmarks.preference.winrate import revision_win_rates

    templates = data_args.templates()
    judge = build_judge(data_args.judge, data_args.judge_model_path)
    model.to(PartialState().device)  # score on the accelerator (the trainer would move it there anyway)
    ref_chosen, ref_rejected = pair_logps(model, tokenizer, heldout, templates, max_length, batch_size)
    from llmpost.data.preference import sft_rows_from_pairs

    gold = sft_rows_from_pairs(heldout)  # one draft chain per distinct prompt; its first pair's chosen answer is the gold
    prompts, references = gold["prompt"], gold["completion"]

    def evaluate(model, tokenizer, args, eval_dir: str) -> dict:
        from llmpost.eval.shard import sharded_map, world
        from llmpost.generation.revision import self_revise

        chosen, rejected = pair_logps(model, tokenizer, heldout, templates, max_length, batch_size)
        implicit = implicit_reward_metrics(chosen, rejected, ref_chosen, ref_rejected)
        drafts = sharded_map(
            lambda items: self_revise(model, tokenizer, items, k=data_args.num_revisions, templates=templates,
                                      max_new_tokens=data_args.eval_max_new_tokens, batch_size=batch_size,
                                      backend=data_args.generation_backend,
                                      max_prompt_length=data_args.eval_max_prompt_length),
            prompts, [len(p) for p in prompts])  # fmt: skip
        summary = {"implicit_reward": implicit, "judge": judge.name, "num_revisions": data_args.num_revisions,
                   "num_prompts": len(prompts), "num_pairs": len(heldout)}
        if world()[1] == 0:
            summary["revisions"] = revision_win_rates(drafts, prompts, references, judge)
            os.makedirs(eval_dir, exist_ok=True)
            atomic_write_text(os.path.join(eval_dir, "drafts.jsonl"), "".join(
                json.dumps({"prompt": p, "gold": r, "drafts": d}) + "\n" for p, r, d in zip(prompts, references, drafts)))
            atomic_write_json(os.path.join(eval_dir, PREFERENCE_EVAL_FILE), summary)
        return summary

    return evaluate
