"""Held-out evaluation of a preference-trained model, the same for SRPO, DPO, IPO and the SFT -> DPO pipeline.

* **Implicit-reward accuracy** (:func:`implicit_reward_metrics`): for held-out pairs, the DPO implicit reward margin
  ``m = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]`` under the generation prompt,
  ``pi_ref`` the model before training (its log-probs are taken before training, so no second model is loaded).
  Reported: accuracy ``mean(m > 0)`` (ties count 1/2; the starting model scores exactly 0.5), mean margin and the
  bootstrap 95% interval of the accuracy. This is TRL DPO's ``rewards/accuracies`` on held-out pairs.
* **Win rate after 0..k self-revisions** (:func:`revision_evaluation`): the judge's score of the model's drafts
  ``y_0 .. y_k`` (:func:`llmpost.generation.revision.self_revise`) against the gold (chosen) completions
  (:mod:`llmpost.eval.winrate`).
"""

from __future__ import annotations

import torch

from ..data.collators import pad_examples
from ..data.preference import PreferenceTemplates, tokenize_prompt_completion
from ..generation import pad_token_id
from ..ops import sequence_logps, token_logps
from .shard import model_device, sharded_map

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
    from .winrate import bootstrap_mean

    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    correct = (margin > 0).double() + 0.5 * (margin == 0).double()
    acc, low, high = bootstrap_mean(correct.tolist(), seed=seed)
    return {"accuracy": acc, "accuracy_ci95": [low, high], "mean_margin": float(margin.mean()), "n": len(margin)}
