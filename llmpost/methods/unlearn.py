"""The unlearning trainer shared by gradient ascent, gradient difference, NPO, NPO+RT and SimNPO.

Each method is a pure per-example loss in its own file (``grad_diff.py``, ``npo.py``, ``simnpo.py``); this file holds
the :class:`UnlearnConfig` (a ``transformers.TrainingArguments``), the :class:`UnlearnMethod` dispatch and the
:class:`UnlearnTrainer`, a thin ``transformers.Trainer`` subclass (TRL has no unlearning trainer to extend; we reuse
TRL's fused LM head, PEFT adapter switching and DeepSpeed inference-engine helpers).

Objective, per batch of ``B`` forget examples each paired with one retain example:

    loss = gamma * mean_i forget_loss_i  +  alpha * mean_i retain_loss_i      (retain term only where the method has one)

Reference model (NPO, NPO+RT, and the retain KL): ``reference: precomputed`` computes the forget answers' reference
log-probs in one pass before training and keeps no second model; ``peft_base`` uses the LoRA model with adapters
disabled; ``model`` keeps an explicit frozen copy (needed for the retain KL of full fine-tuning). ``auto`` picks the
cheapest that works.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from accelerate.utils import is_peft_model
from torch.utils.data import DataLoader
from transformers import Trainer, TrainingArguments
from trl.models.utils import prepare_deepspeed
from trl.trainer.utils import add_fused_lm_head, use_adapter

from ..data.collators import ForgetRetainCollator, pad_examples
from ..epochs import EpochCallback
from ..generation import pad_token_id
from ..ops import sequence_logps, shift_labels, token_logps
from ..utils import StrEnum
from .grad_diff import gradient_ascent_loss, nll_loss, retain_kl_loss
from .npo import npo_loss
from .simnpo import simnpo_loss


class UnlearnMethod(StrEnum):
    GRAD_ASCENT = "grad_ascent"
    GRAD_DIFF = "grad_diff"
    NPO = "npo"
    NPO_RT = "npo_rt"
    SIMNPO = "simnpo"


class RetainLoss(StrEnum):
    NLL = "nll"
    KL = "kl"


class Reference(StrEnum):
    AUTO = "auto"
    PRECOMPUTED = "precomputed"
    PEFT_BASE = "peft_base"
    MODEL = "model"


_HAS_RETAIN = {UnlearnMethod.GRAD_DIFF, UnlearnMethod.NPO_RT, UnlearnMethod.SIMNPO}
_NEEDS_REF_LOGPS = {UnlearnMethod.NPO, UnlearnMethod.NPO_RT}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped before the optimizer step, checkpoints are untouched."""


