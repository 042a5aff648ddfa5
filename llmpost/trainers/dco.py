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

**Chain-of-thought mode** (``dco_mode: cot``, the authors' README command for MATH: ``--filter_strategy cot --N 1
--cot_filter_N 64 --threshold 0.1`` on worked solutions): ``p`` is replaced by ``p^``, the fraction of
``cot_num_samples`` solutions sampled from the row's prompt by the current model that grade correct
(:mod:`llmpost.trainers.dco_cot`). The candidates of one global batch are sampled together; the filter keeps rows with
``p^ < dco_threshold`` (the hard ones: the opposite direction to the answer-mode filter, which keeps *low* ``p``
through a *high* weight) and the loss is the reference solution's cross-entropy times ``F(N, p^)``
(:func:`llmpost.losses.dco_sampled.dco_sampled_loss`), with ``p^`` as scored (a row that waited in the queue keeps
it). With the authors' N = 1 the weight is 1: the run is cross-entropy on the rows the model solves in fewer than 10%
of its samples. In the first ``cot_warmup_steps`` (20) optimizer steps nothing is sampled: every row trains with
``p^ = 0``. Logged: ``filter_scored``, ``filter_kept_fraction``, ``filter_p_hat`` (mean p^ of the scored rows) and
``p_hat`` (of the trained rows, the authors' ``p``).

Consequences to know: an epoch has fewer optimizer steps than without the filter, so the schedule planned by
``transformers`` (``max_steps``, a decaying learning rate) assumes more steps than run (the authors use a constant
schedule after warm-up); and resuming a filtered run from a checkpoint is refused (the number of data-loader batches a
step consumed is not recorded by ``Trainer``); resuming with ``dco_filter: false`` is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmpost.data.collators import IndexedRowCollator
from llmpost.generation import GenerationBackend
from llmpost.losses.dco import DCOReduction, dco_loss, dco_weight
from llmpost.losses.dco_sampled import dco_sampled_loss
from llmpost.ops import token_logps
from llmpost.trainers.base import LlmpostConfig, LlmpostTrainer
from llmpost.trainers.dco_cot import CoTGrader, CoTScorer, DCOMode
from llmpost.utils import parse_enum


@dataclass
class DCOConfig(LlmpostConfig):
    """Training arguments for SFT / DCO. Defaults follow the DCO authors' MATH setup (arXiv 2502.07154; their README)."""

    dco_n: int = field(default=16, metadata={"help": "pass@N budget N of the DCO weight (1: plain cross-entropy)."})
    dco_reduction: DCOReduction = field(default=DCOReduction.TOKEN_MEAN, metadata={"help": "token_mean (authors) or token_sum (exact gradient)."})
    dco_filter: bool = field(default=True, metadata={"help": "Drop examples with weight <= dco_threshold and refill the batch (authors' default)."})
    dco_threshold: float = field(default=0.1, metadata={"help": "Filter threshold (authors: --threshold 0.1): answer mode drops F(N, p) <= it, cot mode drops p^ >= it."})
    dco_mode: DCOMode = field(default=DCOMode.ANSWER, metadata={"help": "answer: p is the teacher-forced answer probability; cot: p^ is the fraction of sampled solutions graded correct (the authors' MATH run, --filter_strategy cot)."})
    # dco_mode: cot. Sources: allanraventos/refine, refine/training/train.py (train.py), filter_samples.py, README.md.
    cot_num_samples: int = field(default=64, metadata={"help": "cot: solutions sampled per row for p^ (authors: --cot_filter_N 64, SamplingParams(n=args.cot_filter_N) in train.py)."})
    cot_temperature: float = field(default=1.0, metadata={"help": "cot: sampling temperature (authors: SamplingParams(temperature=1) in train.py; no top-p/top-k)."})
    cot_max_new_tokens: int = field(default=1024, metadata={"help": "cot: tokens per sampled solution (authors: SamplingParams(max_tokens=1_024) in train.py)."})
    cot_warmup_steps: int = field(default=20, metadata={"help": "cot: optimizer steps at the start that train every row unscored, p^ = 0 (authors: 'Do not filter in first 20 steps', if completed_steps < 20 in train.py)."})
    cot_seed: int = field(default=1234, metadata={"help": "cot: seed of the sampled solutions, independent of seed (authors: their vLLM engine's seed, 1234 in train.py's construct_inference_engine call)."})
    cot_grader: CoTGrader = field(default=CoTGrader.BOXED_MATCH, metadata={"help": "cot: boxed_match (the last \\boxed{} equals the answer, as the authors' exact_match in filter_samples.py) or math_verify."})
    cot_backend: GenerationBackend = field(default=GenerationBackend.TRANSFORMERS, metadata={"help": "cot: sample with 'transformers' (the training model) or 'vllm' (a colocated engine synced after each update, GPU; the authors sample with vLLM)."})
    cot_generation_batch_size: int = field(default=64, metadata={"help": "cot, transformers backend: rows per generation batch (a row's samples count as that many rows)."})
    cot_vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"help": "cot, vllm backend: GPU memory fraction of the colocated engine (authors: gpu_memory_utilization=0.3 in train.py)."})
    cot_vllm_max_model_length: int = field(default=8192, metadata={"help": "cot, vllm backend: the engine's context length (authors: max_model_length=8_192 in train.py)."})
    max_length: int = field(default=1024, metadata={"help": "Maximum tokens per prompt+answer (longer rows are truncated)."})

    def __post_init__(self):
        self.dco_reduction = parse_enum("dco_reduction", self.dco_reduction, DCOReduction)
        self.dco_mode = parse_enum("dco_mode", self.dco_mode, DCOMode)
        self.cot_grader = parse_enum("cot_grader", self.cot_grader, CoTGrader)
        self.cot_backend = parse_enum("cot_backend", self.cot_backend, GenerationBackend)
        if self.dco_n < 1:
            raise ValueError(f"dco_n: must be an integer >= 1, got {self.dco_n}")
        if self.dco_mode == DCOMode.COT:  # a success rate: 1 keeps every row that is not always solved
            if not 0 <= self.dco_threshold <= 1:
                raise ValueError(f"dco_threshold: must be in [0, 1] with dco_mode: cot, got {self.dco_threshold}")
        elif not 0 <= self.dco_threshold < 1:
            raise ValueError(f"dco_threshold: must be in [0, 1), got {self.dco_threshold}")
        for key, ok, expected in [("cot_num_samples", self.cot_num_samples >= 1, ">= 1"),
                                  ("cot_temperature", self.cot_temperature >= 0, ">= 0 (0: greedy)"),
                                  ("cot_max_new_tokens", self.cot_max_new_tokens >= 1, ">= 1"),
                                  ("cot_warmup_steps", self.cot_warmup_steps >= 0, ">= 0"),
                                  ("cot_generation_batch_size", self.cot_generation_batch_size >= 1, ">= 1"),
                                  ("cot_vllm_gpu_memory_utilization", 0 < self.cot_vllm_gpu_memory_utilization <= 1, "in (0, 1]"),
                                  ("cot_vllm_max_model_length", self.cot_vllm_max_model_length >= 1, ">= 1")]:  # fmt: skip
            if not ok:
                raise ValueError(f"{key}: must be {expected}, got {getattr(self, key)!r}")
        super().__post_init__()

    @property
    def filtering(self) -> bool:
        """Whether the filter drops rows (answer mode: only where F can fall below 1, N > 1)."""
        if self.dco_mode == DCOMode.COT:
            return self.dco_filter and self.dco_threshold > 0
        return self.dco_filter and self.dco_n > 1 and self.dco_threshold > 0

    @property
    def scoring(self) -> bool:
        """Whether candidates are scored before each step: for the filter, or for cot's weight F(N, p^) with N > 1."""
        return self.filtering or (self.dco_mode == DCOMode.COT and self.dco_n > 1)


