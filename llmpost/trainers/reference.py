"""The frozen reference policy shared by llmpost's trainers that need one (NPO, IdkDPO, SRPO, implicit-reward SFT).

Three ways to get reference log-probabilities (:class:`Reference`):

* ``precomputed``: one pass over the training sequences before training (:meth:`ReferenceMixin.precompute_ref_logps`),
  sharded over processes; no second model is kept. Exact for sequence log-probs of fixed sequences.
* ``peft_base``: the LoRA model with its adapters disabled (TRL's ``use_adapter(model, None)``): no second model.
* ``model``: an explicit frozen copy (needed when the reference must see new sequences or give full logits), prepared
  for DeepSpeed (ZeRO-3 sharded like the policy) or accelerate.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.data import DataLoader
from trl.models.utils import prepare_deepspeed
from trl.trainer.utils import add_fused_lm_head, use_adapter

from llmpost.data.collators import IndexedRowCollator
from llmpost.ops import sequence_logps, token_logps
from llmpost.utils import StrEnum


class Reference(StrEnum):
    AUTO = "auto"
    PRECOMPUTED = "precomputed"
    PEFT_BASE = "peft_base"
    MODEL = "model"


class ReferenceMixin:
    """Reference log-probs for a ``transformers.Trainer`` subclass that sets ``self.reference`` (a :class:`Reference`),
    ``self.ref_model``, ``self.pad_id``, ``self.fused`` (TRL fused LM head) and ``self.padding_free``; ``args`` has
    ``ref_model_name_or_path``, ``fused_lm_head`` and ``precompute_ref_batch_size``. The choice between the three
    ways is :meth:`llmpost.trainers.base.LlmpostTrainer.setup_reference`."""

    def _prepare_ref_model(self, ref_model, args):
        if ref_model is None:
            from transformers import AutoModelForCausalLM

            path = args.ref_model_name_or_path or getattr(self.accelerator.unwrap_model(self.model).config, "_name_or_path", "")
            if not path:
                raise ValueError("reference: 'model' needs ref_model_name_or_path (the model was built in memory)")
            ref_model = AutoModelForCausalLM.from_pretrained(path, dtype=self.model.dtype,
                                                             trust_remote_code=args.trust_remote_code)
        if args.fused_lm_head:
            add_fused_lm_head(ref_model)
        ref_model.requires_grad_(False).eval()
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(ref_model, self.accelerator)
        return self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    @contextlib.contextmanager
    def _reference_ctx(self):
        """Yields the module to run the reference forward with (PEFT base: adapters disabled)."""
        if self.reference == Reference.PEFT_BASE:
            with use_adapter(self.accelerator.unwrap_model(self.model), adapter_name=None):
                yield self.model
        else:
            yield self.ref_model

    def reference_sequence_logps(self, input_ids, attention_mask, labels) -> torch.Tensor:
        """Sequence log-probs of a batch under the reference model or the PEFT base (no gradient)."""
        with torch.no_grad(), self._reference_ctx() as ref:
            logps, mask = token_logps(ref, input_ids, attention_mask, labels, fused=self.fused,
                                      padding_free=self.padding_free)
        return sequence_logps(logps, mask)

    @torch.no_grad()
    def precompute_ref_logps(self, examples, size: int | None = None) -> torch.Tensor:
        """Reference log-probs of tokenised examples (``input_ids``, ``labels``, ``attention_mask``, ``index``): one
        pass with the starting model, sharded over processes.

        Returns a ``(size,)`` tensor (default ``len(examples)``) holding each example's log-prob at its ``index``
        and NaN elsewhere."""
        size = len(examples) if size is None else size
        bs = self.args.precompute_ref_batch_size or self.args.per_device_eval_batch_size
        loader = DataLoader(examples, batch_size=bs, shuffle=False, collate_fn=IndexedRowCollator(self.pad_id))
        loader = self.accelerator.prepare(loader)
        was_training = self.model.training
        model = prepare_deepspeed(self.model, self.accelerator) if self.is_deepspeed_enabled else self.model
        model.eval()
        out = torch.full((size,), float("nan"))
        for batch in loader:
            logps, mask = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], fused=self.fused,
                                      padding_free=self.padding_free)
            idx, seq = self.accelerator.gather_for_metrics((batch["index"], sequence_logps(logps, mask)))
            out[idx.cpu()] = seq.float().cpu()
        self.model.train(was_training)
        if model is not self.model:  # drop the inference engine's ZeRO-3 hooks: they would clash with the training engine's
            model.destroy()
        wanted = torch.as_tensor(examples["index"] if hasattr(examples, "column_names") else [e["index"] for e in examples])
        if torch.isnan(out[wanted]).any():
            raise RuntimeError("reference pass left rows without a log-prob (check the 'index' column)")
        return out
