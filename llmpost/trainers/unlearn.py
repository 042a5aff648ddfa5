"""The unlearning trainer shared by gradient ascent, gradient difference, NPO, NPO+RT, SimNPO, FLAT, IdkDPO, UNDIAL,
WGA, SatImp, CE-U, PDU and AltPO.

Each method is a pure per-example loss in its own file (``grad_diff.py``, ``npo.py``, ``simnpo.py``, ``flat.py``,
``dpo.py``, ``undial.py``, ``wga.py``, ``satimp.py``, ``ceu.py``, ``pdu.py``, ``altpo.py``); this file holds
the :class:`UnlearnConfig`, the :class:`UnlearnMethod` dispatch and the :class:`UnlearnTrainer`, on the shared base
(:mod:`llmpost.trainers.base`; TRL has no unlearning trainer to extend).

Objective, per batch of ``B`` forget examples each paired with one retain example (and, for FLAT, IdkDPO and AltPO, one
template answer such as "I don't know" to the forget row's question):

    loss = gamma * mean_i forget_loss_i  +  alpha * mean_i retain_loss_i      (retain term only where the method has one)

FLAT's forget loss contrasts the template and forget answers' mean token probabilities (no retain term, no
reference); IdkDPO's is DPO with the template as the chosen and the forget answer as the rejected answer; AltPO's the
same preference scaled by ``2 / beta`` (the template answers serve as its alternates). UNDIAL, CE-U and PDU need the
forget rows' full-vocabulary logits (that forward keeps the padded layout; UNDIAL's reference too: ``model`` or
``peft_base``). PDU replaces ``alpha`` by a dual variable ``lambda`` (initialised at ``alpha``) updated after each
optimizer step (:mod:`llmpost.trainers.dual`), and its retain term is ``lambda * (retain_nll - pdu_retain_eps)``.
Per-token losses (UNDIAL, WGA, SatImp, CE-U, PDU) average each example's answer tokens (``token_reduction: example``)
or, as open-unlearning does, all answer tokens of the micro-batch (``batch``).

Reference model (NPO, NPO+RT, IdkDPO, and the retain KL): ``reference: precomputed`` computes the reference log-probs
in one pass before training and keeps no second model (for IdkDPO: the forget answers, and each template answer drawn
for each forget row in every planned epoch); ``peft_base`` uses the LoRA model with adapters
disabled; ``model`` keeps an explicit frozen copy (needed for the retain KL of full fine-tuning). ``auto`` picks the
cheapest that works.

Throughput options (shared with the other llmpost trainers): ``fused_lm_head`` (default on: the LM head in tiles over
the answer positions, no ``(B, T, V)`` logits), ``padding_free`` (the forward sees only real tokens; exact, see
:func:`llmpost.ops.pack_padded`; not for ``retain_loss: kl``, whose full-vocabulary logits keep the padded layout),
``activation_checkpointing``, ``torch_compile`` and ``use_liger_kernel`` (:func:`llmpost.models.check_kernel_options`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from llmpost.data.collators import ForgetRetainCollator
from llmpost.epochs import EpochCallback
from llmpost.eval.selection import SelectRule
from llmpost.losses.altpo import altpo_loss
from llmpost.losses.ceu import ceu_token_loss, skip_first_tokens
from llmpost.losses.dpo import dpo_loss
from llmpost.losses.flat import FDivergence, flat_batch_loss, flat_loss
from llmpost.losses.grad_diff import gradient_ascent_loss, nll_loss, retain_kl_loss
from llmpost.losses.npo import npo_loss
from llmpost.losses.pdu import logit_margin_token_loss
from llmpost.losses.satimp import satimp_token_loss
from llmpost.losses.simnpo import simnpo_loss
from llmpost.losses.undial import undial_token_loss
from llmpost.losses.wga import wga_token_loss
from llmpost.ops import logps_from_logits, masked_mean, masked_sum, sequence_logps, shift_labels, token_logps
from llmpost.trainers.base import LlmpostTrainer, ReferenceConfig
from llmpost.trainers.dual import DualVariable
from llmpost.trainers.metrics import NonFiniteLossError, check_finite_loss  # noqa: F401 (re-exported)
from llmpost.trainers.reference import Reference
from llmpost.utils import StrEnum, parse_enum


class UnlearnMethod(StrEnum):
    GRAD_ASCENT = "grad_ascent"
    GRAD_DIFF = "grad_diff"
    NPO = "npo"
    NPO_RT = "npo_rt"
    SIMNPO = "simnpo"
    FLAT = "flat"
    IDK_DPO = "idk_dpo"
    UNDIAL = "undial"
    WGA = "wga"
    SATIMP = "satimp"
    CEU = "ceu"
    PDU = "pdu"
    ALTPO = "altpo"
    RMU = "rmu"  # llmpost.trainers.rmu.RmuTrainer (RmuConfig's fields)


class FlatReduction(StrEnum):
    EXAMPLE = "example"
    BATCH = "batch"


class RetainLoss(StrEnum):
    NLL = "nll"
    KL = "kl"


class TokenReduction(StrEnum):
    EXAMPLE = "example"
    BATCH = "batch"


M = UnlearnMethod
_HAS_RETAIN = {M.GRAD_DIFF, M.NPO_RT, M.SIMNPO, M.IDK_DPO, M.UNDIAL, M.WGA, M.SATIMP, M.PDU, M.ALTPO}
_NEEDS_REF_LOGPS = {M.NPO, M.NPO_RT, M.IDK_DPO, M.ALTPO}
_NEEDS_FORGET_LOGITS = {M.UNDIAL, M.CEU, M.PDU}  # full-vocabulary logits of the forget rows
NEEDS_TEMPLATES = {M.FLAT, M.IDK_DPO, M.ALTPO}
# Defaults of the shared weights where a method's source differs from 1.0 (see the alpha / gamma help).
_DEFAULT_ALPHA = {M.UNDIAL: 0.0, M.SATIMP: 0.1}


def uses_retain(args) -> bool:
    """Whether the configured method trains on retain rows (the recipes then pair them with the forget rows)."""
    if args.method == UnlearnMethod.RMU:
        return getattr(args, "rmu_alpha", 0) > 0
    return args.method in _HAS_RETAIN and (args.alpha > 0 or args.method == UnlearnMethod.PDU)


@dataclass
class UnlearnConfig(ReferenceConfig):
    """Training arguments for the unlearning methods. Defaults are NPO's TOFU setup (arXiv 2404.05868, Sec. 5)."""

    method: UnlearnMethod = field(default=UnlearnMethod.NPO, metadata={"help": f"One of {[m.value for m in UnlearnMethod]}."})
    beta: float = field(default=0.1, metadata={"help": "NPO / IdkDPO inverse temperature (NPO paper, TOFU: 0.1; TOFU IdkDPO: 0.1)."})
    gamma: float = field(default=1.0, metadata={"help": "Weight of the forget term (open-unlearning default 1.0)."})
    alpha: float | None = field(default=None, metadata={"help": "Weight of the retain term (methods with one). Default per method: 1.0 (open-unlearning's GradDiff/NPO/SimNPO/DPO/WGA/PDU configs; for pdu the dual variable's initial value, its community/methods/PDU/run.sh uses 100 on TOFU); undial 0.0 (configs/trainer/UNDIAL.yaml, the paper uses no retain set); satimp 0.1 (the authors' tmlr-group/SatImp config/forget_sat.yaml coeff: 0.1 with loss_type satimp_gd = forget + coeff x retain; also open-unlearning's SatImp class default and community/methods/SatImp/README.md; its configs/trainer/SatImp.yaml swaps them, gamma 0.1 alpha 1.0)."})
    retain_loss: RetainLoss = field(default=RetainLoss.NLL, metadata={"help": "Retain term: 'nll' or 'kl' (to the reference)."})
    simnpo_beta: float = field(default=1.0, metadata={"help": "SimNPO beta (open-unlearning SimNPO default 1.0)."})
    simnpo_delta: float = field(default=0.0, metadata={"help": "SimNPO margin gamma/beta (paper: 0 for unlearning)."})
    flat_divergence: FDivergence = field(default=FDivergence.TV, metadata={"help": f"FLAT f-divergence, one of {[d.value for d in FDivergence]} (the authors' default: total variation, UCSC-REAL/FLAT config/forget.yaml `variants: Total-Variation` and get_contrastive_loss)."})
    undial_beta: float = field(default=10.0, metadata={"help": "UNDIAL strength gamma: how far the forgotten token's logit is lowered in the teacher (open-unlearning configs/trainer/UNDIAL.yaml beta: 10.0; its README: 3, 10 or 30)."})
    wga_beta: float = field(default=1.0, metadata={"help": "WGA exponent of the token weight p^beta (open-unlearning configs/trainer/WGA.yaml beta: 1.0)."})
    satimp_beta1: float = field(default=5.0, metadata={"help": "SatImp saturation exponent, weight p^beta1 (open-unlearning configs/trainer/SatImp.yaml beta1: 5.0)."})
    satimp_beta2: float = field(default=1.0, metadata={"help": "SatImp importance exponent, weight (1-p)^beta2 (open-unlearning configs/trainer/SatImp.yaml beta2: 1.0)."})
    ceu_ignore_first_n: int = field(default=1, metadata={"help": "CE-U: leading answer tokens left out of the loss (open-unlearning configs/trainer/CEU.yaml ignore_first_n_answer_tokens: 1, the paper's footnote)."})
    pdu_retain_eps: float | None = field(default=None, metadata={"help": "PDU: the bound eps of the constraint retain_nll <= eps; required (open-unlearning configs/trainer/PDU.yaml retain_loss_eps: ??? (no default); its TOFU run uses 0.3; its README: somewhat above the starting model's retain loss)."})
    pdu_dual_step_size: float = field(default=1.0, metadata={"help": "PDU: step size of the dual ascent on lambda; 0 keeps lambda = alpha fixed (open-unlearning configs/trainer/PDU.yaml dual_step_size: 1.0; primal_dual: false is 0 here)."})
    pdu_dual_warmup_epochs: float = field(default=5.0, metadata={"help": "PDU: epochs before lambda is first updated (open-unlearning configs/trainer/PDU.yaml dual_warmup_epochs: 5)."})
    pdu_label_positions: bool = field(default=False, metadata={"help": "PDU: flatten the logits at the answer tokens' own positions (open-unlearning's unshifted mask) instead of those that predict them (the paper)."})
    token_reduction: TokenReduction = field(default=TokenReduction.EXAMPLE, metadata={"help": "undial/wga/satimp/ceu/pdu: 'example' (mean over each answer's tokens, then over examples; batch-split invariant) or 'batch' (open-unlearning: one mean over all answer tokens of the micro-batch)."})
    flat_reduction: FlatReduction = field(default=FlatReduction.EXAMPLE, metadata={"help": "FLAT: 'example' (per-example, batch-split invariant) or 'batch' (the authors' batch-mean probabilities)."})
    select: SelectRule = field(default=SelectRule.LAST, metadata={"help": "Which evaluated checkpoint the run reports (output_dir/best, SELECTION.json): last | muse_bench | max_forget_quality | pareto (llmpost.eval.selection). Evaluation during training: eval_strategy steps|epoch, eval_steps, eval_on_start."})
    select_metrics: str | None = field(default=None, metadata={"help": "muse_bench: comma-separated forget-memorization keys compared with the retrained model (default forget_knowmem_ROUGE, the authors' get_best_forget_quality.py)."})
    select_utility_fraction: float = field(default=0.9, metadata={"help": "pareto: the least model_utility kept, as a fraction of the target's (the step-0 evaluation)."})
    select_early_stop: bool = field(default=False, metadata={"help": "Stop training when the rule allows: muse_bench at its first qualifying checkpoint; max_forget_quality / pareto after select_patience evaluations without a new choice."})
    select_patience: int = field(default=3, metadata={"help": "Evaluations without a new choice before an early stop (max_forget_quality, pareto)."})

    def __post_init__(self):
        for name, enum in (("method", UnlearnMethod), ("retain_loss", RetainLoss), ("flat_divergence", FDivergence),
                           ("flat_reduction", FlatReduction), ("token_reduction", TokenReduction)):
            setattr(self, name, parse_enum(name, getattr(self, name), enum))
        if self.alpha is None:
            self.alpha = _DEFAULT_ALPHA.get(self.method, 1.0)
        for name in ("beta", "simnpo_beta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        for name in ("gamma", "alpha", "undial_beta", "wga_beta", "satimp_beta1", "satimp_beta2", "ceu_ignore_first_n",
                     "pdu_dual_step_size", "pdu_dual_warmup_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.method == UnlearnMethod.PDU:
            if self.pdu_retain_eps is None:
                raise ValueError("pdu_retain_eps: method 'pdu' needs the retain-loss bound eps (no default; e.g. somewhat "
                                 "above the starting model's retain NLL; open-unlearning's TOFU run uses 0.3)")
            if self.pdu_retain_eps < 0:
                raise ValueError(f"pdu_retain_eps: must be >= 0, got {self.pdu_retain_eps}")
            if self.retain_loss != RetainLoss.NLL:
                raise ValueError("retain_loss: method 'pdu' constrains the retain NLL; use retain_loss: nll")
        if self.reference == Reference.PRECOMPUTED and self.method == UnlearnMethod.UNDIAL:
            raise ValueError("reference: 'precomputed' cannot serve method 'undial' (it needs reference logits); use 'model' or 'peft_base'")
        if self.reference == Reference.PRECOMPUTED and self.needs_ref_logits:
            raise ValueError("reference: 'precomputed' cannot serve retain_loss 'kl' (it needs reference logits); use 'model' or 'peft_base'")
        self.select = parse_enum("select", self.select, SelectRule)
        if not 0 < self.select_utility_fraction <= 1:
            raise ValueError(f"select_utility_fraction: must be in (0, 1], got {self.select_utility_fraction}")
        if self.select_patience < 1:
            raise ValueError(f"select_patience: must be >= 1, got {self.select_patience}")
        if self.select == SelectRule.PARETO:
            self.eval_on_start = True  # the target's model utility is the step-0 evaluation
        super().__post_init__()
        if self.select != SelectRule.LAST and self.eval_strategy == "no":
            raise ValueError(f"select: {self.select} chooses among checkpoints evaluated during training; set "
                             "eval_strategy (steps or epoch) and eval_steps")

    @property
    def select_metric_keys(self) -> tuple[str, ...] | None:
        return tuple(k.strip() for k in self.select_metrics.split(",") if k.strip()) if self.select_metrics else None

    @property
    def needs_ref_logits(self) -> bool:
        """The retain KL or UNDIAL's teacher: full-vocabulary reference logits at every step."""
        return self.method == UnlearnMethod.UNDIAL or (self.method in _HAS_RETAIN and self.retain_loss == RetainLoss.KL)


class UnlearnTrainer(LlmpostTrainer):
    """Unlearning trainer. ``train_dataset`` is a :class:`llmpost.data.unlearn.ForgetRetainDataset` of tokenised rows
    (``input_ids``, ``labels``, ``attention_mask``, ``index``)."""

    collator = ForgetRetainCollator

    def __init__(self, model, args: UnlearnConfig, train_dataset, processing_class, ref_model=None, peft_config=None, **kwargs):
        if args.method == UnlearnMethod.RMU and type(self).compute_loss is UnlearnTrainer.compute_loss:
            raise ValueError("method 'rmu' is trained by llmpost.trainers.rmu.RmuTrainer with an RmuConfig")
        if args.method in NEEDS_TEMPLATES and getattr(train_dataset, "templates", None) is None:
            raise ValueError(f"method {args.method.value!r} needs template answers (ForgetRetainDataset(templates=...)), "
                             "e.g. TOFU's idontknow.jsonl: set template_answers_path")
        super().__init__(model, args, train_dataset, processing_class, peft_config=peft_config, **kwargs)
        self.add_callback(EpochCallback())  # the forget/retain pairing depends on the epoch, also after a resume
        needs_logits = args.needs_ref_logits
        reference = self.setup_reference(needs_logits or args.method in _NEEDS_REF_LOGPS, needs_logits, ref_model)
        self.ref_forget_logps = self.ref_template_logps = None
        self.dual = None
        if args.method == UnlearnMethod.PDU:  # lambda starts at alpha; saved with each checkpoint
            self.dual = DualVariable(args.alpha, args.pdu_retain_eps, args.pdu_dual_step_size, args.pdu_dual_warmup_epochs)
            self.add_callback(self.dual)
        if reference == Reference.PRECOMPUTED:  # after Trainer.__init__: the pass needs self.accelerator
            self.ref_forget_logps = self.precompute_ref_logps(train_dataset.forget).to(self.accelerator.device)
            if args.method in (UnlearnMethod.IDK_DPO, UnlearnMethod.ALTPO):
                self.ref_template_logps = self._precompute_template_ref(train_dataset).to(self.accelerator.device)

    # ----- reference -------------------------------------------------------------------------------------------------
    def planned_epochs(self, num_rows: int) -> int:
        """How many epochs (started ones included) training will run: at least the trainer's own count."""
        args = self.args
        if args.max_steps > 0:  # an epoch has at least this many optimizer steps; fewer steps per epoch -> more epochs
            rows_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * self.accelerator.num_processes
            return math.ceil(args.max_steps / max(num_rows // rows_per_step, 1))
        return math.ceil(args.num_train_epochs)

    def _precompute_template_ref(self, dataset) -> torch.Tensor:
        """IdkDPO: reference log-probs of the template answer drawn for each forget row in each planned epoch, as an
        ``(N, num_templates)`` table (NaN where no epoch draws that pair). The draws are pure functions of (seed,
        epoch, row), so they are known before training; at most ``epochs x N`` short sequences."""
        n, t = len(dataset), len(dataset.templates)
        pairs = sorted({(i, dataset.template_index(i, e)) for e in range(self.planned_epochs(n)) for i in range(n)})
        keys = ("input_ids", "labels", "attention_mask")
        examples = [{**{k: dataset.templates.encode(i, j)[k] for k in keys}, "index": i * t + j} for i, j in pairs]
        return self.precompute_ref_logps(examples, size=n * t).view(n, t)

    # ----- loss ------------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: UnlearnConfig = self.args
        method = args.method
        has_retain = method in _HAS_RETAIN and "retain_input_ids" in inputs and (args.alpha > 0 or self.dual is not None)
        retain_kl = has_retain and args.retain_loss == RetainLoss.KL
        forget_logits = method in _NEEDS_FORGET_LOGITS
        # One forward over forget, template and (NLL) retain rows together: one larger matmul instead of several.
        parts = ([] if forget_logits else ["forget"]) + (["template"] if method in NEEDS_TEMPLATES else []) + (["retain"] if has_retain and not retain_kl else [])
        split = self._split_token_logps(model, inputs, parts) if parts else {}
        if forget_logits:  # the full-vocabulary logits of the forget rows, in the padded layout
            kw = {"input_ids": inputs["forget_input_ids"], "attention_mask": inputs["forget_attention_mask"], "use_cache": False}
            logits = model(**kw).logits
            split["forget"] = logps_from_logits(logits, inputs["forget_labels"])
        f_logps, f_mask = split["forget"]
        seq = sequence_logps(f_logps, f_mask)
        metrics = {"forget_logps": seq.detach(), "forget_nll": nll_loss(f_logps, f_mask).detach()}

        if method in (UnlearnMethod.GRAD_ASCENT, UnlearnMethod.GRAD_DIFF):
            forget = gradient_ascent_loss(f_logps, f_mask)
        elif method in (UnlearnMethod.NPO, UnlearnMethod.NPO_RT):
            ref = self._ref_logps(inputs, "forget")
            forget = npo_loss(seq, ref, args.beta)
            metrics["ref_logps"], metrics["log_ratio"] = ref, (seq - ref).detach()
        elif method == UnlearnMethod.SIMNPO:
            forget = simnpo_loss(seq, f_mask.sum(-1), args.simnpo_beta, args.simnpo_delta)
        elif method == UnlearnMethod.FLAT:
            (t_logps, t_mask) = split["template"]
            t_probs, f_probs = t_logps.exp(), f_logps.exp()
            p_template, p_forget = masked_mean(t_probs, t_mask), masked_mean(f_probs, f_mask)
            if args.flat_reduction == FlatReduction.BATCH:
                forget = flat_batch_loss(t_probs, t_mask, f_probs, f_mask, args.flat_divergence).reshape(1)
            else:
                forget = flat_loss(p_template, p_forget, args.flat_divergence)
            metrics["template_prob"], metrics["forget_prob"] = p_template.detach(), p_forget.detach()
        elif method == UnlearnMethod.IDK_DPO:
            chosen = sequence_logps(*split["template"])
            ref_chosen, ref_rejected = self._ref_logps(inputs, "template"), self._ref_logps(inputs, "forget")
            forget = dpo_loss(chosen, seq, ref_chosen, ref_rejected, args.beta)
            metrics["template_logps"] = chosen.detach()
            metrics["reward_margin"] = (args.beta * ((chosen - ref_chosen) - (seq - ref_rejected))).detach()
        elif method == UnlearnMethod.ALTPO:
            chosen = sequence_logps(*split["template"])
            ref_chosen, ref_rejected = self._ref_logps(inputs, "template"), self._ref_logps(inputs, "forget")
            forget = altpo_loss(chosen, seq, ref_chosen, ref_rejected, args.beta)
            metrics["template_logps"] = chosen.detach()
            metrics["reward_margin"] = (args.beta * ((chosen - ref_chosen) - (seq - ref_rejected))).detach()
        elif method in (UnlearnMethod.WGA, UnlearnMethod.SATIMP):
            terms = (wga_token_loss(f_logps, args.wga_beta) if method == UnlearnMethod.WGA
                     else satimp_token_loss(f_logps, args.satimp_beta1, args.satimp_beta2))
            forget = self._reduce_tokens(terms, f_mask)
        elif method == UnlearnMethod.UNDIAL:
            targets, _ = shift_labels(inputs["forget_labels"])
            with torch.no_grad(), self._reference_ctx() as ref:
                ref_logits = ref(**kw).logits[:, :-1]
            forget = self._reduce_tokens(undial_token_loss(logits[:, :-1], ref_logits, targets, args.undial_beta), f_mask)
        elif method == UnlearnMethod.CEU:
            targets, _ = shift_labels(inputs["forget_labels"])
            forget = self._reduce_tokens(ceu_token_loss(logits[:, :-1], targets), skip_first_tokens(f_mask, args.ceu_ignore_first_n))
        elif method == UnlearnMethod.PDU:
            if args.pdu_label_positions:  # open-unlearning: the logits at the answer tokens themselves (unshifted)
                forget = self._reduce_tokens(logit_margin_token_loss(logits), inputs["forget_labels"] != -100)
            else:
                forget = self._reduce_tokens(logit_margin_token_loss(logits[:, :-1]), f_mask)
        else:  # pragma: no cover - the enum is closed
            raise ValueError(f"unknown unlearning method {method!r}")
        loss = args.gamma * forget.mean()
        metrics["forget_loss"] = forget.detach()

        if has_retain:
            if retain_kl:
                retain = self._retain_kl(model, inputs)
            else:
                retain = nll_loss(*split["retain"])
            if self.dual is not None:  # PDU: the Lagrangian term lambda * (retain - eps), lambda from the dual state
                if model.training:
                    self.dual.record(retain.mean())
                loss = loss + self.dual.value * (retain.mean() - args.pdu_retain_eps)
                metrics["dual_lambda"] = torch.tensor(self.dual.value, device=loss.device)
            else:
                loss = loss + args.alpha * retain.mean()
            metrics["retain_loss"] = retain.detach()
        check_finite_loss(self, loss)
        self.record_metrics(metrics)
        return loss

    def _split_token_logps(self, model, inputs, parts: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-token log-probs and masks of several parts (``forget``, ``template``, ``retain``), one forward."""
        rows = {p: (inputs[f"{p}_input_ids"], inputs[f"{p}_attention_mask"], inputs[f"{p}_labels"]) for p in parts}
        ids, att, lab = _concat_padded(list(rows.values()), self.pad_id) if len(parts) > 1 else rows[parts[0]]
        logps, mask = token_logps(model, ids, att, lab, fused=self.fused, padding_free=self.padding_free)
        split, start = {}, 0
        for p, (p_ids, _, p_lab) in rows.items():
            n, width = p_ids.shape[0], p_lab.shape[1] - 1
            split[p] = (logps[start : start + n, :width], mask[start : start + n, :width])
            start += n
        return split

    def _reduce_tokens(self, terms: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B,)`` per-example losses from per-token terms: each example's token mean (``token_reduction: example``), or
        values whose mean over the batch is the mean over all its answer tokens (``batch``, open-unlearning's)."""
        if self.args.token_reduction == TokenReduction.EXAMPLE:
            return masked_mean(terms, mask)
        return masked_sum(terms, mask) * (mask.shape[0] / mask.sum().clamp(min=1))

    def _ref_logps(self, inputs, part: str) -> torch.Tensor:
        """Reference log-probs of the ``forget`` or ``template`` answers of a batch: precomputed, or one forward."""
        if part == "forget" and self.ref_forget_logps is not None:
            return self.ref_forget_logps[inputs["forget_index"]]
        if part == "template" and self.ref_template_logps is not None:
            ref = self.ref_template_logps[inputs["template_index"], inputs["template_template_id"]]
            if torch.isnan(ref).any():
                raise RuntimeError("no precomputed reference for a template answer: training ran past the epochs planned "
                                   f"({self.planned_epochs(len(self.train_dataset))}); use reference: model or peft_base")
            return ref
        return self.reference_sequence_logps(inputs[f"{part}_input_ids"], inputs[f"{part}_attention_mask"],
                                             inputs[f"{part}_labels"])

    def _retain_kl(self, model, inputs) -> torch.Tensor:
        kw = {"input_ids": inputs["retain_input_ids"], "attention_mask": inputs["retain_attention_mask"], "use_cache": False}
        _, mask = shift_labels(inputs["retain_labels"])
        logits = model(**kw).logits[:, :-1]
        with torch.no_grad(), self._reference_ctx() as ref:
            ref_logits = ref(**kw).logits[:, :-1]
        return retain_kl_loss(logits, ref_logits, mask)


def _concat_padded(parts, pad_id):
    """Right-pad several ``(ids, attention, labels)`` triples to one length and concatenate them along the batch."""
    length = max(p[0].shape[1] for p in parts)
    out = []
    for values, fill in zip(zip(*parts), (pad_id, 0, -100)):
        out.append(torch.cat([torch.nn.functional.pad(v, (0, length - v.shape[1]), value=fill) for v in values]))
    return out
