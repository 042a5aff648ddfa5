"""Noisy-verifier corrections for GRPO: the noise channel, backward (PGBC) and forward (PGFC) corrections, the
baselines and scales of the paper's advantage construction, and the matched-control audit ("Reinforcement Learning
with Verifiable yet Noisy Rewards under Imperfect Verifiers", Cai, Wang, Liu, Liu, Niu, Sugiyama, arXiv 2510.00915).

Sources. The paper's full text (Sec. 3, Appendices A, B and E) was read for issue 17; the forms below are its
Algorithm 4 (Appendix B.6) and Sec. B.2-B.5, B.10. The derivations in this docstring are llmpost's own (issue 7) and
agree with the paper's Appendix A / B.4.

Noise channel (Definition 3.1). R* in {0, 1} is clean correctness, R~ the verifier's verdict, independent of the
completion given R*: ``P(R~=1 | R*=0) = rho0``, ``P(R~=0 | R*=1) = rho1``, ``rho0 + rho1 < 1``. Hence, with
``kappa = 1 - rho0 - rho1 > 0`` (Proposition 3.2),

    E[R~ | R*] = rho0 (1 - R*) + (1 - rho1) R* = rho0 + kappa R*.                                             (1)

Why the constant parts drop out of a policy gradient. For one prompt x, ``E_{y~pi}[grad log pi(y|x)] =
sum_y grad pi(y|x) = grad 1 = 0``, so any weight ``a R*(y) + b`` gives ``E_y[(a R* + b) grad log pi] = a grad J`` with
``J = E_y[R*]``. "In expectation" below always means over completions y ~ pi(.|x) and the channel noise.

Advantage construction (Algorithm 4, B.2-B.3). Per completion i of a prompt's group of K:
``a_i = (u_i - b_i) / s`` with ``u_i`` the corrected score (``corrected_scores``), ``b_i`` a baseline (0, a
historical EMA, or the leave-one-out mean ``leave_one_out_baseline``) and ``s > 0`` a fixed, EMA or rate-derived
scale (``channel_scale``), never the current group's std. The paper's defaults: PGBC with the leave-one-out baseline
(B.2), PGFC with ``b = 0`` and ``s_FC`` in {1 - rho1^, 1 - rho0^ - rho1^, 1} (B.3).

GRPO cancels affine corrections (B.4, Appendix A's caveat). GRPO's advantage ``(r - mean_g r) / (std_g r + eps)``
over a prompt's group is invariant (exactly at eps = 0) to ``r -> a r + b`` with ``a > 0``: the shift cancels in the
centring and the factor in the ratio. Both corrections are such maps of R~ (backward: ``a = 1/kappa``; forward:
``a = 1``, so mean-centring alone already reduces it to plain training). For a correction to act, normalise with
``AdvantageNorm.NONE`` -- tested in tests/test_noisy_grpo.py. ``BATCH`` is also invariant to one affine map applied to
the whole batch, i.e. it cancels fixed-rate corrections too. The same algebra shows what survives ``NONE``: with the
leave-one-out baseline and fixed rates, PGBC's advantages are exactly its matched control's (R~, same baseline and
scale) times ``1/kappa`` (cosine 1: a step-size change); PGFC with ``b = 0`` differs from its control (``b = 0``) by the
constant ``(1 - rho1)/s`` (REINFORCE with a fixed baseline). ``advantage_audit`` measures this on real batches (B.10).
The paper contradicts itself here: Table 7 lists the advantage estimator as "Group-normalized (GRPO)", while
Algorithm 3 / Appendix A / B.4 say group z-scoring cancels the corrections; llmpost follows B.2-B.4 (docs/noisy_grpo.md).
The appeals estimator (online rho1) is ``llmpost.rewards.appeals.AppealEstimator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llmpost.utils import StrEnum, check_rate

__all__ = ["RATE_SCALES", "AdvantageNorm", "Correction", "NoiseRates", "ScaleMode", "advantage_audit", "advantages",
           "backward_corrected_reward", "channel_scale", "corrected_scores", "forward_correction_weight",
           "leave_one_out_baseline"]


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
    said 0 (Proposition 3.4, B.3; it needs only rho1). Float in -> float, tensor -> tensor.

    Deviation from the paper: Algorithm 3 (Appendix A/B) feeds the pre-centring proxy ``u = R~ w = rho1 R~`` to the
    baseline instead; that is a positive rescaling of R~, which any standardisation cancels (the paper says so itself,
    "audit for binary equivalence"). llmpost uses ``w`` as B.3 and Algorithm 4 do.

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
    * ``none``: ``(r - baseline) / scale`` with a baseline (0, EMA, or ``leave_one_out_baseline``) and a positive
      scale (fixed, EMA or ``channel_scale``); keeps corrections (Algorithm 4 of arXiv 2510.00915).
    """

    NONE = "none"
    BATCH = "batch"
    GROUP = "group"


