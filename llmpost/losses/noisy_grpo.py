"""Noisy-verifier corrections for GRPO: the noise channel, backward (PGBC) and forward (PGFC) corrections, and the
reward-to-advantage step ("Reinforcement Learning with Verifiable yet Noisy Rewards under Imperfect Verifiers",
Cai, Wang, Liu, Liu, Niu, Sugiyama, arXiv 2510.00915).

Source of the formulas. Only the paper's abstract (arxiv.org/abs/2510.00915, the v2-v4 HTML abstracts) and secondary
summaries could be read here, not its method section. The abstract fixes: the verifier is a stochastic reward channel
with asymmetric rates rho0 (FP rate) and rho1 (FN rate); a *backward* correction de-biases the binary reward into an
unbiased surrogate; a *forward* correction reweights score-function terms so the expected update aligns with the
clean gradient and needs only rho1; both are hooks in a GRPO pipeline; an appeals mechanism (re-checking rule-based
negatives with a stronger verifier) estimates rho1 online. The exact forms below are those of issue 7, derived here.

Noise channel. R* in {0, 1} is clean correctness, R~ the verifier's verdict, independent of the completion given R*:
``P(R~=1 | R*=0) = rho0``, ``P(R~=0 | R*=1) = rho1``, ``rho0 + rho1 < 1``. Hence, with ``kappa = 1 - rho0 - rho1 > 0``,

    E[R~ | R*] = rho0 (1 - R*) + (1 - rho1) R* = rho0 + kappa R*.                                             (1)

Why the constant parts drop out of a policy gradient. For one prompt x, ``E_{y~pi}[grad log pi(y|x)] =
sum_y grad pi(y|x) = grad 1 = 0``, so any weight ``a R*(y) + b`` gives ``E_y[(a R* + b) grad log pi] = a grad J`` with
``J = E_y[R*]``. "In expectation" below always means over completions y ~ pi(.|x) and the channel noise.

GRPO cancels affine corrections. GRPO's advantage ``(r - mean_g r) / (std_g r + eps)`` over a prompt's group is
invariant (exactly at eps = 0) to ``r -> a r + b`` with ``a > 0``: the shift cancels in the centring and the factor in
the ratio. Both corrections are such maps of R~ (backward: ``a = 1/kappa``; forward: ``a = 1``, so mean-centring alone
already reduces it to plain training). For a correction to act, normalise with ``AdvantageNorm.NONE`` (a fixed or EMA
baseline and scale, ``Ema``) -- tested in tests/test_noisy_grpo.py. ``BATCH`` is also invariant to one affine map
applied to the whole batch, i.e. it cancels fixed-rate corrections too; it differs from ``GROUP`` only in which
rewards share a mean and a scale. The appeals estimator (online rho1) is ``llmpost.rewards.appeals.AppealEstimator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llmpost.utils import StrEnum, check_rate

__all__ = ["AdvantageNorm", "Correction", "NoiseRates", "advantages", "backward_corrected_reward", "corrected_scores",
           "forward_correction_weight"]


@dataclass(frozen=True)
class NoiseRates:
    """Verifier noise rates: ``rho0 = P(R~=1 | R*=0)`` (false positives), ``rho1 = P(R~=0 | R*=1)`` (false
    negatives); each in [0, 1) and ``rho0 + rho1 < 1`` (otherwise the verdict carries no or inverted signal)."""

    rho0: float = 0.0
    rho1: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "rho0", check_rate("rho0", self.rho0))
        object.__setattr__(self, "rho1", check_rate("rho1", self.rho1))
        if not self.rho0 + self.rho1 < 1.0:
            raise ValueError(f"rho0 + rho1 must be < 1, got rho0={self.rho0} + rho1={self.rho1}")

    @property
    def kappa(self) -> float:
        """``1 - rho0 - rho1`` (> 0): the slope of ``E[R~ | R*]`` in R*, eq. (1) of the module docstring."""
        return 1.0 - self.rho0 - self.rho1


def _float_tensor(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def backward_corrected_reward(reward, rho0: float, rho1: float):
    """PGBC surrogate ``R^ = (R~ - rho0) / (1 - rho0 - rho1)``, elementwise; a float in gives a float out, a tensor a
    floating tensor. Unbiased: by eq. (1), ``E[R^ | R*] = (rho0 + kappa R* - rho0) / kappa = R*``, so
    ``E[R^ grad log pi] = grad J`` exactly. Affine in R~ with slope ``1/kappa > 0``: R~=1 -> (1-rho0)/kappa > 1,
    R~=0 -> -rho0/kappa <= 0 (its variance grows as kappa -> 0)."""
    rates = NoiseRates(rho0, rho1)
    if isinstance(reward, torch.Tensor):
        return (_float_tensor(reward) - rates.rho0) / rates.kappa
    return (float(reward) - rates.rho0) / rates.kappa


def forward_correction_weight(reward, rho1: float):
    """PGFC score-function weight ``w = R~ - (1 - rho1)``: ``rho1`` when the verifier said 1, ``rho1 - 1`` when it
    said 0 (issue 7's form, consistent with the abstract: it needs only rho1). Float in -> float, tensor -> tensor.

    Derivation: by eq. (1), ``E[w | R*] = rho0 + kappa R* - 1 + rho1 = kappa (R* - 1)``, an affine function of R*
    with slope ``kappa = 1 - rho0 - rho1`` and constant ``-kappa``. The constant multiplies ``E_y[grad log pi] = 0``,
    so ``E[w grad log pi] = kappa grad J``: the clean gradient direction, scaled by kappa > 0 (whose value, and so
    rho0, is not needed). In expectation a truly correct completion gets weight 0 and a wrong one ``-kappa``.
    Note that ``R~ - c`` for *any* constant c has the same expectation (the constant again drops out), so the choice
    ``c = 1 - rho1`` matters for the per-sample variance and for un-centred (``AdvantageNorm.NONE``) updates, not for
    the expected direction; under group centring it is exactly plain training.
    """
    r1 = check_rate("rho1", rho1)
    if isinstance(reward, torch.Tensor):
        return _float_tensor(reward) - (1.0 - r1)
    return float(reward) - (1.0 - r1)


class Correction(StrEnum):
    """How verifier rewards become scores: ``none`` (R~), ``backward`` (PGBC, needs rho0 and rho1), ``forward``
    (PGFC weights, needs only rho1)."""

    NONE = "none"
    BACKWARD = "backward"
    FORWARD = "forward"


def corrected_scores(reward, correction: Correction | str, rates: NoiseRates):
    """Dispatch on ``Correction``: the per-completion scores fed to ``advantages``. Unknown names raise ValueError."""
    try:
        correction = Correction(correction)
    except ValueError:
        raise ValueError(f"unknown correction {correction!r}; one of {[c.value for c in Correction]}") from None
    match correction:
        case Correction.NONE:
            return _float_tensor(reward) if isinstance(reward, torch.Tensor) else float(reward)
        case Correction.BACKWARD:
            return backward_corrected_reward(reward, rates.rho0, rates.rho1)
        case Correction.FORWARD:
            return forward_correction_weight(reward, rates.rho1)
    raise ValueError(f"unknown correction {correction!r}")  # pragma: no cover


class AdvantageNorm(StrEnum):
    """Reward-to-advantage normalisation.

    * ``group`` (GRPO, TRL's default): ``(r - group mean) / (group std + eps)`` per prompt; cancels both corrections.
    * ``batch``: the same over the whole batch; cancels a correction with fixed rates, like ``group``.
    * ``none``: ``(r - baseline) / scale`` with a fixed (or EMA, see ``Ema``) baseline and scale; keeps corrections.
    """

    NONE = "none"
    BATCH = "batch"
    GROUP = "group"


def _standardise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` along the last dim, unbiased std as TRL's GRPO; a constant row gives zeros."""
    centred = x - x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True)
    return torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))


