r"""SFT read through the implicit reward (arXiv 2507.00018, "Implicit Reward as the Bridge", NeurIPS 2025): a trainer
for cross-entropy SFT and the f-divergence SFT losses of :mod:`llmpost.losses.fdiv_sft`, logging the implicit reward.

The paper reads SFT as implicit-reward learning with DPO's reward ``r = beta log(pi / pi_ref)``; for cross-entropy the
KL term of the objective is constant, so nothing keeps the policy near the reference. Its remedies are (a) a smaller
SFT learning rate (``learning_rate``; nothing here changes transformers' default) and (b) SFT losses from other
f-divergences, which keep a policy-dependent term over the reference (``sft_divergence``: pearson, hellinger,
forward_kl; formulas and the caveat that forward_kl is unbounded below on one-hot data are in ``fdiv_sft.py``).

**Logged** on every logging step (mean over the micro-batches since the last log and over processes; TRL DPO-style
names; the sums run over the completion tokens + EOS, the labelled tokens):

    rewards/sequence     beta * (log pi(y|x) - log pi_ref(y|x)), mean over sequences  (TRL DPO's rewards/chosen)
    rewards/token        beta * the same difference divided by the sequence's token count, mean over sequences
    logps/completion     log pi(y|x), mean over sequences
    ref_logps/completion log pi_ref(y|x), mean over sequences
    kl/token_estimate    sum(log pi - log pi_ref) / number of tokens, pooled over the micro-batch: the cheap k1
                         estimator of the per-token KL(pi || pi_ref) (unbiased only on samples of pi; on SFT data it
                         is the mean log-ratio of the target tokens, i.e. how far the policy moved on them)
    loss/<divergence>    the micro-batch loss

``beta`` (0.1, as TRL's DPOConfig) only scales the logged rewards; no loss here depends on it. The reward-family metrics
are logged when ``log_implicit_reward`` (default); ``logps/completion`` and ``loss/<divergence>`` always. They are
recorded from training forwards only (evaluation logs just its loss: precomputed reference values belong to the
training rows). Before the first update ``pi = pi_ref``, so the first logged rewards are 0 up to rounding.

**Reference** (``reference``; ``auto`` picks the cheapest that serves the divergence):

* ``ce`` needs only each sequence's reference log-prob, for logging: ``precomputed`` (the default under ``auto``) runs
  one pass over the training set in eval mode before training (sharded over processes) and keeps no second model.
  With ``log_implicit_reward: false`` plain ``ce`` needs no reference at all and none is built.
* ``pearson`` / ``hellinger`` / ``forward_kl`` need the reference's full-vocabulary logits at every step: ``model``
  (a frozen copy of the starting model: ``ref_model``, else ``ref_model_name_or_path``, else the model's own path;
  prepared for DeepSpeed like the training model) or ``peft_base`` (the LoRA model with its adapters disabled; what
  ``auto`` picks for a PEFT model). ``precomputed`` cannot serve them (a config error).

**Reduction**, the same for every divergence (as in the DCO trainer): per micro-batch,
``loss = mean_i (mean over the labelled tokens t of sequence i of loss_t)``, i.e. a per-sequence token mean averaged
over sequences; ``transformers.Trainer`` averages it over the gradient-accumulation steps (``loss_is_scaled_for_ga =
False``). A non-finite loss stops training before the update (:class:`~llmpost.trainers.metrics.NonFiniteLossError`).

**Throughput options.** ``ce`` runs the usual per-token log-prob path: ``fused_lm_head`` (TRL's LM head in tiles, no
``(B, T, V)`` logits; on by default for ce) and ``padding_free`` (exact, :func:`llmpost.ops.pack_padded`) are
available. The f-divergence losses need the full ``(B, T, V)`` logits of both models, so both options are refused for
them (packing full-vocabulary logits back into the padded layout is not implemented).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import torch

from llmpost.data.collators import INDEXED_ROW_KEYS, IndexedRowCollator
from llmpost.data.templates import PreferenceTemplates, tokenize_prompt_completion
from llmpost.losses.fdiv_sft import SFTDivergence, fdiv_sft_loss_from_labels, sequence_token_mean
from llmpost.ops import IGNORE_INDEX, logps_from_logits, sequence_logps, token_logps
from llmpost.trainers.base import LlmpostTrainer, ReferenceConfig
from llmpost.trainers.metrics import check_finite_loss
from llmpost.trainers.reference import Reference
from llmpost.utils import DataError, parse_enum

__all__ = ["ImplicitSFTConfig", "ImplicitSFTTrainer", "Reference", "SFTDivergence", "tokenize_sft"]



def tokenize_sft(dataset: datasets.Dataset, tokenizer, templates: PreferenceTemplates, max_length: int,
                 max_prompt_length: int | None = None) -> datasets.Dataset:
    """Tokenise ``prompt`` / ``completion`` string rows into ``input_ids``, ``labels``, ``attention_mask``, ``index``
    (the row number), the loss on the completion + EOS only: :func:`llmpost.data.templates.tokenize_prompt_completion`
    on ``templates.generation_prompt(prompt)`` and ``templates.completion(completion)``, the same text and tokens the
    preference trainers, TRL's DPO and generation see. Original columns are removed."""
    missing = [c for c in ("prompt", "completion") if c not in dataset.column_names]
    if missing:
        raise DataError(f"tokenize_sft: missing column(s) {missing} (columns: {dataset.column_names})")
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenize_sft: the tokenizer has no EOS token")

    def fn(row, idx):
        for key in ("prompt", "completion"):
            if not isinstance(row[key], str) or not row[key].strip():
                raise DataError(f"row {idx}: column {key!r} must be a non-empty string, got {row[key]!r}")
        enc = tokenize_prompt_completion(tokenizer, templates.generation_prompt(row["prompt"]),
                                         templates.completion(row["completion"]), max_length, max_prompt_length)
        return {**enc, "index": idx}

    return dataset.map(fn, with_indices=True, remove_columns=dataset.column_names, desc="Tokenising")


