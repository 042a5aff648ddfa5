"""The SRPO trainer (Self-Improving Robust Preference Optimization, arXiv 2406.01660): a trainer on the shared base
(:mod:`llmpost.trainers.base`) computing :func:`llmpost.losses.srpo.srpo_loss` (equations, sources and choices in ``srpo.py``).

Per preference pair ``(x, y_w, y_l)`` the trainer scores six sequences (:data:`llmpost.trainers.srpo.SRPO_SEQUENCES`):
``y_w`` and ``y_l`` under the generation prompt (``prompt_template``), and ``y_w`` / ``y_l`` each under the revision
prompt (``revision_template``) holding ``y_l`` and holding ``y_w``. All ``6 B`` rows of a micro-batch go through one
forward (one larger matmul, TRL's fused LM head, optionally padding-free), and their completion-token log-prob sums
minus the reference's give the six log-ratios ``h``.

**Length normalisation** (``length_normalize``, default on): each log-ratio ``h`` is divided by its completion's
token count before the loss, as TRL's IPO loss does ("confirmed with the IPO authors; the results reported in the
paper correspond to this normalized form", TRL ``DPOTrainer``); SRPO shares IPO's squared loss and three of its
authors. With sums (``length_normalize: false``, the equations read literally) the margins' targets of 1/2 and 1
over beta nats are reached by a tiny change of a long answer's probability, and the squared loss's gradient grows
with the answer length. Either way the reference, the six sequences and the loss are the same; only ``h`` is scaled.

Reference (:class:`llmpost.trainers.reference.Reference`): ``precomputed`` (default without LoRA: the ``6 N``
sequences scored once before training, no second model), ``peft_base`` (default with LoRA) or ``model``.

Logged every logging step (TRL DPO-style names): ``rewards/chosen`` / ``rewards/rejected`` = ``beta h(y_w)`` /
``beta h(y_l)``, ``rewards/margins``, ``rewards/accuracies`` (``h(y_w) > h(y_l)``), ``logps/chosen`` /
``logps/rejected``, ``srpo/self_loss``, ``srpo/gen_loss``, the three scaled margins ``srpo/margin_given_l``,
``srpo/margin_given_w`` (targets 1/2) and ``srpo/margin_gen`` (target 1), and ``srpo/revision_accuracy`` (the
revision prompt prefers ``y_w`` over ``y_l`` whichever draft it holds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import torch

from llmpost.data.collators import pad_examples
from llmpost.data.preference import validate_preference_rows
from llmpost.data.templates import PreferenceTemplates, tokenize_prompt_completion
from llmpost.losses.srpo import srpo_terms
from llmpost.ops import sequence_logps, token_logps
from llmpost.trainers.base import LlmpostTrainer, ReferenceConfig
from llmpost.trainers.metrics import check_finite_loss
from llmpost.trainers.reference import Reference

SRPO_SEQUENCES = {
    "w": ("chosen", None), "l": ("rejected", None),
    "w_given_l": ("chosen", "rejected"), "l_given_l": ("rejected", "rejected"),
    "w_given_w": ("chosen", "chosen"), "l_given_w": ("rejected", "chosen"),
}

KEYS = tuple(SRPO_SEQUENCES)  # w, l, w_given_l, l_given_l, w_given_w, l_given_w


@dataclass
class SRPOConfig(ReferenceConfig):
    """Training arguments for SRPO. ``beta`` and ``alpha`` are not fixed by the sources read here (the paper's text was
    not available; TRL PR 1772 takes both from the user): beta 0.1 is TRL DPO's default, alpha 0.5 weighs the
    self-improvement and generative losses equally."""

    beta: float = field(default=0.1, metadata={"help": "KL strength beta (> 0): the margins' targets are 1/2 and 1 over beta."})
    alpha: float = field(default=0.5, metadata={"help": "Weight of the self-improvement loss in [0, 1] (1 - alpha: the generative loss)."})
    max_prompt_length: int | None = field(default=None, metadata={"help": "Prompt tokens kept when truncating (default max_length // 2)."})
    length_normalize: bool = field(default=True, metadata={"help": "Divide each sequence's log-ratio by its completion tokens (as TRL's IPO; see the module docstring); false: sums."})

    def __post_init__(self):
        if isinstance(self.beta, bool) or not self.beta > 0:
            raise ValueError(f"beta: must be > 0, got {self.beta}")
        if isinstance(self.alpha, bool) or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha: must be in [0, 1], got {self.alpha}")
        if self.max_length < 2:
            raise ValueError(f"max_length: must be >= 2, got {self.max_length}")
        if self.max_prompt_length is not None and not 1 <= self.max_prompt_length < self.max_length:
            raise ValueError(f"max_prompt_length: must be in [1, max_length), got {self.max_prompt_length}")
        super().__post_init__()


class _SRPOCollator:
    """``B`` tokenised pairs -> one padded batch of ``6 B`` rows, key-major (all ``w`` rows, then all ``l`` rows, ...)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        seqs = [{"input_ids": r[f"{k}_input_ids"], "labels": r[f"{k}_labels"],
                 "attention_mask": [1] * len(r[f"{k}_input_ids"])} for k in KEYS for r in rows]
        batch = pad_examples(seqs, self.pad_id)
        batch["index"] = torch.as_tensor([r["index"] for r in rows])
        return batch


