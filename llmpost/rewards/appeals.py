"""The appeals estimator of the false-negative rate rho1 (arXiv 2510.00915, Sec. 3.3, B.9 and E.4): a stronger
verifier re-checks a random fraction q of the rule-based negatives, and an online, smoothed estimate of rho1 follows.

Two estimators (:class:`Rho1Estimator`): the paper's per-step Beta-prior ratio smoothed by an EMA (eqs. 10-12), and
llmpost's pooled ratio of moving averages of the counts (issue 7), which removes the per-step ratio's small-count bias.
"""

from __future__ import annotations

import numpy as np
import torch

from llmpost.rewards.verifiers import RHO1_CAP, Verifier, VerifyStats, safe_verify
from llmpost.utils import Ema, StrEnum, check_rate

APPEAL_PRIOR = 1e-5  # alpha = beta = 1e-5, the Beta-prior pseudocounts of eq. (11) (arXiv 2510.00915, E.4)


class Rho1Estimator(StrEnum):
    """How appeals become rho1^ (:class:`AppealEstimator`).

    * ``paper`` (arXiv 2510.00915, eqs. 10-12, E.4): per step ``rho1^(t) = (FN^ + a) / (FN^ + |P_R| + a + b)`` with
      ``FN^ = overturns / q`` and ``a = b = 1e-5``, then ``rho1_bar(t) = lambda rho1_bar(t-1) + (1 - lambda) rho1^(t)``.
    * ``pooled`` (llmpost, issue 7): ``EMA(FN^) / (EMA(P) + EMA(FN^))``, FN^ capped at the number of negatives, steps
      without evidence skipped, clipped to [0, 0.5). Pooling the counts before dividing removes the O(1/count) bias of
      a per-step ratio, which the paper's EMA of ratios keeps (measured on the tiny task, ~8 correct completions a step:
      0.26 for an injected 0.3; tests/test_noisy_grpo.py).
    """

    PAPER = "paper"
    POOLED = "pooled"


def appeal_rho1_estimate(fn_hat: float, positives: float, alpha: float = APPEAL_PRIOR, beta: float = APPEAL_PRIOR) -> float:
    """One step's rho1^ of arXiv 2510.00915, eq. (11) (Sec. 3.3, B.9, E.4):

        rho1^ = (FN^ + alpha) / (FN^ + |P_R| + alpha + beta)

    ``fn_hat``: the Horvitz-Thompson count of false negatives, ``overturns / q`` (eq. 10); ``positives``: |P_R|, the
    rule-based positives, treated as true positives (the FN-dominant regime, rho0 ~ 0; false positives bias rho1^
    down). ``alpha, beta > 0`` (default 1e-5, E.4) keep it in (0, 1): with no evidence (FN^ = |P_R| = 0) it is
    ``alpha / (alpha + beta)`` = 0.5, with only overturns it is ~1. ValueError for negative counts or pseudocounts <= 0.
    """
    if not (np.isfinite(fn_hat) and fn_hat >= 0 and np.isfinite(positives) and positives >= 0):
        raise ValueError(f"fn_hat and positives must be finite counts >= 0, got fn_hat={fn_hat!r}, positives={positives!r}")
    if not (alpha > 0 and beta > 0 and np.isfinite(alpha) and np.isfinite(beta)):
        raise ValueError(f"alpha and beta must be finite and > 0, got alpha={alpha!r}, beta={beta!r}")
    return float((fn_hat + alpha) / (fn_hat + positives + alpha + beta))