@dataclass
class ImplicitSFTConfig(ReferenceConfig):
    """Training arguments of :class:`ImplicitSFTTrainer` (arXiv 2507.00018). ``reference: precomputed`` and
    ``padding_free`` serve ``sft_divergence: ce`` only."""

    sft_divergence: SFTDivergence = field(default=SFTDivergence.CE, metadata={"help": f"Per-token SFT loss, one of {[d.value for d in SFTDivergence]} (ce: plain SFT)."})
    beta: float = field(default=0.1, metadata={"help": "Scale of the logged implicit reward beta*log(pi/pi_ref) (TRL DPOConfig: 0.1); no loss uses it."})
    log_implicit_reward: bool = field(default=True, metadata={"help": "Log rewards/*, ref_logps/completion, kl/token_estimate."})
    max_length: int = field(default=1024, metadata={"help": "Maximum tokens per prompt+completion (TRL SFTConfig: 1024); the completion is cut."})
    fused_lm_head: bool | None = field(default=None, metadata={"help": "TRL's fused LM head (no full logits): ce only; unset: on for ce, off otherwise."})

    def __post_init__(self):
        self.sft_divergence = parse_enum("sft_divergence", self.sft_divergence, SFTDivergence)
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not self.beta > 0:
            raise ValueError(f"beta: must be > 0, got {self.beta!r}")
        if self.precompute_ref_batch_size is not None and self.precompute_ref_batch_size <= 0:
            raise ValueError(f"precompute_ref_batch_size: must be > 0, got {self.precompute_ref_batch_size}")
        ce = self.sft_divergence is SFTDivergence.CE
        if not ce and self.reference == Reference.PRECOMPUTED:
            raise ValueError(f"reference: 'precomputed' holds per-sequence log-probs only and cannot serve sft_divergence "
                             f"{self.sft_divergence.value!r}, which needs the reference's full-vocabulary logits; use "
                             "reference 'model' or 'peft_base' (LoRA), or 'auto'")
        if self.fused_lm_head is None:
            self.fused_lm_head = ce
        elif self.fused_lm_head and not ce:
            raise ValueError(f"fused_lm_head: must be false for sft_divergence {self.sft_divergence.value!r} (its loss "
                             "needs the full logits of both models)")
        if self.padding_free and not ce:
            raise ValueError(f"padding_free: only for sft_divergence 'ce' (got {self.sft_divergence.value!r}, whose loss "
                             "needs full-vocabulary logits in the padded layout)")
        super().__post_init__()


