"""Noisy-verifier corrections (arXiv 2510.00915; issue 7 sections 1-3, issue 17 section 1): noise channel, PGBC/PGFC,
the leave-one-out baseline, the PGFC scales, advantage normalisation, the matched-control audit, verifiers and the
appeals estimators (the paper's and the pooled one). Pure (no model), fixed seeds.

Statistical tests assert a sample mean lies within Z = 5 standard errors of its derived expectation, the standard
error computed here from the same sample, plus 1e-6 for float32 rounding when a sample is constant (two-sided
false-alarm probability ~6e-7 per check under normality)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmpost.losses.noisy_grpo import (
    AdvantageNorm,
    Correction,
    NoiseRates,
    ScaleMode,
    advantage_audit,
    advantages,
    backward_corrected_reward,
    channel_scale,
    corrected_scores,
    forward_correction_weight,
    leave_one_out_baseline,
)
from llmpost.rewards.appeals import AppealEstimator, Rho1Estimator, appeal_rho1_estimate
from llmpost.rewards.noise import NoisyVerifier, noise_channel
from llmpost.rewards.verifiers import VerifyStats, math_verify_verifier, rule_based_verifier, safe_verify
from llmpost.utils import Ema

Z = 5.0
RATES = [NoiseRates(0.0, 0.3), NoiseRates(0.1, 0.2), NoiseRates(0.25, 0.45)]


def within(samples: np.ndarray, expected: float) -> tuple[bool, str]:
    mean, se = samples.mean(), samples.std(ddof=1) / math.sqrt(len(samples))
    return abs(mean - expected) <= Z * se + 1e-6, f"mean {mean:.5f} vs {expected:.5f} (Z*se = {Z * se:.5f})"


# --------------------------------------------------------------------------------------------- noise channel + PGBC
@pytest.mark.parametrize("rates", RATES, ids=str)
def test_backward_correction_is_unbiased(rates):
    rng = np.random.default_rng(0)
    clean = (rng.random(200_000) < 0.37).astype(np.int64)
    noisy = noise_channel(clean, rates, rng)
    ok, msg = within(backward_corrected_reward(torch.as_tensor(noisy), rates.rho0, rates.rho1).numpy() - clean, 0.0)
    assert ok, msg  # E[R^ - R*] = 0
    biased, _ = within((noisy - clean).astype(float), 0.0)
    assert not biased  # power check: the uncorrected reward is detectably biased at these rates


@pytest.mark.parametrize("rates", RATES, ids=str)
def test_noise_channel_flip_rates(rates):
    rng = np.random.default_rng(1)
    clean = (rng.random(100_000) < 0.5).astype(np.int64)
    noisy = noise_channel(torch.as_tensor(clean), rates, rng).numpy()
    for ok, msg in (within(1.0 - noisy[clean == 1], rates.rho1), within(noisy[clean == 0].astype(float), rates.rho0)):
        assert ok, msg


# ---------------------------------------------------------------------------------------------------------- PGFC
def test_forward_weight_values():
    assert forward_correction_weight(1, 0.3) == pytest.approx(0.3)
    assert forward_correction_weight(0, 0.3) == pytest.approx(-0.7)
    w = forward_correction_weight(torch.tensor([1, 0]), 0.2)
    assert w.dtype == torch.get_default_dtype() and torch.allclose(w, torch.tensor([0.2, -0.8]))


@pytest.mark.parametrize("rates", RATES, ids=str)
def test_forward_weight_conditional_means(rates):
    """E[w | R*] = kappa (R* - 1): 0 for truly correct completions, -kappa for wrong ones."""
    rng = np.random.default_rng(2)
    clean = (rng.random(200_000) < 0.5).astype(np.int64)
    w = forward_correction_weight(torch.as_tensor(noise_channel(clean, rates, rng)), rates.rho1).numpy()
    for r_star in (0, 1):
        ok, msg = within(w[clean == r_star], rates.kappa * (r_star - 1))
        assert ok, f"R*={r_star}: {msg}"


@pytest.mark.parametrize("rates", RATES, ids=str)
def test_forward_policy_gradient_is_kappa_times_clean(rates):
    """Softmax bandit over K completions: the mean of w * grad log pi(y) over y ~ pi and channel noise equals
    kappa * grad J (J = E_pi[R*]) coordinate-wise: the constant part of E[w | R*] multiplies E[grad log pi] = 0."""
    rng = np.random.default_rng(3)
    logits = np.array([0.3, -0.5, 1.0, 0.0, -1.2])
    pi = np.exp(logits) / np.exp(logits).sum()
    r_star = np.array([1, 0, 0, 1, 0])
    clean_grad = (pi * r_star)[:, None] * (np.eye(5) - pi)  # sum_y pi_y R*_y grad log pi(y), grad log pi(y) = e_y - pi
    clean_grad = clean_grad.sum(0)
    y = rng.choice(5, size=200_000, p=pi)
    w = forward_correction_weight(torch.as_tensor(noise_channel(r_star[y], rates, rng)), rates.rho1).numpy()
    samples = w[:, None] * (np.eye(5)[y] - pi)
    for k in range(5):
        ok, msg = within(samples[:, k], rates.kappa * clean_grad[k])
        assert ok, f"coordinate {k}: {msg}"


# --------------------------------------------------------------------------------------- dispatch + advantages
def test_corrected_scores_dispatch():
    rates = NoiseRates(0.1, 0.3)
    r = torch.tensor([1, 0, 1])
    assert torch.equal(corrected_scores(r, "none", rates), r.float())
    assert torch.allclose(corrected_scores(r, Correction.BACKWARD, rates), (r - 0.1) / 0.6)
    assert torch.allclose(corrected_scores(r, "forward", rates), r - 0.7)
    assert corrected_scores(1, "backward", rates) == pytest.approx(0.9 / 0.6)
    with pytest.raises(ValueError, match="unknown correction 'sideways'"):
        corrected_scores(r, "sideways", rates)


def _noisy_groups(rates, groups=16, size=8, seed=4):
    rng = np.random.default_rng(seed)
    clean = (rng.random(groups * size) < 0.5).astype(np.int64)
    noisy = torch.as_tensor(noise_channel(clean, rates, rng))
    noisy[:size] = 1  # one constant group: zero variance
    return noisy


@pytest.mark.parametrize("norm", ["group", "batch"])
def test_standardisation_cancels_corrections(norm):
    rates = NoiseRates(0.1, 0.3)
    noisy = _noisy_groups(rates)
    plain = advantages(corrected_scores(noisy, "none", rates), 8, norm, eps=0.0)
    for correction in ("backward", "forward"):
        adv = advantages(corrected_scores(noisy, correction, rates), 8, norm, eps=0.0)
        torch.testing.assert_close(adv, plain)  # positive-slope affine maps of R~ are removed exactly at eps = 0
        adv = advantages(corrected_scores(noisy, correction, rates), 8, norm)  # TRL's eps = 1e-4: nearly
        torch.testing.assert_close(adv, plain, atol=1e-3, rtol=1e-3)
    if norm == "group":
        assert (plain[:8] == 0).all()  # the constant group has no signal


def test_fixed_baseline_keeps_corrections():
    rates = NoiseRates(0.1, 0.3)
    noisy = _noisy_groups(rates)
    plain = advantages(corrected_scores(noisy, "none", rates), 8, "none", baseline=0.5)
    backward = advantages(corrected_scores(noisy, "backward", rates), 8, "none", baseline=0.5)
    forward = advantages(corrected_scores(noisy, "forward", rates), 8, "none", baseline=0.5)
    assert not torch.allclose(backward, plain) and not torch.allclose(forward, plain)
    torch.testing.assert_close(backward, (noisy.float() - 0.1) / 0.6 - 0.5)
    torch.testing.assert_close(advantages(noisy, 8, AdvantageNorm.NONE, baseline=0.2, scale=2.0),
                               (noisy.float() - 0.2) / 2.0)


def test_group_advantages_match_grpo_formula():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    g = r.view(2, 4)
    expected = ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).reshape(-1)
    torch.testing.assert_close(advantages(r, 4, "group"), expected)


# ------------------------------------------------------------------------- leave-one-out baseline, PGFC scales, audit
def test_leave_one_out_baseline_by_hand():
    # group 1: [1, 0, 0, 1] (sum 2): b = [(2-1)/3, 2/3, 2/3, 1/3]; group 2: [1, 1, 1, 0] (sum 3): b = [2/3, 2/3, 2/3, 1]
    s = torch.tensor([1, 0, 0, 1, 1, 1, 1, 0])
    b = leave_one_out_baseline(s, 4)
    torch.testing.assert_close(b, torch.tensor([1 / 3, 2 / 3, 2 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 1.0]))
    assert b.dtype == torch.get_default_dtype()
    torch.testing.assert_close(leave_one_out_baseline(torch.tensor([0.5, -1.5]), 2), torch.tensor([-1.5, 0.5]))
    # identity: s_i - b_i = K / (K - 1) * (s_i - group mean)
    x = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.1, 0.0], dtype=torch.float64)
    centred = (x.view(2, 3) - x.view(2, 3).mean(1, keepdim=True)).reshape(-1)
    torch.testing.assert_close(x - leave_one_out_baseline(x, 3), 1.5 * centred)
    # as the baseline of advantage_norm none: (s - b) / scale
    torch.testing.assert_close(advantages(s, 4, "none", baseline=b, scale=2.0), (s - b) / 2.0)


@pytest.mark.parametrize("scores,group_size,match", [(torch.zeros(4), 1, "group_size must be an int >= 2"),
                                                     (torch.zeros(4), 0, "group_size"),
                                                     (torch.zeros(4), True, "group_size"),
                                                     (torch.zeros(4), 2.0, "group_size"),
                                                     (torch.zeros(6), 4, "groups of group_size=4"),
                                                     (torch.zeros(2, 4), 4, "1-D")])
def test_leave_one_out_baseline_errors_name_group_size(scores, group_size, match):
    with pytest.raises(ValueError, match=match):
        leave_one_out_baseline(scores, group_size)


def test_leave_one_out_baseline_keeps_the_expected_update():
    """Softmax bandit, groups of K = 4: the mean of (s_i - b_i) grad log pi(y_i) over groups equals E[s grad log pi]
    (B.2: b_i is independent of y_i), while the group-mean baseline gives (1 - 1/K) times it (Proposition A.1)."""
    rng = np.random.default_rng(13)
    logits = np.array([0.3, -0.5, 1.0, 0.0, -1.2])
    pi = np.exp(logits) / np.exp(logits).sum()
    r_star = np.array([1.0, 0.0, 0.0, 1.0, 0.0])
    target = ((pi * r_star)[:, None] * (np.eye(5) - pi)).sum(0)  # E[R* grad log pi]
    k, groups = 4, 100_000
    y = rng.choice(5, size=k * groups, p=pi)
    s = torch.as_tensor(r_star[y])
    score_fn = np.eye(5)[y] - pi
    loo = (s - leave_one_out_baseline(s, k)).numpy()[:, None] * score_fn
    mean_b = (s.view(-1, k) - s.view(-1, k).mean(1, keepdim=True)).reshape(-1).numpy()[:, None] * score_fn
    for j in range(5):  # per group: the mean over its K samples, so the samples of the test are independent
        ok, msg = within(loo[:, j].reshape(-1, k).mean(1), target[j])
        assert ok, f"loo, coordinate {j}: {msg}"
        ok, msg = within(mean_b[:, j].reshape(-1, k).mean(1), (1 - 1 / k) * target[j])
        assert ok, f"group mean, coordinate {j}: {msg}"


def test_channel_scale_by_hand():
    rates = NoiseRates(0.1, 0.2)
    assert channel_scale("one_minus_rho1", rates) == pytest.approx(0.8)
    assert channel_scale(ScaleMode.KAPPA, rates) == pytest.approx(0.7)
    assert channel_scale("one", rates) == 1.0
    assert channel_scale("kappa", NoiseRates(0.0, 0.3)) == channel_scale("one_minus_rho1", NoiseRates(0.0, 0.3))
    for mode, match in (("fixed", "not a function of the noise rates"), ("ema", "not a function"),
                        ("std", "unknown scale mode 'std'")):
        with pytest.raises(ValueError, match=match):
            channel_scale(mode, rates)


@pytest.mark.parametrize("rates", RATES, ids=str)
def test_forward_with_kappa_scale_is_the_clean_gradient(rates):
    """B.3: with s_FC = 1 - rho0 - rho1, E[(w / s_FC) grad log pi] = grad J exactly (coordinate-wise, softmax bandit)."""
    rng = np.random.default_rng(14)
    logits = np.array([0.3, -0.5, 1.0, 0.0, -1.2])
    pi = np.exp(logits) / np.exp(logits).sum()
    r_star = np.array([1, 0, 0, 1, 0])
    clean_grad = ((pi * r_star)[:, None] * (np.eye(5) - pi)).sum(0)
    y = rng.choice(5, size=200_000, p=pi)
    noisy = torch.as_tensor(noise_channel(r_star[y], rates, rng))
    a = advantages(corrected_scores(noisy, "forward", rates), 1, "none", scale=channel_scale("kappa", rates)).numpy()
    samples = a[:, None] * (np.eye(5)[y] - pi)
    for k in range(5):
        ok, msg = within(samples[:, k], clean_grad[k])
        assert ok, f"coordinate {k}: {msg}"


def test_advantage_audit_by_hand():
    a, c = torch.tensor([1.0, -1.0, 2.0]), torch.tensor([1.0, 0.0, 0.0])
    # |a - c| = [0, 1, 2]: mean 1, max 2; cosine = <a, c> / (|a| |c|) = 1 / sqrt(6)
    assert advantage_audit(a, c) == pytest.approx({"mean_abs_diff": 1.0, "max_abs_diff": 2.0, "cosine": 6 ** -0.5})
    # token counts [1, 2, 1] (A_{i,t} = a_i broadcast): mean (0 + 2*1 + 2) / 4 = 1, cosine 1 / sqrt(1 + 2 + 4)
    got = advantage_audit(a, c, lengths=torch.tensor([1, 2, 1]))
    assert got == pytest.approx({"mean_abs_diff": 1.0, "max_abs_diff": 2.0, "cosine": 7 ** -0.5})
    # an empty completion (0 tokens) does not count, not even for the max
    assert advantage_audit(a, c, lengths=[1, 1, 0]) == pytest.approx({"mean_abs_diff": 0.5, "max_abs_diff": 1.0,
                                                                     "cosine": 2 ** -0.5})
    assert advantage_audit(torch.zeros(2), torch.zeros(2))["cosine"] == 1.0  # identical (0/0): 1
    assert advantage_audit(torch.ones(2), torch.zeros(2))["cosine"] == 0.0  # one has no direction: 0
    assert advantage_audit(-a, a)["cosine"] == pytest.approx(-1.0)
    for args, match in (((torch.zeros(2), torch.zeros(3)), "one shape"), ((torch.zeros(2, 2), torch.zeros(2, 2)), "1-D"),
                        ((torch.zeros(2), torch.zeros(2), [0, 0]), "not all 0"),
                        ((torch.zeros(2), torch.zeros(2), [1, -1]), "token counts")):
        with pytest.raises(ValueError, match=match):
            advantage_audit(*args)


def test_audit_sees_cancellation_and_the_loo_rescaling():
    """B.10's sanity check: u = a R~ + b through group z-scoring gives (near) zero difference from the uncorrected
    noisy control; with the leave-one-out baseline and a fixed scale, PGBC is its matched control times 1/kappa:
    cosine 1 and mean |difference| = (1/kappa - 1) mean |control| (a step size, not a direction)."""
    rates = NoiseRates(0.1, 0.2)
    noisy = _noisy_groups(rates)
    control = advantages(corrected_scores(noisy, "none", rates), 8, "group")
    for correction in ("backward", "forward"):
        audit = advantage_audit(advantages(corrected_scores(noisy, correction, rates), 8, "group"), control)
        assert audit["max_abs_diff"] < 1e-3 and audit["cosine"] == pytest.approx(1.0, abs=1e-9)
    scores = corrected_scores(noisy, "backward", rates)
    raw = corrected_scores(noisy, "none", rates)
    pgbc = advantages(scores, 8, "none", baseline=leave_one_out_baseline(scores, 8))
    loo_control = advantages(raw, 8, "none", baseline=leave_one_out_baseline(raw, 8))
    audit = advantage_audit(pgbc, loo_control)
    assert audit["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert audit["mean_abs_diff"] == pytest.approx((1 / rates.kappa - 1) * loo_control.abs().mean().item(), rel=1e-5)
    # PGFC with b = 0 against its b = 0 control: a constant shift of (1 - rho1) / s, cosine < 1
    fc = advantage_audit(advantages(corrected_scores(noisy, "forward", rates), 8, "none"),
                         advantages(raw, 8, "none"))
    assert fc["max_abs_diff"] == pytest.approx(0.8) and fc["mean_abs_diff"] == pytest.approx(0.8) and fc["cosine"] < 1


def test_ema():
    ema = Ema(0.5)
    assert ema.value is None and ema.update(4.0) == 4.0 and ema.update(0.0) == 2.0
    assert Ema(0.0).update(3.0) == 3.0


@settings(max_examples=50, deadline=None)
@given(st.floats(0, 0.49), st.floats(0, 0.49), st.lists(st.floats(-0.5, 1.5), min_size=2, max_size=20))
def test_backward_is_positive_slope_affine(rho0, rho1, xs):
    rates = NoiseRates(rho0, rho1)
    r = torch.tensor(xs, dtype=torch.float64)
    out = backward_corrected_reward(r, rho0, rho1)
    torch.testing.assert_close(out, r / rates.kappa - rho0 / rates.kappa)
    order = torch.argsort(r)
    assert (out[order].diff() >= 0).all()
    assert backward_corrected_reward(xs[0], rho0, rho1) == pytest.approx(out[0].item())


@settings(max_examples=50, deadline=None)
@given(st.floats(0.0, 0.999), st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=30))
def test_ema_stays_in_range(decay, xs):
    ema = Ema(decay)
    for x in xs:
        v = ema.update(x)
    assert min(xs) - 1e-9 * (1 + abs(min(xs))) <= v <= max(xs) + 1e-9 * (1 + abs(max(xs)))


# ----------------------------------------------------------------------------------------------------- verifiers
@pytest.mark.parametrize("completion,gold", [("so \\boxed{12/36}", "1/3"), ("\\boxed{\\frac{1}{2}}", "0.5"),
                                             ("\\boxed{\\dfrac{1}{3}}", "\\frac{1}{3}"), ("\\boxed{0.50}", "0.5")])
def test_rule_based_false_negatives(completion, gold):
    assert rule_based_verifier(completion, gold) == 0


@pytest.mark.parametrize("completion,gold", [("\\boxed{ \\left( 1, 2 \\right) }", "(1,2)"), ("\\boxed{5.}", "5"),
                                             ("a \\boxed{1} then \\boxed{\\!$7$}", "7"), ("\\boxed{x^2}", " x^2 ")])
def test_rule_based_normalisation(completion, gold):
    assert rule_based_verifier(completion, gold) == 1


def test_rule_based_rejects_junk():
    assert rule_based_verifier("no box 7", "7") == 0 and rule_based_verifier("\\boxed{7", "7") == 0
    assert rule_based_verifier(None, "7") == 0 and rule_based_verifier.name == "rule_based"


def test_math_verify_accepts_the_rule_based_false_negatives():
    assert math_verify_verifier("\\boxed{12/36}", "1/3") == 1
    assert math_verify_verifier("\\boxed{\\frac{1}{2}}", "0.5") == 1
    assert math_verify_verifier("\\boxed{2}", "3") == 0 and math_verify_verifier(None, "3") == 0


def test_safe_verify():
    stats = VerifyStats()

    def boom(c, g):
        raise RuntimeError("parser crashed")

    called = []
    assert safe_verify(boom, "\\boxed{1}", "1", stats) == 0
    assert safe_verify(lambda c, g: 2, "x", "1", stats) == 0
    assert safe_verify(lambda c, g: None, "x", "1", stats) == 0
    assert safe_verify(lambda c, g: called.append(c) or 1, "  ", "1", stats) == 0 and not called
    assert safe_verify(lambda c, g: True, "x", "1", stats) == 1
    assert safe_verify(rule_based_verifier, "", "1") == 0
    assert stats == VerifyStats(calls=5, empty=1, errors=3)


def _oracle(completion, gold):  # the clean reward of the synthetic tests: "\boxed{1}" is correct
    return int(completion == "\\boxed{1}")


def test_noisy_verifier_reproducible_and_rates():
    clean = (np.random.default_rng(5).random(20_000) < 0.5).astype(int)
    completions = ["\\boxed{1}" if c else "\\boxed{0}" for c in clean]
    runs = []
    for seed in (7, 7, 8):
        v = NoisyVerifier(_oracle, rho0=0.1, rho1=0.3, seed=seed)
        runs.append(np.array([v(c, "1") for c in completions]))
    assert (runs[0] == runs[1]).all() and not (runs[0] == runs[2]).all()
    assert v.calls == 20_000 and v.flips_to_0 + v.flips_to_1 == int((runs[2] != clean).sum())
    for ok, msg in (within(1.0 - runs[0][clean == 1], 0.3), within(runs[0][clean == 0].astype(float), 0.1)):
        assert ok, msg
    assert "rho1=0.3" in v.name


# ------------------------------------------------------------------------------------------------------- appeals
def _step(rng, n=256, p=0.5):
    clean = (rng.random(n) < p).astype(int)
    return clean, ["\\boxed{1}" if c else "\\boxed{0}" for c in clean], ["1"] * n


def test_appeals_converge_to_injected_rho1():
    rho1, decay = 0.3, 0.9
    rng = np.random.default_rng(6)
    rule = NoisyVerifier(rule_based_verifier, rho0=0.0, rho1=rho1, seed=9)
    est = AppealEstimator(rule_based_verifier, q=0.5, decay=decay, seed=10, estimator="pooled")
    raw = []
    for _ in range(100):
        clean, completions, golds = _step(rng)
        rewards = [rule(c, g) for c, g in zip(completions, golds)]
        out = est.update(rewards, completions, golds)
        raw.append(out["rho1_raw"])
        # the clean strong checker only overturns true false negatives, and never touches positives
        assert (out["rewards"].numpy() <= clean).all() and (out["rewards"].numpy() >= rewards).all()
        assert out["overturns"] == int((out["rewards"].numpy() != np.array(rewards)).sum()) <= out["appeals"]
    raw = np.array(raw)
    # Per-step ratio bias is O(1/n) ~ 1e-3 here, well below Z*se ~ 0.02 for 100 steps of 256 completions.
    ok, msg = within(raw, rho1)
    assert ok, msg
    ema_sd = raw.std(ddof=1) * math.sqrt((1 - decay) / (1 + decay))  # stationary sd of an EMA of iid values
    assert abs(est.rho1 - rho1) <= Z * ema_sd, (est.rho1, ema_sd)
    assert est.steps == 100 and est.total_appeals > 0


def test_appeals_small_batches_pool_counts_not_ratios():
    """~8 positives a step (32 completions, 25% correct): a per-step ratio FN^ / (P + FN^) is biased low by O(1/count),
    and so is the paper's EMA of per-step ratios (eqs. 11-12); the pooled ratio of moving averages of the counts is not
    (it pools ~1 / (1 - decay) steps). Both estimators see the same appeals (same seed, same draws)."""
    rho1, decay, steps = 0.3, 0.95, 2000
    rng = np.random.default_rng(21)
    rule = NoisyVerifier(rule_based_verifier, rho0=0.0, rho1=rho1, seed=22)
    est = AppealEstimator(rule_based_verifier, q=0.5, decay=decay, seed=23, estimator="pooled")
    paper = AppealEstimator(rule_based_verifier, q=0.5, decay=decay, seed=23, estimator="paper")
    raw, pooled, smoothed = [], [], []
    for _ in range(steps):
        clean, completions, golds = _step(rng, n=32, p=0.25)
        rewards = [rule(c, g) for c, g in zip(completions, golds)]
        out, out_paper = est.update(rewards, completions, golds), paper.update(rewards, completions, golds)
        assert out["overturns"] == out_paper["overturns"]  # the same appeals
        raw.append(out["rho1_raw"])
        pooled.append(out["rho1"])
        smoothed.append(out_paper["rho1"])
    raw, pooled, smoothed = np.array(raw), np.array(pooled[100:]), np.array(smoothed[100:])  # after the EMAs fill
    assert raw.mean() < rho1 - 0.02  # the per-step ratio's bias, visible at this batch size
    assert smoothed.mean() < rho1 - 0.02  # the paper's EMA of ratios keeps it
    # the pooled estimate: mean within 0.01 of the truth (its own bias is O(1 / (20 x 8 positives)) ~ 1e-3)
    assert abs(pooled.mean() - rho1) < 0.01, pooled.mean()


def test_appeals_q1_is_exact_and_reproducible():
    rng = np.random.default_rng(11)
    clean, completions, golds = _step(rng, n=64)
    rule = NoisyVerifier(_oracle, rho0=0.0, rho1=0.4, seed=12)
    rewards = torch.tensor([rule(c, g) for c, g in zip(completions, golds)])
    out = AppealEstimator(_oracle, q=1.0, decay=0.0, estimator="pooled").update(rewards, completions, golds)
    fn, tp = int(((rewards == 0) & torch.as_tensor(clean == 1)).sum()), int(rewards.sum())
    assert out["appeals"] == out["negatives"] and out["overturns"] == fn
    assert out["rho1_raw"] == pytest.approx(fn / (tp + fn)) and torch.equal(out["rewards"], torch.tensor(clean).float())
    outs = [AppealEstimator(_oracle, q=0.3, seed=5).update(rewards, completions, golds) for _ in range(2)]
    assert torch.equal(outs[0]["appealed"], outs[1]["appealed"])


def test_appeals_edge_cases():
    est = AppealEstimator(lambda c, g: 1 / 0, q=1.0, estimator="pooled")  # a crashing checker upholds every 0
    out = est.update([0, 0], ["a", ""], ["1", "1"])
    assert out["overturns"] == 0 and out["rho1_raw"] == 0.0 and out["rho1"] == 0.0 and not est.has_evidence
    assert est.stats.errors == 1 and est.stats.empty == 1
    out = AppealEstimator(_oracle, q=1.0, estimator="pooled").update([0, 0], ["\\boxed{1}"] * 2, ["1"] * 2)  # FNs only
    assert out["rho1_raw"] == 1.0 and out["rho1"] < 0.5
    with pytest.raises(ValueError, match="0/1"):
        est.update([0.5], ["a"], ["1"])
    with pytest.raises(ValueError, match="differ in length"):
        est.update([0, 1], ["a"], ["1"])


def test_paper_rho1_estimate_by_hand():
    # eq. (11): 2 overturns at q = 0.1 -> FN^ = 20 (eq. 10); 60 positives: (20 + 1e-5) / (80 + 2e-5)
    assert appeal_rho1_estimate(2 / 0.1, 60) == pytest.approx((20 + 1e-5) / (80 + 2e-5), rel=1e-15)
    assert appeal_rho1_estimate(20, 60) == pytest.approx(0.25, abs=1e-7)
    assert appeal_rho1_estimate(0, 0) == 0.5  # no evidence: the prior alone, alpha / (alpha + beta)
    assert appeal_rho1_estimate(0, 10) == pytest.approx(1e-6, rel=1e-4)  # no overturn: ~0, never exactly
    assert appeal_rho1_estimate(3, 0) == pytest.approx(1.0, abs=1e-5) and appeal_rho1_estimate(3, 0) < 1.0
    assert appeal_rho1_estimate(1, 1, alpha=1.0, beta=3.0) == pytest.approx(2 / 6)
    for args, match in (((-1, 2), "counts"), ((1, float("nan")), "counts"), ((1, 1, 0.0), "alpha"),
                        ((1, 1, 1e-5, -1.0), "beta")):
        with pytest.raises(ValueError, match=match):
            appeal_rho1_estimate(*args)


def test_paper_appeals_estimator_smooths_per_step_ratios_by_hand():
    """q = 1 (every negative appealed, the oracle overturns exactly the false negatives), lambda = 0.9:
    rho1_bar(1) = rho1^(1) (the EMA starts at the first value), rho1_bar(2) = 0.9 rho1_bar(1) + 0.1 rho1^(2)."""
    est = AppealEstimator(_oracle, q=1.0, decay=0.9)
    assert est.estimator == Rho1Estimator.PAPER and est.q == 1.0 and est.rho1 == 0.0 and not est.has_evidence
    assert AppealEstimator(_oracle).q == 0.1  # the paper's default q (E.4)
    # step 1: 3 positives, 1 false negative among 4 negatives
    completions = ["\\boxed{1}"] * 4 + ["\\boxed{0}"] * 4
    out = est.update([1, 1, 1, 0, 0, 0, 0, 0], completions, ["1"] * 8)
    r1 = (1 + 1e-5) / (1 + 3 + 2e-5)
    assert out["overturns"] == 1 and out["fn_hat"] == 1.0 and out["positives"] == 3
    assert out["rho1_raw"] == pytest.approx(r1, rel=1e-12) and est.rho1 == pytest.approx(r1, rel=1e-12)
    # step 2: no positive, no overturn -> the prior's 0.5 enters the EMA
    out = est.update([0, 0], ["\\boxed{0}"] * 2, ["1"] * 2)
    assert out["rho1_raw"] == 0.5 and est.rho1 == pytest.approx(0.9 * r1 + 0.1 * 0.5, rel=1e-12)
    assert est.has_evidence and est.steps == 2
    with pytest.raises(ValueError, match="unknown rho1 estimator 'median'"):
        AppealEstimator(_oracle, estimator="median")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=0, max_size=30),
       st.floats(0.05, 1.0), st.floats(0.0, 0.99))
def test_appeal_rho1_is_clipped(items, q, decay):
    est = AppealEstimator(lambda c, g: int(c == "1"), q=q, decay=decay, seed=0, estimator="pooled")
    for _ in range(3):
        out = est.update([r for r, _ in items], [str(s) for _, s in items], ["1"] * len(items))
        assert 0.0 <= out["rho1"] < 0.5 and 0.0 <= out["rho1_raw"] <= 1.0
        assert out["fn_hat"] <= out["negatives"]


# ----------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,name", [({"rho0": -0.1}, "rho0"), ({"rho0": 1.0}, "rho0"), ({"rho1": 1.5}, "rho1"),
                                         ({"rho1": float("nan")}, "rho1"),
                                         ({"rho0": 0.6, "rho1": 0.4}, "rho0 \\+ rho1"),
                                         ({"rho0": True}, "rho0")])
def test_bad_rates(kwargs, name):
    with pytest.raises(ValueError, match=name):
        NoiseRates(**kwargs)
    with pytest.raises(ValueError, match=name):
        NoisyVerifier(_oracle, kwargs.get("rho0", 0.0), kwargs.get("rho1", 0.0))
    with pytest.raises(ValueError, match=name):
        backward_corrected_reward(1.0, kwargs.get("rho0", 0.0), kwargs.get("rho1", 0.0))


def test_bad_arguments():
    with pytest.raises(ValueError, match="rho1"):
        forward_correction_weight(1.0, 1.0)
    for q in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="q must"):
            AppealEstimator(_oracle, q=q)
    for decay in (1.0, -0.1):
        with pytest.raises(ValueError, match="decay"):
            AppealEstimator(_oracle, decay=decay)
        with pytest.raises(ValueError, match="decay"):
            Ema(decay)
    with pytest.raises(ValueError, match="0/1"):
        noise_channel([0, 2], NoiseRates(), np.random.default_rng(0))
    r = torch.zeros(8)
    for kwargs, match in [({"group_size": 3}, "groups of"), ({"group_size": 0}, "group_size"),
                          ({"group_size": 1}, "group_size >= 2"), ({"group_size": 2, "norm": "mean"}, "unknown"),
                          ({"group_size": 2, "norm": "none", "scale": 0.0}, "scale"),
                          ({"group_size": 2, "eps": -1.0}, "eps")]:
        with pytest.raises(ValueError, match=match):
            advantages(r, **{"norm": "group", **kwargs})
    with pytest.raises(ValueError, match="1-D"):
        advantages(r.view(2, 4), 4, "group")
    with pytest.raises(ValueError, match="at least 2"):
        advantages(torch.zeros(1), 1, "batch")


def test_noisy_verifier_clean_reuses_the_base_verdict():
    calls = []

    def base(completion, gold):
        calls.append(completion)
        return int(completion == gold)

    v = NoisyVerifier(base, rho0=0.0, rho1=0.5, seed=0)
    completion, gold = "\\boxed{1}", "\\boxed{1}"
    noisy = [v(completion, gold) for _ in range(20)]
    assert 0 in noisy and 1 in noisy  # the channel really flips some
    assert v.clean(completion, gold) == 1 and len(calls) == 20  # the last call's base verdict, not verified again
    assert v.clean("\\boxed{2}", gold) == 0 and len(calls) == 21  # another pair: verified
