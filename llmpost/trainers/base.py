"""The shared base of llmpost's trainers: config fields, trainer start-up and the reference choice.

A trainer here is a thin ``transformers.Trainer`` subclass (TRL has no trainer to extend for these losses; we reuse
TRL's fused LM head, PEFT adapter switching and DeepSpeed helpers). A family adds only its own config fields, its
dataset checks, its ``compute_loss`` and, where it has one, its reference pass:

* configs: :class:`TrainerConfig` (every trainer: ``fused_lm_head``, ``remove_unused_columns`` kept False, the
  Liger kernel check), :class:`LlmpostConfig` (trainers of tokenised prompt + answer rows: ``max_length``,
  ``trust_remote_code``, ``padding_free``) and :class:`ReferenceConfig` (trainers with a frozen reference:
  ``reference``, ``ref_model_name_or_path``, ``precompute_ref_batch_size``). A subclass redeclares a field only to
  change its default; its own ``__post_init__`` checks its own fields, then calls ``super().__post_init__()``.
* :class:`LlmpostTrainer`: fused LM head (before PEFT), PEFT wrapping, the collator built with the tokenizer's pad
  token, per-step metrics (:meth:`~LlmpostTrainer.record_metrics`, gathered once per log by
  :func:`~llmpost.trainers.metrics.flush_metrics`) and :meth:`~LlmpostTrainer.setup_reference`, the one place where
  the reference is chosen and built.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from accelerate.utils import is_peft_model
from transformers import Trainer, TrainingArguments
from trl.trainer.utils import add_fused_lm_head

from llmpost.models import check_kernel_options, pad_token_id
from llmpost.trainers.metrics import flush_metrics
from llmpost.trainers.reference import Reference, ReferenceMixin
from llmpost.utils import parse_enum


@dataclass
class TrainerConfig(TrainingArguments):
    """What every llmpost trainer's config shares (``ReweightConfig`` included)."""

    fused_lm_head: bool = field(default=True, metadata={"help": "Use TRL's fused LM head (no full logits)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False: llmpost's trainers read columns "
                                        "the model's forward does not take (index, nested rows, position_ids)."})

    def __post_init__(self):
        self.remove_unused_columns = False
        super().__post_init__()
        check_kernel_options(self)


@dataclass
class LlmpostConfig(TrainerConfig):
    """Training arguments of the trainers of tokenised prompt + answer rows (unlearn, DCO, implicit-reward SFT, SRPO)."""

    max_length: int = field(default=512, metadata={"help": "Maximum tokens per prompt + answer (longer rows are truncated)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the hub (as in TRL's configs)."})
    padding_free: bool = field(default=False, metadata={"help": "Forward only the real tokens: the sequences of a batch laid end to end with restarting position_ids (exact; fastest with a flash-attention implementation, see llmpost.ops.pack_padded)."})

    def __post_init__(self):
        if self.max_length <= 0:
            raise ValueError(f"max_length: must be > 0, got {self.max_length}")
        super().__post_init__()


@dataclass
class ReferenceConfig(LlmpostConfig):
    """:class:`LlmpostConfig` plus the frozen reference (:class:`~llmpost.trainers.reference.Reference`)."""

    reference: Reference = field(default=Reference.AUTO, metadata={"help": "auto | precomputed | peft_base | model."})
    ref_model_name_or_path: str | None = field(default=None, metadata={"help": "Reference for reference=model (default: the starting model)."})
    precompute_ref_batch_size: int | None = field(default=None, metadata={"help": "Batch size of the reference pass (default: per_device_eval_batch_size)."})

    def __post_init__(self):
        self.reference = parse_enum("reference", self.reference, Reference)
        super().__post_init__()


