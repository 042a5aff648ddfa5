"""The supervised fine-tuning trainer with per-example weights: cross-entropy (N = 1) and DCO (arXiv 2502.07154).

One row per example, never packed with others into fixed-length rows (TRL-style packing cuts answers at row
boundaries, and the DCO weight needs each answer's whole-sequence probability). ``padding_free: true`` is possible
and exact: it lays the whole examples of a micro-batch end to end (:func:`llmpost.ops.pack_padded`) and maps the
per-token log-probs back to their rows, so every answer's probability is still whole. Labels cover the answer tokens and EOS only (:func:`llmpost.benchmarks.math.data.tokenize_math`).

Per micro-batch of B examples the trainer computes, with ``p_i`` the probability of answer ``i`` under the current
model (teacher-forced, detached):

    loss = mean_i F(N, p_i) * NLL_i          NLL_i: token-mean (default, the authors') or token-sum (dco_reduction)

and ``transformers.Trainer`` averages it over the gradient-accumulation steps (``loss_is_scaled_for_ga = False``), so an
optimizer step sees the mean over the global batch. With N = 1 this is plain SFT (token-mean cross-entropy averaged per
example, as the authors' baseline; TRL's SFTTrainer instead averages over all tokens of the batch).

**The authors' filter** (``dco_filter``, on by default as in their ``filter_fn_NCO``): before each optimizer step, the
trainer scores candidate micro-batches from the data loader with the model in eval mode (no gradient), keeps the
examples whose weight ``F(N, p)`` exceeds ``dco_threshold`` (0.1), and keeps drawing candidates until a full global
batch (per_device_train_batch_size x gradient_accumulation_steps x processes) is kept; surplus kept examples wait in a
queue for the next step (also across epochs, as in the authors' code). The kept dataset indices are all-gathered, so
every process holds the same queue and takes a disjoint slice of it: every optimizer step sees a full global batch of
distinct examples, exactly as in a run without the filter. An epoch ends when the data loader is exhausted (or when
it has trained as many micro-batches as the loader holds, which rows carried in the queue could otherwise exceed); a
last incomplete batch waits in the queue. The weight in the loss is recomputed in the training forward (identical to the
scoring one unless the example waited in the queue across an update).

Consequences to know: an epoch has fewer optimizer steps than without the filter, so the schedule planned by
``transformers`` (``max_steps``, a decaying learning rate) assumes more steps than run (the authors use a constant
schedule after warm-up); and resuming a filtered run from a checkpoint is refused (the number of data-loader batches a
step consumed is not recorded by ``Trainer``); resuming with ``dco_filter: false`` is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmpost.data.collators import IndexedRowCollator
from llmpost.losses.dco import DCOReduction, dco_loss, dco_weight
from llmpost.ops import token_logps
from llmpost.trainers.base import LlmpostConfig, LlmpostTrainer
from llmpost.utils import parse_enum


@dataclass
class DCOConfig(LlmpostConfig):
    """Training arguments for SFT / DCO. Defaults follow the DCO authors' MATH setup (arXiv 2502.07154; their README)."""

    dco_n: int = field(default=16, metadata={"help": "pass@N budget N of the DCO weight (1: plain cross-entropy)."})
    dco_reduction: DCOReduction = field(default=DCOReduction.TOKEN_MEAN, metadata={"help": "token_mean (authors) or token_sum (exact gradient)."})
    dco_filter: bool = field(default=True, metadata={"help": "Drop examples with weight <= dco_threshold and refill the batch (authors' default)."})
    dco_threshold: float = field(default=0.1, metadata={"help": "Filter threshold on F(N, p) (authors: 0.1)."})
    max_length: int = field(default=1024, metadata={"help": "Maximum tokens per prompt+answer (longer rows are truncated)."})

    def __post_init__(self):
        self.dco_reduction = parse_enum("dco_reduction", self.dco_reduction, DCOReduction)
        if self.dco_n < 1:
            raise ValueError(f"dco_n: must be an integer >= 1, got {self.dco_n}")
        if not 0 <= self.dco_threshold < 1:
            raise ValueError(f"dco_threshold: must be in [0, 1), got {self.dco_threshold}")
        super().__post_init__()

    @property
    def filtering(self) -> bool:
        return self.dco_filter and self.dco_n > 1 and self.dco_threshold > 0