class ImplicitSFTTrainer(LlmpostTrainer):
    """SFT with a per-token f-divergence loss and implicit-reward logging. ``train_dataset`` holds tokenised rows
    (``input_ids``, ``labels``, ``attention_mask``, ``index``), e.g. from :func:`tokenize_sft`."""

    collator = IndexedRowCollator

    def __init__(self, model, args: ImplicitSFTConfig, train_dataset, processing_class, ref_model=None, peft_config=None,
                 **kwargs):
        missing = [k for k in INDEXED_ROW_KEYS if k not in train_dataset.column_names]
        if missing:
            raise ValueError(f"ImplicitSFTTrainer: train_dataset lacks column(s) {missing} (use tokenize_sft)")
        super().__init__(model, args, train_dataset, processing_class, peft_config=peft_config, **kwargs)
        self.divergence: SFTDivergence = args.sft_divergence
        ce = self.divergence is SFTDivergence.CE
        # plain ce without reward logging uses no reference; ce needs only per-sequence log-probs: precomputed even
        # with LoRA (one pass instead of a forward per step)
        reference = self.setup_reference(not ce or args.log_implicit_reward, needs_logits=not ce, ref_model=ref_model,
                                         lora_uses_base=False)
        self.ref_logps = self.ref_token_counts = None
        if reference == Reference.PRECOMPUTED:  # after Trainer.__init__: the pass needs self.accelerator
            sums, counts = self.precompute_ref_sums(train_dataset)
            self.ref_logps, self.ref_token_counts = sums.to(self.accelerator.device), counts.to(self.accelerator.device)

    # ----- reference -------------------------------------------------------------------------------------------------
    def precompute_ref_sums(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs of the tokenised rows (:meth:`ReferenceMixin.precompute_ref_logps`: one pass in eval
        mode, sharded over processes) and each row's number of labelled tokens, each ``(max(index) + 1,)``."""
        index = list(dataset["index"])
        if len(set(index)) != len(index) or min(index) < 0:
            raise ValueError("reference: 'precomputed' needs a unique, non-negative 'index' column in train_dataset")
        size = max(index) + 1
        counts = torch.zeros(size, dtype=torch.long)
        counts[torch.as_tensor(index)] = torch.as_tensor([sum(t != IGNORE_INDEX for t in lab[1:]) for lab in dataset["labels"]])
        return self.precompute_ref_logps(dataset, size=size), counts

    # ----- loss ------------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: ImplicitSFTConfig = self.args
        ids, att, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        record = model.training and args.logging_strategy != "no"
        want_ref = record and args.log_implicit_reward
        ref_seq = None
        if self.divergence is SFTDivergence.CE:
            logps, mask = token_logps(model, ids, att, labels, fused=self.fused, padding_free=self.padding_free)
            token_loss = -logps
            if want_ref:
                ref_seq = self._ce_ref_logps(inputs)
        else:
            kw = {"input_ids": ids, "attention_mask": att, "use_cache": False}
            logits = model(**kw).logits
            with torch.no_grad(), self._reference_ctx() as ref:
                ref_logits = ref(**kw).logits
            token_loss, mask = fdiv_sft_loss_from_labels(logits, ref_logits, labels, self.divergence)
            if record:
                logps = logps_from_logits(logits.detach(), labels)[0]
            if want_ref:
                ref_seq = sequence_logps(logps_from_logits(ref_logits, labels)[0], mask)
        loss = sequence_token_mean(token_loss, mask).mean()
        check_finite_loss(self, loss, f" (sft_divergence {self.divergence.value!r}; forward_kl is unbounded below on one-hot SFT targets)")
        if record:
            self._record(loss, logps.detach(), mask, ref_seq)
        return loss

    @torch.no_grad()
    def _ce_ref_logps(self, inputs) -> torch.Tensor:
        """Per-sequence reference log-probs of a batch for ce: precomputed, or one reference forward."""
        if self.ref_logps is not None:
            return self.ref_logps[inputs["index"]]
        return self.reference_sequence_logps(inputs["input_ids"], inputs["attention_mask"], inputs["labels"])

    def _record(self, loss, logps, mask, ref_seq) -> None:
        """Per-micro-batch metrics (:meth:`~llmpost.trainers.base.LlmpostTrainer.record_metrics`)."""
        seq = sequence_logps(logps, mask)
        metrics = {f"loss/{self.divergence.value}": loss, "logps/completion": seq}
        if ref_seq is not None:
            count = mask.sum(-1).float()
            diff = seq - ref_seq.float()
            beta = self.args.beta
            metrics["ref_logps/completion"] = ref_seq
            metrics["rewards/sequence"] = beta * diff.mean()
            metrics["rewards/token"] = beta * (diff / count.clamp(min=1)).mean()
            metrics["kl/token_estimate"] = diff.sum() / count.sum().clamp(min=1)
        self.record_metrics(metrics)