def _check_layout(scores: torch.Tensor, group_size: int, minimum: int = 1) -> None:
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < minimum:
        raise ValueError(f"group_size must be an int >= {minimum}, got group_size={group_size!r}")
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of group_size={group_size}")


def leave_one_out_baseline(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Leave-one-out baseline of arXiv 2510.00915, Appendix B.2 (PGBC's default):

        b_i = 1/(K - 1) * sum_{j != i, j in group(i)} s_j          (K = group_size)

    for 1-D ``scores`` laid out as consecutive groups of K completions per prompt. ``b_i`` does not depend on sample i,
    so ``E[(s_i - b_i) grad log pi_i] = E[s_i grad log pi_i]`` exactly (B.2); a group-mean baseline that includes i
    scales it by ``1 - 1/K`` instead (Proposition A.1). Identity used: ``b_i = (sum_group - s_i) / (K - 1)``.

    Deviation from the paper: B.2 sets ``b_i = 0`` for K = 1; here K < 2 is an error (a one-sample "group" has no
    other samples, and a silent zero baseline would change the method). ValueError naming ``group_size`` for
    K < 2 or a non-int K, and for scores that are not 1-D or do not split into groups of K.
    """
    _check_layout(scores, group_size, minimum=2)
    x = _float_tensor(scores).view(-1, group_size)
    return ((x.sum(dim=1, keepdim=True) - x) / (group_size - 1)).reshape(-1)


class ScaleMode(StrEnum):
    """The positive scale ``s`` of ``advantage_norm: none`` (``a = (u - b) / s``; arXiv 2510.00915, B.2-B.3).

    * ``fixed``: a configured constant (``advantage_scale``); ``ema``: an EMA of past batch stds (trainer state).
    * ``one_minus_rho1`` (``s_FC = 1 - rho1^``, B.3: the FN-dominant rule-checker regime, rho0 ~ 0),
      ``kappa`` (``s_FC = 1 - rho0^ - rho1^``, B.3: both rates known; the expected PGFC update is then the clean
      gradient itself), ``one`` (``s_FC = 1``): from the rates, :func:`channel_scale`.
    """

    FIXED = "fixed"
    EMA = "ema"
    ONE_MINUS_RHO1 = "one_minus_rho1"
    KAPPA = "kappa"
    ONE = "one"


RATE_SCALES = (ScaleMode.ONE_MINUS_RHO1, ScaleMode.KAPPA, ScaleMode.ONE)


def channel_scale(mode: ScaleMode | str, rates: NoiseRates) -> float:
    """PGFC's scale ``s_FC`` from the rates (arXiv 2510.00915, Appendix B.3):

        one_minus_rho1: 1 - rho1^        kappa: 1 - rho0^ - rho1^        one: 1

    With ``a_i = w_i / s_FC``, ``E[a_i G_i | x] = (1 - rho0 - rho1) / s_FC * grad J(theta | x)`` (B.3): ``kappa``
    restores the clean gradient's magnitude, ``one_minus_rho1`` approximately so when rho0 ~ 0, ``one`` leaves the
    ``kappa`` factor to the learning rate. Always > 0 (``NoiseRates`` keeps rho0 + rho1 < 1). ValueError for
    ``fixed``/``ema`` (they are not functions of the rates) or an unknown mode.
    """
    try:
        mode = ScaleMode(mode)
    except ValueError:
        raise ValueError(f"unknown scale mode {mode!r}; one of {[m.value for m in ScaleMode]}") from None
    match mode:
        case ScaleMode.ONE_MINUS_RHO1:
            return 1.0 - rates.rho1
        case ScaleMode.KAPPA:
            return rates.kappa
        case ScaleMode.ONE:
            return 1.0
    raise ValueError(f"scale mode {mode.value!r} is not a function of the noise rates; one of "
                     f"{[m.value for m in RATE_SCALES]}")


def _standardise(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` along the last dim, unbiased std as TRL's GRPO; a constant row gives zeros."""
    centred = x - x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True)
    return torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))