class DCOTrainer(LlmpostTrainer):
    """SFT with DCO weights. ``train_dataset`` holds tokenised rows (``input_ids``, ``labels``, ``attention_mask``,
    ``index`` = row number), e.g. from :func:`llmpost.benchmarks.math.data.tokenize_math`; with ``dco_mode: cot`` also
    ``prompt_ids`` and ``answer`` (``tokenize_math(..., generation_columns=True)``)."""

    collator = IndexedRowCollator

    def __init__(self, model, args: DCOConfig, train_dataset, processing_class, peft_config=None, **kwargs):
        if "index" not in train_dataset.column_names or train_dataset["index"] != list(range(len(train_dataset))):
            raise ValueError("DCOTrainer: train_dataset needs an 'index' column equal to the row number")
        cot = args.dco_mode == DCOMode.COT
        missing = [c for c in ("prompt_ids", "answer") if c not in train_dataset.column_names] if cot else []
        if missing:
            raise ValueError(f"DCOTrainer: dco_mode: cot samples from each row's prompt and grades against its answer; "
                             f"train_dataset lacks {missing} (tokenize_math(..., generation_columns=True) adds them)")
        super().__init__(model, args, train_dataset, processing_class, peft_config=peft_config, **kwargs)
        self._queue: list[int] = []  # kept dataset indices waiting for an optimizer step (identical on every process)
        self._queue_p: list[float] = []  # cot: each queued row's p^ when it was scored (0 in the warm-up)
        self._filter_counts = torch.zeros(2)  # scored, kept since the last log
        self._p_hat_sum = 0.0  # cot: sum of the scored rows' p^ since the last log
        self._epoch_iterator, self._epoch_micro = None, 0
        self.cot = None
        if cot:
            rows_per_call = args.per_device_train_batch_size * args.gradient_accumulation_steps
            self.cot = CoTScorer(args, processing_class, train_dataset["prompt_ids"], train_dataset["answer"],
                                 self.accelerator, rows_per_call)  # fmt: skip

    def get_train_dataloader(self):
        loader = super().get_train_dataloader()
        self._loader_length = len(loader)  # micro-batches per epoch on this process, as Trainer counts them
        return loader

    def train(self, resume_from_checkpoint=None, *a, **kw):
        if resume_from_checkpoint and self.args.scoring:
            raise ValueError("resuming a run with dco_filter: true (or dco_mode: cot and dco_n > 1) is not supported (the "
                             "filter makes the number of data batches per step vary, and cot's sample seeds count the "
                             "scoring calls, neither of which Trainer's resume records); restart it, or train with "
                             "dco_filter: false in answer mode")  # fmt: skip
        return super().train(resume_from_checkpoint, *a, **kw)

    # ----- loss ------------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: DCOConfig = self.args
        logps, mask = token_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"], fused=self.fused,
                                  padding_free=self.padding_free)
        seq = (logps * mask).sum(-1).detach()
        metrics = {"answer_prob": seq.exp(), "nll": -seq / mask.sum(-1).clamp(min=1)}
        if args.dco_mode == DCOMode.COT:
            p_hat = inputs.get("p_hat")
            if p_hat is None:  # nothing scored: N = 1 without the filter, where the weight is 1 whatever p^ is
                p_hat = torch.zeros(len(seq), dtype=torch.float64, device=seq.device)
            loss, weight = dco_sampled_loss(logps, mask, args.dco_n, p_hat, args.dco_reduction)
            metrics["p_hat"] = p_hat
        else:
            loss, weight = dco_loss(logps, mask, args.dco_n, args.dco_reduction)
        self.record_metrics({"dco_weight": weight, **metrics})
        return loss.mean()

    # ----- the authors' filter ---------------------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        if not self.args.scoring:
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
        # answer mode scores one micro-batch at a time; cot samples for a global batch of candidates at once (as the
        # authors do: one generation call per global batch), which keeps the generation batches full.
        chunk = accumulation if self.cot is not None else 1
        while len(self._queue) < need:
            batches, exhausted = [], False
            for _ in range(chunk):
                batch = next(epoch_iterator, None)
                flag = torch.tensor([batch is None], dtype=torch.float32, device=self.accelerator.device)
                if world > 1:
                    flag = self.accelerator.gather(flag).max()
                if bool(flag):  # every process stops drawing together
                    exhausted = True
                    break
                batches.append(batch)
            if batches:
                if self.cot is not None:
                    self._score_cot_and_keep(batches, per_device * chunk)
                else:
                    self._queue.extend(self._score_and_keep(batches[0], per_device))
            if exhausted:  # the partial queue waits for the next epoch
                return [], None
        take, self._queue = self._queue[:need], self._queue[need:]
        take_p, self._queue_p = self._queue_p[:need], self._queue_p[need:]
        self._epoch_micro += accumulation
        samples = []
        for m in range(self.args.gradient_accumulation_steps):
            start = (m * world + rank) * per_device
            rows = [self.train_dataset[i] for i in take[start : start + per_device]]
            sample = {k: v.to(device) for k, v in self.data_collator(rows).items()}
            if self.cot is not None:
                sample["p_hat"] = torch.tensor(take_p[start : start + per_device], dtype=torch.float64, device=device)
            samples.append(sample)
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

    def _score_cot_and_keep(self, batches: list[dict], width: int) -> None:
        """cot: ``p^`` of this process's candidate rows (none in the first ``cot_warmup_steps`` steps: p^ = 0 and every
        row is kept, as the authors' ``if completed_steps < 20``), keep rows with ``p^ < dco_threshold`` when
        filtering (the authors' ``is_hard = sample_success_prob < threshold``); every process's kept rows and their
        ``p^`` join the queue in process order."""
        args = self.args
        index = torch.cat([b["index"] for b in batches]).to(self.accelerator.device)
        warmup = self.state.global_step < args.cot_warmup_steps
        if warmup:
            p_hat = torch.zeros(len(index), dtype=torch.float64, device=index.device)
        else:
            p_hat, _ = self.cot.p_hat(self.model, self.model_wrapped, index.tolist(), self.state.global_step)
            p_hat = p_hat.to(index.device)
        keep = (p_hat < args.dco_threshold) if (args.filtering and not warmup) else torch.ones_like(p_hat, dtype=torch.bool)
        padded = torch.full((width,), -1, dtype=torch.long, device=index.device)
        padded_p = torch.zeros(width, dtype=torch.float64, device=index.device)
        padded[: int(keep.sum())], padded_p[: int(keep.sum())] = index[keep], p_hat[keep]
        stats = torch.tensor([0.0 if warmup else float(len(index)), float(p_hat.sum())], dtype=torch.float64,
                             device=index.device)  # fmt: skip
        if self.accelerator.num_processes > 1:
            padded, padded_p = self.accelerator.gather(padded), self.accelerator.gather(padded_p)
            stats = self.accelerator.gather(stats[None]).sum(0)
        kept = [(i, p) for i, p in zip(padded.tolist(), padded_p.tolist()) if i >= 0]
        self._queue.extend(i for i, _ in kept)
        self._queue_p.extend(p for _, p in kept)
        if not warmup:
            self._filter_counts += torch.tensor([float(stats[0]), float(len(kept))])
            self._p_hat_sum += float(stats[1])

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.args.scoring and "loss" in logs and self._filter_counts[0] > 0:
            scored, kept = self._filter_counts.tolist()  # already global: gathered when scored
            logs.update({"filter_scored": scored, "filter_kept_fraction": kept / scored})
            if self.cot is not None:
                logs["filter_p_hat"] = self._p_hat_sum / scored  # mean p^ of the rows scored since the last log
                self._p_hat_sum = 0.0
            self._filter_counts.zero_()
        super().log(logs, start_time)