class AppealEstimator:
    """Online estimate of the rule-based verifier's false-negative rate rho1 by appeals (arXiv 2510.00915, Sec. 3.3,
    B.9, E.4).

    Each step, every rule-based negative is appealed independently with probability ``q`` (Bernoulli sampling,
    seeded) and re-checked by ``strong`` (through ``safe_verify``: a failing strong checker upholds the 0). With
    ``O`` overturned appeals, the Horvitz-Thompson estimate ``FN^ = O / q`` (eq. 10) is unbiased for the number of
    false negatives among the negatives (each is appealed with probability q). ``estimator`` (:class:`Rho1Estimator`)
    turns it into rho1:

    * ``paper`` (default; q = 0.1, decay lambda = 0.9 and alpha = beta = 1e-5 are the paper's, E.4): the per-step
      ``appeal_rho1_estimate`` then its EMA, updated at every step (no cap, no clip: the values stay in (0, 1)). Not
      specified by the paper: the EMA's start; here it starts at the first step's value (``Ema``).
    * ``pooled`` (issue 7): FN^ capped at the number of negatives (the true count never exceeds it), then
      ``EMA(FN^) / (EMA(P) + EMA(FN^))``, clipped to [0, 0.5); steps without evidence (P + FN^ = 0) leave it unchanged.
      Averaging the counts before dividing pools the evidence of about ``1 / (1 - decay)`` steps, so the ratio's
      O(1/count) bias shrinks accordingly. The paper's EMA of per-step ratios keeps the per-step bias (low, with few
      positives a step) and takes in 0.5 at every step with no positive and no overturn (the prior alone).

    Both estimate ``FN / (TP + FN)`` when positives are true positives (rho0 ~ 0, the rule-based case); false positives
    in P bias them down. ``rho1`` is 0.0 before the first step with evidence.
    """

    def __init__(self, strong: Verifier, q: float = 0.1, decay: float = 0.9, seed: int = 0,
                 estimator: Rho1Estimator | str = Rho1Estimator.PAPER, alpha: float = APPEAL_PRIOR,
                 beta: float = APPEAL_PRIOR):
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < float(q) <= 1.0:
            raise ValueError(f"q must be in (0, 1], got q={q!r}")
        try:
            self.estimator = Rho1Estimator(estimator)
        except ValueError:
            raise ValueError(f"unknown rho1 estimator {estimator!r}; one of {[e.value for e in Rho1Estimator]}") from None
        appeal_rho1_estimate(0.0, 0.0, alpha, beta)  # checks the pseudocounts
        self.strong, self.q, self.seed, self.alpha, self.beta = strong, float(q), seed, float(alpha), float(beta)
        check_rate("decay", decay)
        self._fn, self._pos = Ema(decay), Ema(decay)  # pooled: moving averages of FN^ and of P
        self._ratio = Ema(decay)  # paper: the EMA of the per-step rho1^ (eq. 12)
        self._rng = np.random.default_rng(seed)
        self.stats = VerifyStats()
        self.steps = self.total_appeals = self.total_overturns = 0

    @property
    def rho1(self) -> float:
        """The smoothed estimate of rho1 (0.0 before any evidence); ``pooled`` is clipped to [0, 0.5)."""
        if self.estimator == Rho1Estimator.PAPER:
            return 0.0 if self._ratio.value is None else float(self._ratio.value)
        if self._fn.value is None:
            return 0.0
        value = self._fn.value / (self._pos.value + self._fn.value)
        return float(min(max(value, 0.0), np.nextafter(RHO1_CAP, 0.0)))

    @property
    def has_evidence(self) -> bool:
        """Whether the estimate has taken in a step (``pooled``: a step with positives or estimated FNs)."""
        return (self._ratio if self.estimator == Rho1Estimator.PAPER else self._fn).value is not None

    def update(self, rewards, completions, golds) -> dict:
        """Appeal a random fraction q of this step's negatives; returns ``rewards`` (a float tensor, each overturned
        negative set to 1: what "recovery" would train on), ``appealed`` (bool tensor), and the step's stats:
        ``appeals``, ``overturns``, ``negatives``, ``positives``, ``fn_hat``, ``rho1_raw`` (this step's estimate) and
        ``rho1`` (smoothed)."""
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
        if self.estimator == Rho1Estimator.PAPER:
            fn_hat = overturns / self.q
            rho1_raw = appeal_rho1_estimate(fn_hat, positives, self.alpha, self.beta)
            self._ratio.update(rho1_raw)
        else:
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