def advantages(scores: torch.Tensor, group_size: int, norm: AdvantageNorm | str, baseline: float | torch.Tensor = 0.0,
               scale: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """Advantages of 1-D ``scores`` laid out as consecutive groups of ``group_size`` completions per prompt.

    ``none``: ``(scores - baseline) / scale`` with ``baseline`` a float or a per-sample tensor of the scores' shape
    (e.g. ``leave_one_out_baseline``). ``eps`` (default 1e-4, TRL's) is added to the std for ``group``/``batch``; a
    zero-variance group (or batch) gets all-zero advantages. ``baseline`` and ``scale`` are used by ``none`` only.
    ValueError on a bad layout, ``group_size < 2`` for ``group``, fewer than 2 scores for ``batch``, ``scale <= 0``,
    ``eps < 0``, a baseline tensor of another shape, or an unknown norm.
    """
    try:
        norm = AdvantageNorm(norm)
    except ValueError:
        raise ValueError(f"unknown advantage norm {norm!r}; one of {[n.value for n in AdvantageNorm]}") from None
    _check_layout(scores, group_size)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and > 0, got scale={scale!r}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got eps={eps!r}")
    if isinstance(baseline, torch.Tensor) and baseline.shape != scores.shape:
        raise ValueError(f"baseline must be a float or have the scores' shape {tuple(scores.shape)}, got "
                         f"{tuple(baseline.shape)}")
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


def advantage_audit(a: torch.Tensor, a_control: torch.Tensor, lengths: torch.Tensor | None = None) -> dict[str, float]:
    """The advantage-level audit of arXiv 2510.00915, Appendix B.10: how far a corrected run's advantages ``a`` are
    from those of its matched uncorrected control ``a_control`` (same rollouts, same baseline and scale convention,
    correction none; B.5). With ``n_i`` the token count of completion i (``lengths``; all 1 when None), i.e. over the
    token-level advantages ``A_{i,t} = a_i`` that GRPO broadcasts:

        mean_abs_diff = sum_i n_i |a_i - c_i| / sum_i n_i          max_abs_diff = max_{i: n_i > 0} |a_i - c_i|
        cosine        = sum_i n_i a_i c_i / sqrt(sum_i n_i a_i^2 * sum_i n_i c_i^2)

    Zero differences with cosine 1 mean the correction does not change the optimisation signal on that batch (B.10).
    Conventions where the paper's cosine is 0/0: both vectors zero -> 1.0 (identical), exactly one zero -> 0.0.
    Computed in float64. ValueError for shapes that differ or are not 1-D, negative lengths, or no token at all.
    """
    if a.dim() != 1 or a.shape != a_control.shape:
        raise ValueError(f"advantages must be two 1-D tensors of one shape, got {tuple(a.shape)} and "
                         f"{tuple(a_control.shape)}")
    x, c = a.detach().double().cpu(), a_control.detach().double().cpu()
    n = torch.ones_like(x) if lengths is None else torch.as_tensor(lengths).detach().double().cpu().reshape(-1)
    if n.shape != x.shape or (n < 0).any() or n.sum() <= 0:
        raise ValueError(f"lengths must be {x.numel()} token counts >= 0, not all 0")
    diff = (x - c).abs()
    norms = (n * x * x).sum().sqrt(), (n * c * c).sum().sqrt()
    if norms[0] == 0 and norms[1] == 0:
        cosine = 1.0
    elif norms[0] == 0 or norms[1] == 0:
        cosine = 0.0
    else:
        cosine = ((n * x * c).sum() / (norms[0] * norms[1])).item()
    return {"mean_abs_diff": ((n * diff).sum() / n.sum()).item(), "max_abs_diff": diff[n > 0].max().item(),
            "cosine": cosine}
