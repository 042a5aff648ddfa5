"""The appeals estimator of the false-negative rate rho1 (arXiv 2510.00915, Sec. 3.3): a stronger verifier re-checks a
random fraction of the negatives, and an online, smoothed estimate of rho1 follows."""

from __future__ import annotations

import numpy as np
import torch

from llmpost.rewards.verifiers import RHO1_CAP, Verifier, VerifyStats, safe_verify
from llmpost.utils import Ema


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
