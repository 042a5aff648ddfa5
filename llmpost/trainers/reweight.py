"""The pretraining trainer with dynamic loss-based sample reweighting (arXiv 2502.06733; the weights and their
equations are in :mod:`llmpost.losses.reweight`).

Per training micro-batch (rows of packed tokens, :func:`llmpost.data.corpus.pack_documents`) the trainer:

1. runs one forward pass and takes the token-mean cross-entropy ``l_i`` of each *sample*: a packed row
   (``reweight_unit: row``, the authors' setting: their samples are fixed-length chunks of a token stream) or each
   document inside the rows (``reweight_unit: document``: positions restart at each document, the model is given
   the ``position_ids`` so that attention stays inside a document, and the first token of each document is not a
   target);
2. gathers the detached ``l_i`` of every data-parallel process (padded, as processes may hold different numbers of
   documents) and computes the same weights ``w = sample_weights(l, strategy, r, delta)`` on every process, over
   the global micro-batch -- uniform ``1/N`` during the first ``reweight_warmup_steps`` optimizer steps;
3. returns ``world_size * sum_{i local} w_i l_i`` (:func:`llmpost.losses.reweight.reweighted_loss`): data-parallel
   gradient averaging then gives the gradient of the global weighted sum. ``transformers.Trainer`` divides it by the
   gradient-accumulation steps (``loss_is_scaled_for_ga = False``): each micro-step is normalised on its own, as the
   authors' code does.

In evaluation (``model.training`` false) the loss is the plain mean of the samples' token-mean losses, so
``eval_loss`` is comparable across strategies (with equal-length rows it is the token-mean loss).

Logged every logging step: ``reweight/max_weight_x_b``, ``min_weight_x_b`` (1 = uniform), ``ess_fraction``
(``1 / sum w^2`` over N) and the 10/50/90% quantiles of the sample losses (:func:`~llmpost.losses.reweight.weight_stats`).

One deviation, documented: with ``reweight_unit: document`` the samples have different token counts. The authors'
``src/trainer.py`` also multiplies each row's weight by its share of the micro-batch's tokens (``len_norms``), which
is 1/B for equal-length rows (this trainer's ``row`` unit: identical to theirs); llmpost weights each document's
token-mean loss by ``w_i`` alone, so that a short document is not discounted twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import default_data_collator

from llmpost.losses.reweight import ReweightStrategy, reweighted_loss, sample_weights, weight_stat_tensors
from llmpost.ops import IGNORE_INDEX, token_logps
from llmpost.trainers.base import LlmpostTrainer, TrainerConfig
from llmpost.utils import StrEnum, parse_enum


class ReweightUnit(StrEnum):
    """What one reweighted sample is: a packed ``row`` (the authors') or a ``document`` inside the rows."""

    ROW = "row"
    DOCUMENT = "document"



@dataclass
class ReweightConfig(TrainerConfig):
    """Training arguments plus the reweighting options (arXiv 2502.06733; authors' defaults where they exist)."""

    reweight_strategy: ReweightStrategy = field(default=ReweightStrategy.LINUPPER, metadata={
        "help": "linupper (the paper's best) | upper (the authors' f_func_upper) | quadratic | extremes | "
                "uniform (plain mean, the baseline)."})
    reweight_temperature: float = field(default=1.0, metadata={
        "help": "r (the authors' kl_reg): w = softmax(f / r); larger is closer to uniform."})
    reweight_delta: float = field(default=1.0, metadata={"help": "delta: losses are min-max normalised to [-delta, delta]."})
    reweight_warmup_steps: int = field(default=0, metadata={
        "help": "Uniform weights for the first this many optimizer steps (the authors' burnout_steps; their default 1000)."})
    reweight_unit: ReweightUnit = field(default=ReweightUnit.ROW, metadata={"help": "row | document (see the module docstring)."})
    prediction_loss_only: bool = field(default=True, metadata={"help": "Evaluation computes the loss only."})

    def __post_init__(self):
        self.reweight_strategy = parse_enum("reweight_strategy", self.reweight_strategy, ReweightStrategy)
        self.reweight_unit = parse_enum("reweight_unit", self.reweight_unit, ReweightUnit)
        for name in ("reweight_temperature", "reweight_delta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
                raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
        if self.reweight_warmup_steps < 0:
            raise ValueError(f"reweight_warmup_steps: must be >= 0, got {self.reweight_warmup_steps}")
        super().__post_init__()


def sample_losses(logps: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
    """Token-mean negative log-likelihood per sample, 1-D. ``logps``/``mask``: ``(B, T-1)`` shifted per-token
    log-probs and target mask. ``segments`` (``(B, T-1)`` int, optional): the sample id of each target within its
    row (0, 1, ...); samples are then (row, segment) pairs in row-major order, empty ones dropped. Without it, one
    sample per row."""
    nll = -logps * mask
    if segments is None:
        return nll.sum(-1) / mask.sum(-1).clamp(min=1)
    width = int(segments.max().item()) + 1
    sums = torch.zeros(logps.shape[0], width, dtype=nll.dtype, device=nll.device).scatter_add(1, segments, nll)
    counts = torch.zeros_like(sums).scatter_add(1, segments, mask.to(nll.dtype))
    keep = counts > 0
    return sums[keep] / counts[keep]


def document_segments(position_ids: torch.Tensor) -> torch.Tensor:
    """``(B, T-1)`` segment ids of the shifted targets: target ``t + 1`` belongs to the document that
    ``position_ids[:, t + 1]`` is in (a new one starts wherever the position is 0, and at the start of the row)."""
    starts = (position_ids == 0).long()
    starts[:, 0] = 1
    return (starts.cumsum(-1) - 1)[:, 1:]


class ReweightTrainer(LlmpostTrainer):
    """Pretraining / continued pretraining with loss-based sample reweighting. ``train_dataset`` holds packed rows
    (``input_ids``, ``labels``, ``position_ids``), e.g. from :func:`llmpost.data.corpus.pack_documents`."""

    def __init__(self, model, args: ReweightConfig, train_dataset, processing_class=None, peft_config=None,
                 data_collator=default_data_collator, **kwargs):
        for col in ("input_ids", "labels", "position_ids"):
            if col not in train_dataset.column_names:
                raise ValueError(f"ReweightTrainer: train_dataset lacks column {col!r} (use llmpost.data.corpus.pack_documents)")
        super().__init__(model, args, train_dataset, processing_class, data_collator=data_collator,
                         peft_config=peft_config, **kwargs)
        self.last_weights: torch.Tensor | None = None  # the global weights of the last training micro-step

    def _forward(self, model, inputs) -> torch.Tensor:
        """Per-sample token-mean losses of this process's micro-batch (with gradient)."""
        labels, position_ids, segments = inputs["labels"], None, None
        attention_mask = inputs.get("attention_mask")
        if self.args.reweight_unit == ReweightUnit.DOCUMENT:
            position_ids = inputs["position_ids"]
            labels = labels.masked_fill(position_ids == 0, IGNORE_INDEX)  # a document's first token has no context
            segments = document_segments(position_ids)
            attention_mask = None  # packed documents: attention follows position_ids
        elif attention_mask is None:
            attention_mask = torch.ones_like(inputs["input_ids"])
        logps, mask = token_logps(model, inputs["input_ids"], attention_mask, labels, fused=self.fused,
                                  position_ids=position_ids)  # fmt: skip
        return sample_losses(logps, mask, segments)

    def _gather(self, losses: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Every process's detached losses (in process order) and this process's offset into them."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return losses.detach(), 0
        count = torch.tensor([losses.numel()], device=losses.device)
        counts = acc.gather(count).tolist()
        padded = acc.pad_across_processes(losses.detach(), dim=0, pad_index=0.0)
        blocks = acc.gather(padded).view(acc.num_processes, -1)
        gathered = torch.cat([blocks[r, :n] for r, n in enumerate(counts)])
        return gathered, sum(counts[: acc.process_index])

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: ReweightConfig = self.args
        losses = self._forward(model, inputs)
        if not model.training:
            loss = losses.mean()
            return (loss, {"loss": loss}) if return_outputs else loss
        gathered, offset = self._gather(losses)
        if self.state.global_step < args.reweight_warmup_steps:
            weights = torch.full_like(gathered, 1.0 / gathered.numel())
        else:
            weights = sample_weights(gathered, args.reweight_strategy, args.reweight_temperature, args.reweight_delta)
        self.last_weights = weights
        local = weights[offset : offset + losses.numel()]
        if args.logging_strategy != "no":  # identical on every process; no sync
            self.record_metrics(weight_stat_tensors(weights, gathered))
        loss = reweighted_loss(losses, local, self.accelerator.num_processes)
        return (loss, {"loss": loss}) if return_outputs else loss
