"""GRPO with noisy-verifier corrections and appeals (arXiv 2510.00915, issue 7): a thin ``trl.GRPOTrainer`` subclass.

TRL does the generation (transformers or vLLM), the reference/KL terms, the clipped surrogate and the loss
aggregation. This trainer replaces only the reward-to-advantage step. Per generation batch (all processes' completions,
laid out as consecutive groups of ``num_generations`` per prompt) it computes:

1. ``R~``: the raw 0/1 verdicts of the one reward function (a verifier, ``VerifierReward``), gathered across
   processes by TRL's ``_calculate_rewards``; kept unchanged.
2. Appeals (``appeals_fraction = q > 0``): ``AppealEstimator`` re-checks a random fraction q of the negatives with the
   stronger ``appeal_verifier`` and updates the online rho1^ (``appeals_estimator``: the paper's EMA of per-step
   Beta-prior ratios, eqs. 10-12, or llmpost's pooled ratio of EMAs). By default appeals only *estimate* rho1
   (arXiv 2510.00915, E.1: the LLM verifier "does not replace the rule-based reward"); ``appeals_recover: true``
   trains on the overturned verdicts instead (Table 4's caption, and Table 1's "Appeals" baseline with correction
   none). The same gathered batch and seed on every process give the same estimate everywhere.
3. Scores ``u = corrected_scores(R~, correction, rates)``: ``none`` -> R~; ``backward`` -> (R~ - rho0) / (1 - rho0 -
   rho1); ``forward`` -> R~ - (1 - rho1). With appeals on, ``forward`` and ``none`` use the rates (0, rho1^) (the
   estimator itself assumes rho0 ~ 0); ``backward`` keeps the configured rates.
4. Advantages ``A = advantages(u, num_generations, advantage_norm, baseline=b, scale=s)`` (Algorithm 4 of the paper).
   With ``advantage_norm: none``: ``A = (u - b) / s`` with ``b = 0`` (``baseline: zero``; PGFC's default, B.3), the
   leave-one-out mean of the other samples of the group (``loo``; PGBC's default, B.2), or the EMA (``ema_decay``) of
   the batch-mean score of the *previous* steps (``ema``; the first batch's own mean at step 1); unset, ``baseline``
   is the paper's default for the correction. ``s`` is ``advantage_scale`` (``scale_mode: fixed``), the EMA of the
   batch std of the scores of previous steps (``ema``; batches of constant scores are skipped, and
   ``advantage_scale`` stands until the first non-constant one), or PGFC's ``1 - rho1``, ``1 - rho0 - rho1`` or 1
   (``one_minus_rho1 | kappa | one``, B.3, from the rates of step 3). ``group``/``batch`` standardise ``u`` as TRL's
   GRPO does.
5. This process's slice of ``A`` (the same ``process_slice`` as TRL) becomes ``output["advantages"]``.
6. The matched-control audit (B.5, B.10), whenever the advantages can differ from the uncorrected ones (a correction,
   or recovered appeals): the same path with ``correction: none`` on the raw R~ (same baseline, scale and, for the
   EMAs, their own state) gives ``A_control``; ``noisy/audit_mean_abs_diff``, ``noisy/audit_max_abs_diff`` and
   ``noisy/audit_cosine`` (``advantage_audit`` over the token-level advantages) are logged every step. Zero difference
   with cosine 1 means the correction does not change the update.

Why ``advantage_norm: none`` is the default: GRPO's group standardisation ``(s - mean_g s) / (std_g s + eps)`` is
invariant to any ``s -> a s + b`` with ``a > 0``, and both corrections are such maps of R~ (backward: a = 1/kappa;
forward: a = 1), so under ``group`` (or ``batch``, for fixed rates) every correction gives the *same* advantages as
``none`` -- the corrections cancel (tested; the paper's B.4 says the same, though its Table 7 lists "Group-normalized
(GRPO)" as the advantage estimator: docs/noisy_grpo.md). Only an un-standardised advantage keeps them.

The forward correction ``R~ - (1 - rho1)`` is a constant shift of the reward, i.e. REINFORCE with the fixed baseline
``1 - rho1``: in expectation the uncorrected ``R~`` already gives ``kappa`` times the clean gradient (its constant part
``rho0`` multiplies ``E[grad log pi] = 0``), so the forward form changes the variance, not the direction, and any mean
baseline (``baseline: ema`` or ``loo``, or ``group``/``batch`` standardisation) absorbs the shift and makes it
identical to ``none`` (B.3 says so too). It acts only with ``advantage_norm: none`` and ``baseline: zero``; the config
warns otherwise. Likewise, with fixed rates and ``baseline: loo``, backward is its matched control times ``1/kappa``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
import trl
from accelerate.utils import gather_object

from llmpost.losses.noisy_grpo import (
    RATE_SCALES,
    AdvantageNorm,
    Correction,
    NoiseRates,
    ScaleMode,
    advantage_audit,
    advantages,
    channel_scale,
    corrected_scores,
    leave_one_out_baseline,
)
from llmpost.rewards.appeals import AppealEstimator, Rho1Estimator
from llmpost.rewards.verifiers import Verifier, VerifyStats, safe_verify
from llmpost.utils import Ema, StrEnum, check_rate, parse_enum

logger = logging.getLogger(__name__)


class Baseline(StrEnum):
    """The baseline of ``advantage_norm: none``: ``zero``, ``ema`` (of past batch-mean scores) or ``loo`` (the
    leave-one-out mean of the group, ``leave_one_out_baseline``; arXiv 2510.00915, B.2)."""

    ZERO = "zero"
    EMA = "ema"
    LOO = "loo"


PAPER_BASELINE = {Correction.BACKWARD: Baseline.LOO, Correction.FORWARD: Baseline.ZERO,
                  Correction.NONE: Baseline.ZERO}  # arXiv 2510.00915: B.2 (PGBC), B.3 (PGFC); none: B.5 matches one


class VerifierReward:
    """A TRL reward function from a verifier: ``safe_verify(verifier, prefix + completion, answer)`` per completion
    (0/1). ``prefix``: the start of the answer that the prompt already wrote (e.g. ``\\boxed{``), or empty.

    ``oracle``: an optional clean checker for monitoring only (e.g. the base verifier under injected noise). Its
    verdicts on the same completions are kept in ``last_oracle`` and logged by ``NoisyGRPOTrainer`` as
    ``noisy/clean_reward``; they never reach the advantages."""

    def __init__(self, verifier: Verifier, name: str | None = None, prefix: str = "", oracle: Verifier | None = None):
        self.verifier, self.prefix, self.oracle = verifier, prefix, oracle
        self.__name__ = name or getattr(verifier, "name", getattr(verifier, "__name__", "verifier"))
        self.stats = VerifyStats()
        self.last_oracle: list[float] | None = None

    def texts(self, completions) -> list[str]:
        """What the verifiers see: ``prefix`` + each completion (plain text or the last chat message's content)."""
        return [self.prefix + (c if isinstance(c, str) else c[-1]["content"]) for c in completions]

    def __call__(self, completions, answer, **kwargs) -> list[float]:
        texts, golds = self.texts(completions), [str(a) for a in answer]
        verdicts, oracle = [], []
        for t, a in zip(texts, golds, strict=True):
            verdicts.append(float(safe_verify(self.verifier, t, a, self.stats)))
            if self.oracle is not None:  # right after the verifier: NoisyVerifier.clean reuses its base verdict
                oracle.append(float(safe_verify(self.oracle, t, a)))
        if self.oracle is not None:
            self.last_oracle = oracle
        return verdicts



@dataclass
class NoisyGRPOConfig(trl.GRPOConfig):
    """``trl.GRPOConfig`` plus the noisy-verifier options (issue 7). TRL's ``scale_rewards`` is not used: the
    advantages come from ``advantage_norm`` (module docstring)."""

    correction: Correction = field(default=Correction.NONE, metadata={"help": "none | backward (PGBC) | forward (PGFC)."})
    rho0: float = field(default=0.0, metadata={"help": "Verifier false-positive rate P(R~=1|R*=0), in [0, 1)."})
    rho1: float = field(default=0.0, metadata={"help": "Verifier false-negative rate P(R~=0|R*=1), in [0, 1)."})
    # Default none: group/batch standardisation cancels both corrections (module docstring; arXiv 2510.00915, B.4).
    advantage_norm: AdvantageNorm = field(default=AdvantageNorm.NONE, metadata={"help": "none | batch | group."})
    # Unset: the paper's default for the correction, loo for backward (B.2), zero for forward (B.3) and none.
    baseline: Baseline | None = field(default=None, metadata={"help": "Baseline of advantage_norm none: zero | ema | "
                                      "loo (unset: loo for backward, zero otherwise, arXiv 2510.00915 B.2-B.3)."})
    ema_decay: float = field(default=0.9, metadata={"help": "EMA decay of the baseline, the scale and rho1^, in [0, 1) "
                                                    "(0.9: the paper's lambda for rho1^, E.4)."})
    advantage_scale: float = field(default=1.0, metadata={"help": "Fixed scale s of advantage_norm none: (u - b) / s."})
    scale_mode: ScaleMode = field(default=ScaleMode.FIXED, metadata={"help": "fixed (advantage_scale) | ema (EMA of the "
                                  "batch std of the scores of previous steps) | one_minus_rho1 | kappa | one (PGFC's "
                                  "s_FC = 1 - rho1, 1 - rho0 - rho1, 1; arXiv 2510.00915 B.3)."})
    appeals_fraction: float = field(default=0.0, metadata={"help": "q: fraction of negatives appealed (0: off; the "
                                                           "paper's q is 0.1, E.4)."})
    appeals_seed: int = field(default=0, metadata={"help": "Seed of the appeal sampling."})
    # The paper's estimator by default (eqs. 10-12, E.4); pooled: llmpost's ratio of EMAs (rewards/appeals.py).
    appeals_estimator: Rho1Estimator = field(default=Rho1Estimator.PAPER, metadata={"help": "paper | pooled."})
    # False: appeals only estimate rho1 (arXiv 2510.00915, E.1); true: Table 4's caption ("recovery").
    appeals_recover: bool = field(default=False, metadata={"help": "Train on the appeals' overturned verdicts (true) "
                                  "or only estimate rho1 from them (false, the paper's E.1)."})

    def __post_init__(self):
        self.correction = parse_enum("correction", self.correction, Correction)
        self.advantage_norm = parse_enum("advantage_norm", self.advantage_norm, AdvantageNorm)
        self.baseline = PAPER_BASELINE[self.correction] if self.baseline is None else parse_enum(
            "baseline", self.baseline, Baseline)
        self.scale_mode = parse_enum("scale_mode", self.scale_mode, ScaleMode)
        self.appeals_estimator = parse_enum("appeals_estimator", self.appeals_estimator, Rho1Estimator)
        NoiseRates(self.rho0, self.rho1)  # its errors name rho0 / rho1
        check_rate("ema_decay", self.ema_decay)
        if not (isinstance(self.advantage_scale, (int, float)) and math.isfinite(self.advantage_scale)
                and self.advantage_scale > 0):
            raise ValueError(f"advantage_scale: must be finite and > 0, got {self.advantage_scale!r}")
        if not (isinstance(self.appeals_fraction, (int, float)) and 0.0 <= self.appeals_fraction <= 1.0):
            raise ValueError(f"appeals_fraction: must be in [0, 1], got {self.appeals_fraction!r}")
        if self.appeals_recover and self.appeals_fraction == 0:
            raise ValueError("appeals_recover: needs appeals (appeals_fraction > 0)")
        if self.correction == Correction.FORWARD and (self.baseline != Baseline.ZERO or self.advantage_norm != AdvantageNorm.NONE):
            logger.warning("correction: forward is R~ - (1 - rho1), a constant shift of the reward; a mean baseline "
                           "(baseline: %s, or advantage_norm: %s) absorbs the shift, so the run trains exactly as with "
                           "correction: none. Use advantage_norm: none with baseline: zero for the forward correction "
                           "to act.", self.baseline.value, self.advantage_norm.value)  # fmt: skip
        super().__post_init__()


class NoisyGRPOTrainer(trl.GRPOTrainer):
    """``trl.GRPOTrainer`` whose advantages are the corrected, configurably normalised scores of the module docstring.

    ``reward_funcs``: exactly one function returning 0/1 verdicts (e.g. ``VerifierReward``); the dataset needs an
    ``answer`` column when appeals are on. ``appeal_verifier``: the stronger checker of the appeals (required when
    ``args.appeals_fraction > 0``).
    """

    def __init__(self, *args, appeal_verifier: Verifier | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if len(self.reward_funcs) != 1:
            raise ValueError(f"NoisyGRPOTrainer needs exactly one reward function (a verifier), got {len(self.reward_funcs)}")
        cfg = self.args
        self.appeals = None
        if cfg.appeals_fraction > 0:
            if appeal_verifier is None:
                raise ValueError("appeals_fraction > 0 needs an appeal_verifier (the stronger checker)")
            self.appeals = AppealEstimator(appeal_verifier, q=cfg.appeals_fraction, decay=cfg.ema_decay,
                                           seed=cfg.appeals_seed, estimator=cfg.appeals_estimator)
        self.baseline_ema = Ema(cfg.ema_decay)
        self.scale_ema = Ema(cfg.ema_decay)
        self.control_emas = (Ema(cfg.ema_decay), Ema(cfg.ema_decay))  # the matched control's own EMA state (B.5)
        self._raw_rewards: torch.Tensor | None = None
        self._clean_rewards: torch.Tensor | None = None
        self._appeal_stats: dict | None = None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)  # gathered
        raw = rewards_per_func[:, 0]
        if not ((raw == 0) | (raw == 1)).all():
            raise ValueError(f"reward function {self.reward_func_names[0]!r} must return 0/1 verdicts")
        self._raw_rewards = raw.detach().clone()
        self._appeal_stats = None
        func = self.reward_funcs[0]
        oracle = getattr(func, "last_oracle", None) if getattr(func, "oracle", None) is not None else None
        self._clean_rewards = None
        if oracle is not None:  # every process has an oracle or none: the same reward function everywhere
            self._clean_rewards = self.accelerator.gather(torch.tensor(oracle, device=raw.device, dtype=raw.dtype))
        if self.appeals is not None and self.model.training:
            texts = func.texts(completions) if isinstance(func, VerifierReward) else [
                c if isinstance(c, str) else c[-1]["content"] for c in completions]  # what the verifier saw
            all_texts = gather_object(texts)
            all_golds = gather_object([str(x["answer"]) for x in inputs])
            self._appeal_stats = self.appeals.update(raw.cpu(), all_texts, all_golds)
        return rewards_per_func

    def current_rates(self) -> NoiseRates:
        """The rates of the scores and of the rate-derived scales: the configured ones; with appeals on, (0, rho1^)
        for ``forward`` and ``none`` (the appeals estimator assumes rho0 ~ 0; forward needs only rho1)."""
        if self.appeals is not None and self.args.correction != Correction.BACKWARD:
            return NoiseRates(0.0, self.appeals.rho1)
        return NoiseRates(self.args.rho0, self.args.rho1)

    def _baseline_and_scale(self, scores: torch.Tensor, group: int, rates: NoiseRates, update: bool,
                            emas: tuple[Ema, Ema] | None = None) -> tuple[float | torch.Tensor, float]:
        """``b`` and ``s`` of ``advantage_norm: none`` for this batch. ``ema`` baseline and scale come from the EMAs
        (``emas``, default this run's own) of the *previous* training batches (so that this batch's advantages do not
        depend on its own mean/std, except at the first step), then the EMAs take this batch in when ``update``. A
        batch of constant scores does not update the scale's EMA (its std is 0); before the first non-constant batch
        the scale is ``advantage_scale``. ``loo``: the per-sample leave-one-out baseline (a tensor)."""
        cfg = self.args
        base_ema, scale_ema = emas or (self.baseline_ema, self.scale_ema)
        mean = scores.mean().item()
        std = scores.std().item() if scores.numel() > 1 else 0.0
        base: float | torch.Tensor = 0.0
        if cfg.baseline == Baseline.EMA:
            base = base_ema.value if base_ema.value is not None else mean
            if update:
                base_ema.update(mean)
        elif cfg.baseline == Baseline.LOO and cfg.advantage_norm == AdvantageNorm.NONE:
            base = leave_one_out_baseline(scores, group)
        scale = float(cfg.advantage_scale)
        if cfg.scale_mode == ScaleMode.EMA:
            if scale_ema.value is not None:
                scale = scale_ema.value
            elif std > 0:
                scale = std
            if update and std > 0:
                scale_ema.update(std)
        elif cfg.scale_mode in RATE_SCALES:
            scale = channel_scale(cfg.scale_mode, rates)
        return base, scale

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        cfg, raw = self.args, self._raw_rewards.float()
        group = self.num_generations if mode == "train" else self.num_generations_eval
        rewards = raw
        if cfg.appeals_recover and self._appeal_stats is not None:  # Table 4's "recovery": overturned 0s count as 1
            rewards = self._appeal_stats["rewards"].to(raw.device, raw.dtype)
        rates = self.current_rates()
        scores = corrected_scores(rewards, cfg.correction, rates)
        base, scale = self._baseline_and_scale(scores, group, rates, update=mode == "train")
        adv = advantages(scores, group_size=group, norm=cfg.advantage_norm, baseline=base, scale=scale)
        n_local = len(output["prompt_ids"])
        start = self.accelerator.process_index * n_local
        output["advantages"] = adv[start : start + n_local].to(output["advantages"].device)
        logged = self._logs["advantages"]  # replace TRL's advantages in the completions table
        for _ in range(min(len(adv), len(logged))):
            logged.pop()
        logged.extend(adv.tolist())
        m = self._metrics[mode]
        m["noisy/raw_reward"].append(raw.mean().item())
        if self._clean_rewards is not None:
            m["noisy/clean_reward"].append(self._clean_rewards.float().mean().item())
        m["noisy/corrected_score"].append(scores.mean().item())
        m["noisy/baseline"].append(float(base.mean().item() if isinstance(base, torch.Tensor) else base))
        m["noisy/scale"].append(float(scale))
        m["noisy/rho1"].append(rates.rho1)
        if cfg.correction != Correction.NONE or rewards is not raw:  # B.10: against the matched control (B.5)
            control = corrected_scores(raw, Correction.NONE, rates)
            c_base, c_scale = self._baseline_and_scale(control, group, rates, mode == "train", self.control_emas)
            a_control = advantages(control, group_size=group, norm=cfg.advantage_norm, baseline=c_base, scale=c_scale)
            lengths = self.accelerator.gather(output["completion_mask"].sum(dim=1)).to(adv.device)
            for key, value in advantage_audit(adv, a_control, lengths).items():
                m[f"noisy/audit_{key}"].append(value)
        if self.appeals is not None:
            stats = self._appeal_stats or {}
            m["noisy/rho1_hat"].append(self.appeals.rho1)
            m["noisy/appeals"].append(float(stats.get("appeals", 0)))
            m["noisy/overturns"].append(float(stats.get("overturns", 0)))
        return output