def advantages(scores: torch.Tensor, group_size: int, norm: AdvantageNorm | str, baseline: float = 0.0,
               scale: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """Advantages of 1-D ``scores`` laid out as consecutive groups of ``group_size`` completions per prompt.

    ``eps`` (default 1e-4, TRL's) is added to the std for ``group``/``batch``; a zero-variance group (or batch)
    gets all-zero advantages. ``baseline`` and ``scale`` are used by ``none`` only. ValueError on a bad layout,
    ``group_size < 2`` for ``group``, fewer than 2 scores for ``batch``, ``scale <= 0``, ``eps < 0`` or an unknown norm.
    """
    try:
        norm = AdvantageNorm(norm)
    except ValueError:
        raise ValueError(f"unknown advantage norm {norm!r}; one of {[n.value for n in AdvantageNorm]}") from None
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got group_size={group_size!r}")
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of group_size={group_size}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and > 0, got scale={scale!r}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got eps={eps!r}")
    scores = _float_tensor(scores)
    match norm:
        case AdvantageNorm.NONE:
            return (scores - baseline) / scale
        case AdvantageNorm.BATCH:
            if scores.numel() < 2:
                raise ValueError("batch normalisation needs at least 2 scores")
            return _standardise(scores, eps)
        case AdvantageNorm.GROUP:
            if group_size < 2:
                raise ValueError(f"group normalisation needs group_size >= 2, got group_size={group_size}")
            return _standardise(scores.view(-1, group_size), eps).reshape(-1)
    raise ValueError(f"unknown advantage norm {norm!r}")  # pragma: no cover