def flatten_srpo(tokenized: datasets.Dataset) -> datasets.Dataset:
    """One row per sequence (``index = 6 * pair + key``), for the reference pass."""
    def explode(batch):
        out = {"input_ids": [], "labels": [], "attention_mask": [], "index": []}
        for j, pair in enumerate(batch["index"]):
            for k, key in enumerate(KEYS):
                ids = batch[f"{key}_input_ids"][j]
                out["input_ids"].append(ids)
                out["labels"].append(batch[f"{key}_labels"][j])
                out["attention_mask"].append([1] * len(ids))
                out["index"].append(6 * pair + k)
        return out

    return tokenized.map(explode, batched=True, remove_columns=tokenized.column_names, desc="Flattening SRPO sequences")


class SRPOTrainer(LlmpostTrainer):
    """SRPO. ``train_dataset``: preference pairs with string columns ``prompt``, ``chosen``, ``rejected`` (TRL's
    format; validated, then tokenised here with ``templates``: the generation and revision prompts)."""

    collator = _SRPOCollator

    def __init__(self, model, args: SRPOConfig, train_dataset, processing_class, templates: PreferenceTemplates | None = None,
                 ref_model=None, peft_config=None, **kwargs):
        self.templates = templates or PreferenceTemplates()
        tokenized = tokenize_srpo(train_dataset, processing_class, self.templates, args.max_length, args.max_prompt_length)
        super().__init__(model, args, tokenized, processing_class, peft_config=peft_config, **kwargs)
        ref = self.setup_reference(True, needs_logits=False, ref_model=ref_model)
        self.ref_logps = None
        if ref == Reference.PRECOMPUTED:  # after Trainer.__init__: the pass needs self.accelerator
            flat = flatten_srpo(tokenized)
            self.ref_logps = self.precompute_ref_logps(flat).view(len(tokenized), len(KEYS)).to(self.accelerator.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: SRPOConfig = self.args
        ids, att, lab = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        logps, mask = token_logps(model, ids, att, lab, fused=self.fused, padding_free=self.padding_free)
        seq = sequence_logps(logps, mask).view(len(KEYS), -1)  # (6, B)
        if self.ref_logps is not None:
            ref = self.ref_logps[inputs["index"]].T
        else:
            ref = self.reference_sequence_logps(ids, att, lab).view(len(KEYS), -1)
        diff = seq - ref
        if args.length_normalize:
            diff = diff / mask.sum(-1).view(len(KEYS), -1).clamp(min=1)
        h = dict(zip(KEYS, diff))
        terms = srpo_terms(h["w"], h["l"], h["w_given_l"], h["l_given_l"], h["w_given_w"], h["l_given_w"],
                           args.beta, args.alpha)
        loss = terms["loss"].mean()
        check_finite_loss(self, loss)
        chosen, rejected = args.beta * h["w"].detach(), args.beta * h["l"].detach()
        self.record_metrics({
            "rewards/chosen": chosen, "rewards/rejected": rejected, "rewards/margins": chosen - rejected,
            "rewards/accuracies": (chosen > rejected).float(), "logps/chosen": seq[0], "logps/rejected": seq[1],
            "srpo/self_loss": terms["self_loss"], "srpo/gen_loss": terms["gen_loss"],
            "srpo/margin_given_l": terms["margin_given_l"], "srpo/margin_given_w": terms["margin_given_w"],
            "srpo/margin_gen": terms["margin_gen"],
            "srpo/revision_accuracy": ((terms["margin_given_l"] > 0).float() + (terms["margin_given_w"] > 0).float()) / 2,
        })
        return loss


# SRPO's six sequences per pair: (target completion, completion in the revision prompt or None for the generation prompt)


def tokenize_srpo(dataset: datasets.Dataset, tokenizer, templates: PreferenceTemplates, max_length: int,
                  max_prompt_length: int | None = None) -> datasets.Dataset:
    """The six tokenised sequences of each preference pair (columns ``{key}_input_ids`` / ``{key}_labels`` for ``key``
    in :data:`SRPO_SEQUENCES`) and an ``index`` column: ``w`` / ``l`` are the chosen / rejected completions under the
    generation prompt, ``a_given_b`` is completion ``a`` under the revision prompt holding completion ``b``."""
    validate_preference_rows(dataset, "SRPO training data")

    def encode(row, index):
        out = {"index": index}
        for key, (target, given) in SRPO_SEQUENCES.items():
            prompt = (templates.generation_prompt(row["prompt"]) if given is None
                      else templates.revision_prompt(row["prompt"], row[given]))
            enc = tokenize_prompt_completion(tokenizer, prompt, templates.completion(row[target]), max_length,
                                             max_prompt_length)
            out[f"{key}_input_ids"], out[f"{key}_labels"] = enc["input_ids"], enc["labels"]
        return out

    return dataset.map(encode, with_indices=True, remove_columns=dataset.column_names, desc="Tokenising SRPO pairs")
