"""Binary verifiers ``(completion, gold) -> 0/1`` for RL with verifiable (and noisy) rewards (issue 7, section 2).

A verifier is a plain callable with metadata attributes (``name``, ``description``). Three kinds:

* ``rule_based_verifier``: a brittle exact match of the last ``\\boxed{}`` after light normalisation. It rejects
  equivalent forms (``12/36`` vs ``1/3``, ``\\frac{1}{2}`` vs ``0.5``, ``\\dfrac`` vs ``\\frac``): real false
  negatives, the example the paper (arXiv 2510.00915, abstract) gives for rule-based checkers.
* ``math_verify_verifier``: the math-verify equivalence checker of ``llmpost.eval.math_grading`` (the stronger one).
* ``NoisyVerifier``: wraps any verifier and flips its verdicts at rates (rho0, rho1), seeded, for controlled
  experiments with the noise channel of ``llmpost.methods.noisy_grpo``.

``safe_verify`` is how callers should invoke a verifier: an empty completion is 0, and a verifier that raises or
returns something other than 0/1 counts as 0 (and is counted in ``VerifyStats``), so one bad completion never
crashes a training step. Wall time is the base verifier's job: the rule-based one is linear in the text, and
``math_verify_verifier`` is bounded by ``is_correct``'s ``timeout`` (a killed worker subprocess).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..eval.math_grading import extract_boxed, is_correct
from .noisy_grpo import Ema, NoiseRates

__all__ = ["AppealEstimator", "NoisyVerifier", "Verifier", "VerifyStats", "math_verify_verifier", "normalize_answer",
           "rule_based_verifier", "safe_verify"]

Verifier = Callable[[str, str], int]

_STRIP = re.compile(r"\\left|\\right|\\!|\s|\$")


def normalize_answer(answer: str) -> str:
    """Light normalisation: drop whitespace, ``\\left``, ``\\right``, ``\\!`` and ``$``, then trailing ``.``.

    Nothing semantic (no fraction, decimal or ``\\dfrac`` rewriting): that brittleness is the point.
    """
    return _STRIP.sub("", answer).rstrip(".")


def rule_based_verifier(completion: str, gold: str) -> int:
    """1 iff the last ``\\boxed{}`` of ``completion`` equals ``gold`` after ``normalize_answer``, else 0.

    No box, an unclosed box or non-string input is 0. Rejects ``12/36`` vs ``1/3`` and ``\\frac{1}{2}`` vs ``0.5``.
    """
    if not isinstance(completion, str) or not isinstance(gold, str):
        return 0
    pred = extract_boxed(completion)
    if pred is None:
        return 0
    return int(normalize_answer(pred) == normalize_answer(gold))


rule_based_verifier.name = "rule_based"
rule_based_verifier.description = "exact match of the last \\boxed{} after light normalisation (brittle)"


def math_verify_verifier(completion: str, gold: str, timeout: float = 5.0) -> int:
    """1 iff math-verify finds ``completion``'s final answer equivalent to ``gold`` (``math_grading.is_correct``).

    Bounded by ``timeout`` seconds; a timeout, junk input or any grading error is 0. Raises only ImportError when
    math-verify is not installed (a setup error, meant to surface before training starts).
    """
    if not isinstance(completion, str) or not isinstance(gold, str):
        return 0
    return int(is_correct(completion, gold, timeout=timeout))


math_verify_verifier.name = "math_verify"
math_verify_verifier.description = "math-verify symbolic equivalence, bounded in wall time (llmpost.eval.math_grading)"


@dataclass
class VerifyStats:
    """Counters kept by ``safe_verify``: calls, empty completions (0) and failing verifiers (raised or non-0/1: 0)."""

    calls: int = 0
    empty: int = 0
    errors: int = 0


def safe_verify(verifier: Verifier, completion: str, gold: str, stats: VerifyStats | None = None) -> int:
    """``verifier(completion, gold)`` as 0/1 that never raises: empty/blank/non-string completion -> 0 (not called),
    an exception or a result other than 0/1/True/False -> 0 and ``stats.errors += 1``."""
    if stats is not None:
        stats.calls += 1
    if not isinstance(completion, str) or not completion.strip():
        if stats is not None:
            stats.empty += 1
        return 0
    try:
        result = verifier(completion, gold)
    except Exception:  # any failure of a verifier on one completion is a 0, never a crashed step
        result = None
    if isinstance(result, (bool, int, np.integer)) and result in (0, 1):
        return int(result)
    if stats is not None:
        stats.errors += 1
    return 0


class NoisyVerifier:
    """``base`` seen through the noise channel: a 1 becomes 0 with probability ``rho1`` (false negative) and a 0
    becomes 1 with probability ``rho0`` (false positive), independently per call.

    Reproducible: one uniform draw from ``numpy.random.default_rng(seed)`` per call (drawn before ``base`` runs, so
    the stream does not depend on the verdicts), flip iff ``u < rho`` of the base verdict, the same rule as
    ``noisy_grpo.noise_channel``. Counts ``calls``, ``flips_to_0`` and ``flips_to_1``. Exceptions of ``base``
    propagate (wrap the call in ``safe_verify``). ``clean(completion, gold)`` is the base verdict without noise,
    reused from the last call on the same pair instead of verifying twice (a monitoring oracle).
    """

    def __init__(self, base: Verifier, rho0: float, rho1: float, seed: int = 0):
        self.base = base
        self.rates = NoiseRates(rho0, rho1)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.calls = self.flips_to_0 = self.flips_to_1 = 0
        self._last: tuple[str, str, int] | None = None  # (completion, gold, base verdict) of the last call
        base_name = getattr(base, "name", getattr(base, "__name__", "verifier"))
        self.name = f"noisy({base_name}, rho0={rho0:g}, rho1={rho1:g}, seed={seed})"
        self.description = f"{base_name} with injected noise: P(1->0)={rho1:g}, P(0->1)={rho0:g}"

    def __call__(self, completion: str, gold: str) -> int:
        self.calls += 1
        u = self._rng.random()
        verdict = int(self.base(completion, gold))
        self._last = (completion, gold, verdict)
        if verdict == 1 and u < self.rates.rho1:
            self.flips_to_0 += 1
            return 0
        if verdict == 0 and u < self.rates.rho0:
            self.flips_to_1 += 1
            return 1
        return verdict


    def clean(self, completion: str, gold: str) -> int:
        """``base(completion, gold)``: the verdict before the noise, without a second verification when this
        pair was the last one verified."""
        last = self._last
        if last is not None and last[0] is completion and last[1] is gold:
            return last[2]
        return int(self.base(completion, gold))


RHO1_CAP = 0.5  # rho1^ is clipped to [0, RHO1_CAP) (issue 7, section 3)


class AppealEstimator:
    """Online estimate of the rule-based verifier's false-negative rate rho1 by appeals (issue 7, section 3; the
    paper's abstract: "a lightweight LLM verifier estimates the FN rate online by rechecking rule-based negatives").

    Each step, every rule-based negative is appealed independently with probability ``q`` (Bernoulli sampling,
    seeded) and re-checked by ``strong`` (through ``safe_verify``: a failing strong checker upholds the 0). With
    ``O`` overturned appeals, the Horvitz-Thompson estimate ``FN^ = O / q`` is unbiased for the number of false
    negatives among the negatives (each is appealed with probability q); it is capped at the number of negatives
    (the true count never exceeds it, so the cap only moves FN^ towards the truth). Then
    ``rho1^ = FN^ / (P + FN^)`` with P the verifier's positives (0 when the denominator is 0). This estimates
    ``FN / (TP + FN)`` when positives are true positives (rho0 ~ 0, the rule-based case); false positives in P bias
    it down. It is a ratio estimate: consistent as the batch grows, biased O(1/batch) per step.

    ``rho1`` (what the forward correction should use) is smoothed across steps as a ratio of moving averages:
    ``EMA(FN^) / (EMA(P) + EMA(FN^))`` with ``decay``, clipped to [0, 0.5); steps without evidence (P + FN^ = 0)
    leave it unchanged; it is 0 before any evidence. Averaging the counts before dividing pools the evidence of about
    ``1 / (1 - decay)`` steps, so the ratio's O(1/count) bias shrinks accordingly; an EMA of the per-step ratios
    keeps the per-step bias, which with small batches is large (measured on the tiny GRPO task, ~8 correct completions
    per step: 0.26 for an injected 0.3; tested in tests/test_noisy_grpo.py).
    """

    def __init__(self, strong: Verifier, q: float = 0.5, decay: float = 0.9, seed: int = 0):
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < float(q) <= 1.0:
            raise ValueError(f"q must be in (0, 1], got q={q!r}")
        self.strong, self.q, self.seed = strong, float(q), seed
        self._fn, self._pos = Ema(decay), Ema(decay)  # moving averages of FN^ and of P (see the class docstring)
        self._rng = np.random.default_rng(seed)
        self.stats = VerifyStats()
        self.steps = self.total_appeals = self.total_overturns = 0

    @property
    def rho1(self) -> float:
        """The smoothed, clipped estimate of rho1 (0.0 before any evidence)."""
        if self._fn.value is None:
            return 0.0
        value = self._fn.value / (self._pos.value + self._fn.value)
        return float(min(max(value, 0.0), np.nextafter(RHO1_CAP, 0.0)))

    @property
    def has_evidence(self) -> bool:
        """Whether some step had positives or estimated false negatives."""
        return self._fn.value is not None

    def update(self, rewards, completions, golds) -> dict:
        """Appeal a random fraction q of this step's negatives; returns ``rewards`` (a float tensor, each overturned
        negative set to 1), ``appealed`` (bool tensor), and the step's stats: ``appeals``, ``overturns``,
        ``negatives``, ``positives``, ``fn_hat``, ``rho1_raw`` and ``rho1`` (smoothed, clipped)."""
        r = torch.as_tensor(rewards).detach().cpu().to(torch.float32).reshape(-1)
        if not ((r == 0) | (r == 1)).all():
            raise ValueError("rewards must be 0/1 verdicts of the rule-based verifier")
        if not len(r) == len(completions) == len(golds):
            raise ValueError(f"rewards, completions and golds differ in length: {len(r)}, {len(completions)}, "
                             f"{len(golds)}")
        negatives = (r == 0).nonzero().reshape(-1).tolist()
        picked = self._rng.random(len(negatives)) < self.q  # one draw per negative: a reproducible stream
        appealed = torch.zeros(len(r), dtype=torch.bool)
        corrected = r.clone()
        overturns = 0
        for i, pick in zip(negatives, picked):
            if pick:
                appealed[i] = True
                if safe_verify(self.strong, completions[i], golds[i], self.stats):
                    corrected[i] = 1.0
                    overturns += 1
        positives = int(r.sum().item())
        fn_hat = min(overturns / self.q, float(len(negatives)))
        denom = positives + fn_hat
        rho1_raw = fn_hat / denom if denom > 0 else 0.0
        if denom > 0:
            self._fn.update(fn_hat)
            self._pos.update(positives)
        self.steps += 1
        self.total_appeals += int(appealed.sum().item())
        self.total_overturns += overturns
        return {"rewards": corrected, "appealed": appealed, "appeals": int(appealed.sum().item()),
                "overturns": overturns, "negatives": len(negatives), "positives": positives, "fn_hat": fn_hat,
                "rho1_raw": rho1_raw, "rho1": self.rho1}