class DCOTrainer(LlmpostTrainer):
    """SFT with DCO weights. ``train_dataset`` holds tokenised rows (``input_ids``, ``labels``, ``attention_mask``,
    ``index`` = row number), e.g. from :func:`llmpost.benchmarks.math.data.tokenize_math`."""

    collator = IndexedRowCollator

    def __init__(self, model, args: DCOConfig, train_dataset, processing_class, peft_config=None, **kwargs):
        if "index" not in train_dataset.column_names or train_dataset["index"] != list(range(len(train_dataset))):
            raise ValueError("DCOTrainer: train_dataset needs an 'index' column equal to the row number")
        super().__init__(model, args, train_dataset, processing_class, peft_config=peft_config, **kwargs)
        self._queue: list[int] = []  # kept dataset indices waiting for an optimizer step (identical on every process)
        self._filter_counts = torch.zeros(2)  # scored, kept since the last log
        self._epoch_iterator, self._epoch_micro = None, 0

    def get_train_dataloader(self):
        loader = super().get_train_dataloader()
        self._loader_length = len(loader)  # micro-batches per epoch on this process, as Trainer counts them
        return loader

    def train(self, resume_from_checkpoint=None, *a, **kw):
        if resume_from_checkpoint and self.args.filtering:
            raise ValueError("resuming a run with dco_filter: true is not supported (the filter makes the number of data "
                             "batches per step vary, which Trainer's resume does not record); restart it, or train with "
                             "dco_filter: false")  # fmt: skip
        return super().train(resume_from_checkpoint, *a, **kw)

    # ----- loss ------------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: DCOConfig = self.args
        logps, mask = token_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"], fused=self.fused,
                                  padding_free=self.padding_free)
        loss, weight = dco_loss(logps, mask, args.dco_n, args.dco_reduction)
        seq = (logps * mask).sum(-1).detach()
        self.record_metrics({"dco_weight": weight, "answer_prob": seq.exp(), "nll": -seq / mask.sum(-1).clamp(min=1)})
        return loss.mean()

    # ----- the authors' filter ---------------------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        if not self.args.filtering:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        per_device, accumulation = self.args.per_device_train_batch_size, self.args.gradient_accumulation_steps
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        need = per_device * accumulation * world
        if self._epoch_iterator is not epoch_iterator:  # a new epoch: count its micro-batches afresh
            self._epoch_iterator, self._epoch_micro = epoch_iterator, 0
        # Trainer syncs gradients when its micro-batch count reaches the loader's length; with rows carried over in
        # the queue an epoch could train more micro-batches than that, which would step mid-accumulation. End the
        # epoch before that happens (the queue waits for the next epoch).
        if self._epoch_micro + accumulation > self._loader_length:
            return [], None
        while len(self._queue) < need:
            batch = next(epoch_iterator, None)
            exhausted = torch.tensor([batch is None], dtype=torch.float32, device=self.accelerator.device)
            if world > 1:
                exhausted = self.accelerator.gather(exhausted).max()
            if bool(exhausted):  # every process stops drawing together; the partial queue waits for the next epoch
                return [], None
            self._queue.extend(self._score_and_keep(batch, per_device))
        take, self._queue = self._queue[:need], self._queue[need:]
        self._epoch_micro += accumulation
        samples = []
        for m in range(self.args.gradient_accumulation_steps):
            start = (m * world + rank) * per_device
            rows = [self.train_dataset[i] for i in take[start : start + per_device]]
            samples.append({k: v.to(device) for k, v in self.data_collator(rows).items()})
        return samples, None

    @torch.no_grad()
    def _score_and_keep(self, batch, per_device: int) -> list[int]:
        """Weights of one candidate micro-batch per process; the kept indices of every process, in process order."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            logps, mask = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], fused=self.fused,
                                      padding_free=self.padding_free)
        finally:
            model.train(was_training)
        weight = dco_weight(self.args.dco_n, (logps * mask).sum(-1).double().exp())
        kept = batch["index"][(weight > self.args.dco_threshold).to(batch["index"].device)]
        padded = torch.full((per_device,), -1, dtype=torch.long, device=self.accelerator.device)
        padded[: len(kept)] = kept
        scored = torch.tensor([float(len(weight))], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            padded, scored = self.accelerator.gather(padded), self.accelerator.gather(scored).sum()
        kept_all = [i for i in padded.tolist() if i >= 0]
        self._filter_counts += torch.tensor([float(scored), float(len(kept_all))])
        return kept_all

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.args.filtering and "loss" in logs and self._filter_counts[0] > 0:
            scored, kept = self._filter_counts.tolist()  # already global: gathered when scored
            logs.update({"filter_scored": scored, "filter_kept_fraction": kept / scored})
            self._filter_counts.zero_()
        super().log(logs, start_time)