@dataclass
class UnlearnConfig(TrainingArguments):
    """Training arguments for the unlearning methods. Defaults are NPO's TOFU setup (arXiv 2404.05868, Sec. 5)."""

    method: UnlearnMethod = field(default=UnlearnMethod.NPO, metadata={"help": f"One of {[m.value for m in UnlearnMethod]}."})
    beta: float = field(default=0.1, metadata={"help": "NPO inverse temperature (NPO paper, TOFU: 0.1)."})
    gamma: float = field(default=1.0, metadata={"help": "Weight of the forget term (open-unlearning default 1.0)."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain term for grad_diff/npo_rt/simnpo (1.0)."})
    retain_loss: RetainLoss = field(default=RetainLoss.NLL, metadata={"help": "Retain term: 'nll' or 'kl' (to the reference)."})
    simnpo_beta: float = field(default=1.0, metadata={"help": "SimNPO beta (open-unlearning SimNPO default 1.0)."})
    simnpo_delta: float = field(default=0.0, metadata={"help": "SimNPO margin gamma/beta (paper: 0 for unlearning)."})
    reference: Reference = field(default=Reference.AUTO, metadata={"help": "auto | precomputed | peft_base | model."})
    ref_model_name_or_path: str | None = field(default=None, metadata={"help": "Reference for reference=model (default: the starting model)."})
    precompute_ref_batch_size: int | None = field(default=None, metadata={"help": "Batch size of the reference pass (default: per_device_eval_batch_size)."})
    max_length: int = field(default=512, metadata={"help": "Maximum tokens per question+answer (longer rows are truncated)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the hub (as in TRL's configs)."})
    fused_lm_head: bool = field(default=True, metadata={"help": "Use TRL's fused LM head (no full logits) where possible."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False: items are nested forget/retain dicts."})

    def __post_init__(self):
        for name, enum in (("method", UnlearnMethod), ("retain_loss", RetainLoss), ("reference", Reference)):
            value = getattr(self, name)
            try:
                setattr(self, name, enum(value))
            except ValueError:
                raise ValueError(f"{name}: {value!r} is not one of {[e.value for e in enum]}") from None
        for name in ("beta", "simnpo_beta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.max_length <= 0:
            raise ValueError(f"max_length: must be > 0, got {self.max_length}")
        for name in ("gamma", "alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.reference == Reference.PRECOMPUTED and self.retain_loss == RetainLoss.KL and self.method in _HAS_RETAIN:
            raise ValueError("reference: 'precomputed' cannot serve retain_loss 'kl' (it needs reference logits); use 'model' or 'peft_base'")
        self.remove_unused_columns = False
        super().__post_init__()


class UnlearnTrainer(Trainer):
    """Unlearning trainer. ``train_dataset`` is a :class:`llmpost.data.unlearn.ForgetRetainDataset` of tokenised rows
    (``input_ids``, ``labels``, ``attention_mask``, ``index``)."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean; Trainer divides by GA steps

    def __init__(self, model, args: UnlearnConfig, train_dataset, processing_class, ref_model=None, peft_config=None, **kwargs):
        if args.fused_lm_head:
            add_fused_lm_head(model)  # must precede PEFT wrapping
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        pad_id = pad_token_id(processing_class)
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         data_collator=ForgetRetainCollator(pad_id), **kwargs)
        self.pad_id, self.fused = pad_id, args.fused_lm_head
        self.add_callback(EpochCallback())  # the forget/retain pairing depends on the epoch, also after a resume
        self._metrics = defaultdict(list)
        self.reference = self._resolve_reference(args, ref_model is not None)
        self.ref_model = None
        if self.reference == Reference.MODEL:
            self.ref_model = self._prepare_ref_model(ref_model, args)
        self.ref_forget_logps = None
        if self.reference == Reference.PRECOMPUTED:
            self.ref_forget_logps = self.precompute_ref_logps(train_dataset.forget).to(self.accelerator.device)

    # ----- reference -------------------------------------------------------------------------------------------------
    def _resolve_reference(self, args: UnlearnConfig, have_ref_model: bool) -> Reference | None:
        needs_logits = args.method in _HAS_RETAIN and args.retain_loss == RetainLoss.KL
        needs_logps = args.method in _NEEDS_REF_LOGPS
        if not (needs_logits or needs_logps):
            return None
        peft = is_peft_model(self.model)
        ref = args.reference
        if ref == Reference.AUTO:
            ref = Reference.MODEL if have_ref_model else Reference.PEFT_BASE if peft else Reference.MODEL if needs_logits else Reference.PRECOMPUTED
        if ref == Reference.PEFT_BASE and not peft:
            raise ValueError("reference: 'peft_base' needs a PEFT (LoRA) model; set use_peft or another reference")
        return ref

    def _prepare_ref_model(self, ref_model, args):
        if ref_model is None:
            from transformers import AutoModelForCausalLM

            path = args.ref_model_name_or_path or getattr(self.accelerator.unwrap_model(self.model).config, "_name_or_path", "")
            if not path:
                raise ValueError("reference: 'model' needs ref_model_name_or_path (the model was built in memory)")
            ref_model = AutoModelForCausalLM.from_pretrained(path, dtype=self.model.dtype)
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

    @torch.no_grad()
    def precompute_ref_logps(self, forget_dataset) -> torch.Tensor:
        """Reference log-probs of every forget answer, one pass, sharded over processes; ``(N,)`` indexed by ``index``."""
        bs = self.args.precompute_ref_batch_size or self.args.per_device_eval_batch_size
        loader = DataLoader(forget_dataset, batch_size=bs, shuffle=False, collate_fn=lambda ex: pad_examples(ex, self.pad_id))
        loader = self.accelerator.prepare(loader)
        was_training = self.model.training
        model = prepare_deepspeed(self.model, self.accelerator) if self.is_deepspeed_enabled else self.model
        model.eval()
        out = torch.full((len(forget_dataset),), float("nan"))
        for batch in loader:
            logps, mask = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], fused=self.fused)
            idx, seq = self.accelerator.gather_for_metrics((batch["index"], sequence_logps(logps, mask)))
            out[idx.cpu()] = seq.float().cpu()
        self.model.train(was_training)
        if model is not self.model:  # drop the inference engine's ZeRO-3 hooks: they would clash with the training engine's
            model.destroy()
        if torch.isnan(out).any():
            raise RuntimeError("reference pass left forget rows without a log-prob (check the 'index' column)")
        return out

    # ----- loss ------------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: UnlearnConfig = self.args
        method = args.method
        has_retain = method in _HAS_RETAIN and "retain_input_ids" in inputs and args.alpha > 0
        retain_kl = has_retain and args.retain_loss == RetainLoss.KL
        f_ids, f_att, f_lab = inputs["forget_input_ids"], inputs["forget_attention_mask"], inputs["forget_labels"]
        n = f_ids.shape[0]
        # One forward over forget and (NLL) retain rows together: one larger matmul instead of two.
        if has_retain and not retain_kl:
            ids, att, lab = _concat_padded([(f_ids, f_att, f_lab), (inputs["retain_input_ids"], inputs["retain_attention_mask"], inputs["retain_labels"])], self.pad_id)
        else:
            ids, att, lab = f_ids, f_att, f_lab
        logps, mask = token_logps(model, ids, att, lab, fused=self.fused)
        f_logps, f_mask = logps[:n, : f_lab.shape[1] - 1], mask[:n, : f_lab.shape[1] - 1]
        seq = sequence_logps(f_logps, f_mask)
        metrics = {"forget_logps": seq.detach(), "forget_nll": nll_loss(f_logps, f_mask).detach()}

        if method in (UnlearnMethod.GRAD_ASCENT, UnlearnMethod.GRAD_DIFF):
            forget = gradient_ascent_loss(f_logps, f_mask)
        elif method in _NEEDS_REF_LOGPS:
            ref = self._ref_logps(inputs)
            forget = npo_loss(seq, ref, args.beta)
            metrics["ref_logps"], metrics["log_ratio"] = ref, (seq - ref).detach()
        elif method == UnlearnMethod.SIMNPO:
            forget = simnpo_loss(seq, f_mask.sum(-1), args.simnpo_beta, args.simnpo_delta)
        else:  # pragma: no cover - the enum is closed
            raise ValueError(f"unknown unlearning method {method!r}")
        loss = args.gamma * forget.mean()
        metrics["forget_loss"] = forget.detach()

        if has_retain:
            if retain_kl:
                retain = self._retain_kl(model, inputs)
            else:
                retain = nll_loss(logps[n:], mask[n:])
            loss = loss + args.alpha * retain.mean()
            metrics["retain_loss"] = retain.detach()
        self._check_finite(loss)
        if self.args.logging_strategy != "no":
            for key, value in metrics.items():  # kept on device; gathered across processes once per logging step
                self._metrics[key].append(value.float().mean())
        return loss

    def _ref_logps(self, inputs) -> torch.Tensor:
        if self.ref_forget_logps is not None:
            return self.ref_forget_logps[inputs["forget_index"]]
        with torch.no_grad(), self._reference_ctx() as ref:
            logps, mask = token_logps(ref, inputs["forget_input_ids"], inputs["forget_attention_mask"], inputs["forget_labels"], fused=self.fused)
        return sequence_logps(logps, mask)

    def _retain_kl(self, model, inputs) -> torch.Tensor:
        kw = {"input_ids": inputs["retain_input_ids"], "attention_mask": inputs["retain_attention_mask"], "use_cache": False}
        _, mask = shift_labels(inputs["retain_labels"])
        logits = model(**kw).logits[:, :-1]
        with torch.no_grad(), self._reference_ctx() as ref:
            ref_logits = ref(**kw).logits[:, :-1]
        return retain_kl_loss(logits, ref_logits, mask)

    def _check_finite(self, loss: torch.Tensor) -> None:
        # Checked on every micro-batch, before backward: under DeepSpeed the weights are updated inside the backward of
        # the last micro-batch, so a check at optimizer-step time would come too late. Costs one scalar sync.
        ok = torch.isfinite(loss.detach()).float().reshape(1)
        if self.accelerator.num_processes > 1:
            ok = self.accelerator.gather(ok).min()  # every rank must stop together, or DDP hangs
        if not bool(ok):
            step = self.state.global_step + 1
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at optimizer step {step}; training stopped before updating the "
                f"weights. The last good checkpoint in {self.args.output_dir!r} (if any) is untouched; lower the "
                "learning rate or check the data."
            )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Called on every process at the same steps, so the gather below cannot deadlock.
        if self._metrics and "loss" in logs:
            local = torch.stack([torch.stack(vals).mean() for vals in self._metrics.values()])
            means = self.accelerator.gather(local[None]).mean(0).tolist()
            logs.update(dict(zip(self._metrics, means)))
            self._metrics.clear()
        super().log(logs, start_time)


def _concat_padded(parts, pad_id):
    """Right-pad several ``(ids, attention, labels)`` triples to one length and concatenate them along the batch."""
    length = max(p[0].shape[1] for p in parts)
    out = []
    for values, fill in zip(zip(*parts), (pad_id, 0, -100)):
        out.append(torch.cat([torch.nn.functional.pad(v, (0, length - v.shape[1]), value=fill) for v in values]))
    return out