class LlmpostTrainer(ReferenceMixin, Trainer):
    """The start-up every llmpost trainer shares. A subclass checks its dataset, calls ``super().__init__``, then (if
    it has a reference) :meth:`setup_reference` and its reference pass (which needs ``self.accelerator``), and
    implements ``compute_loss``, reporting its metrics with :meth:`record_metrics`.

    ``collator``: a collator class built with the tokenizer's pad token id (``self.pad_id``); a trainer that sets it
    builds its own ``data_collator`` (passing one is an error). Without it, ``data_collator`` is used as given.
    """

    # compute_loss returns a per-micro-batch mean (or, for ReweightTrainer, a per-micro-batch loss): Trainer divides it
    # by the gradient-accumulation steps. A subclass whose loss is already scaled for accumulation must set True.
    loss_is_scaled_for_ga = False
    collator: type | None = None

    def __init__(self, model, args: TrainerConfig, train_dataset, processing_class=None, data_collator=None,
                 peft_config=None, checkpoint_eval=None, **kwargs):
        self.checkpoint_eval = checkpoint_eval  # before Trainer.__init__, whose _validate_args asks for an eval_dataset
        if args.fused_lm_head:
            add_fused_lm_head(model)  # must precede PEFT wrapping
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        self.pad_id = None
        if self.collator is not None:
            if data_collator is not None:
                raise TypeError(f"{type(self).__name__} builds its own data_collator ({self.collator.__name__})")
            self.pad_id = pad_token_id(processing_class)
            data_collator = self.collator(self.pad_id)
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         data_collator=data_collator, **kwargs)
        self.fused, self.padding_free = args.fused_lm_head, getattr(args, "padding_free", False)
        self._metrics = defaultdict(list)  # name -> per-micro-batch on-device scalars since the last log
        self.reference, self.ref_model = None, None
        if checkpoint_eval is not None:
            self.attach_checkpoint_eval(checkpoint_eval)

    def setup_reference(self, needs_reference: bool, needs_logits: bool, ref_model=None,
                        lora_uses_base: bool = True) -> Reference | None:
        """Choose and build the reference (``args.reference``; sets ``self.reference`` and ``self.ref_model``).

        None when nothing needs one. ``auto`` picks the cheapest that serves: an explicit model when one was passed;
        the LoRA base for a PEFT model (when ``lora_uses_base`` or the loss needs full-vocabulary logits); an explicit
        frozen copy when logits are needed; else the one-pass precomputed log-probs (which the trainer then runs).
        ``peft_base`` without a PEFT model is an error naming the key. Call after ``Trainer.__init__``: the frozen
        copy is prepared with ``self.accelerator``."""
        if not needs_reference:
            return None
        peft = is_peft_model(self.model)
        ref = self.args.reference
        if ref == Reference.AUTO:
            if ref_model is not None:
                ref = Reference.MODEL
            elif peft and (lora_uses_base or needs_logits):
                ref = Reference.PEFT_BASE
            else:
                ref = Reference.MODEL if needs_logits else Reference.PRECOMPUTED
        if ref == Reference.PEFT_BASE and not peft:
            raise ValueError("reference: 'peft_base' needs a PEFT (LoRA) model; set use_peft (or pass peft_config) or "
                             "use another reference")
        self.reference = ref
        if ref == Reference.MODEL:
            self.ref_model = self._prepare_ref_model(ref_model, self.args)
        return ref

    def record_metrics(self, metrics: dict[str, torch.Tensor]) -> None:
        """Keep each value's mean (on device) for the next log, where they are averaged over steps and processes."""
        if self.args.logging_strategy != "no":
            for key, value in metrics.items():
                self._metrics[key].append(value.detach().float().mean())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        flush_metrics(self.accelerator, self._metrics, logs)
        super().log(logs, start_time)

    # -- benchmark evaluation during training (llmpost.trainers.checkpoint_eval) ----------------------------------------
    def _validate_args(self):
        if self.checkpoint_eval is None or self.eval_dataset is not None:
            return super()._validate_args()
        self.eval_dataset = ()  # the benchmark is the evaluation: no eval_dataset is needed for eval_strategy
        try:
            return super()._validate_args()
        finally:
            self.eval_dataset = None

    def attach_checkpoint_eval(self, checkpoint_eval) -> None:
        """Evaluate a benchmark at ``eval_strategy``'s steps instead of ``Trainer.evaluate``'s loss on an
        ``eval_dataset`` (:class:`~llmpost.trainers.checkpoint_eval.CheckpointEvaluation`; the constructor's
        ``checkpoint_eval`` calls this); a resumed run reads back the evaluations up to its step."""
        from transformers import TrainerCallback

        self.checkpoint_eval = checkpoint_eval

        class _Resume(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                if state.global_step > 0:
                    checkpoint_eval.resume(args.output_dir, state.global_step)

        self.add_callback(_Resume())

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        if self.checkpoint_eval is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        metrics = self.checkpoint_eval.run(self)
        Trainer.log(self, metrics)  # not self.log: the training metrics gathered since the last log stay for it
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
