"""Tier 1: the SRPO loss (arXiv 2406.01660) against hand-computed values, its value and gradient signs at pi = pi_ref,
its zero at the closed-form solution, and argument validation."""

from __future__ import annotations

import math

import pytest
import torch

from llmpost.losses.srpo import log_ratio, srpo_loss, srpo_terms

NAMES = ("h_w", "h_l", "hp_w_given_l", "hp_l_given_l", "hp_w_given_w", "hp_l_given_w")


def _hand(h_w, h_l, hp_wl, hp_ll, hp_ww, hp_lw, beta, alpha):
    """The issue's equations in plain floats."""
    self_loss = (0.5 - beta * (hp_wl - hp_ll)) ** 2 + (0.5 - beta * (hp_ww - hp_lw)) ** 2
    gen_loss = (beta * (h_w - h_l + hp_wl - hp_lw) - 1.0) ** 2
    return alpha * self_loss + (1 - alpha) * gen_loss


def test_hand_values():
    rows = [(1.5, -2.0, 0.7, -0.3, 2.2, 0.4), (-3.0, 4.0, -1.0, 2.5, 0.0, -0.8), (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]
    cols = [torch.tensor(c, dtype=torch.float64) for c in zip(*rows)]
    for beta, alpha in [(0.1, 0.5), (1.0, 0.0), (0.5, 1.0), (2.0, 0.25)]:
        expected = torch.tensor([_hand(*r, beta, alpha) for r in rows], dtype=torch.float64)
        torch.testing.assert_close(srpo_loss(*cols, beta=beta, alpha=alpha), expected, rtol=1e-12, atol=0)
    # one value written out digit by digit: row 0, beta 0.1, alpha 0.5
    # self: (0.5 - 0.1 * 1.0)^2 + (0.5 - 0.1 * 1.8)^2 = 0.16 + 0.1024; gen: (0.1 * (3.5 + 0.7 - 0.4) - 1)^2 = 0.3844
    assert srpo_loss(*[c[:1] for c in cols], beta=0.1, alpha=0.5).item() == pytest.approx(
        0.5 * (0.16 + 0.1024) + 0.5 * 0.3844, rel=1e-12)


def test_terms_and_margins():
    vals = dict(zip(NAMES, (torch.tensor([v]) for v in (1.5, -2.0, 0.7, -0.3, 2.2, 0.4))))
    t = srpo_terms(**vals, beta=0.1, alpha=0.5)
    torch.testing.assert_close(t["margin_given_l"], torch.tensor([0.1]))
    torch.testing.assert_close(t["margin_given_w"], torch.tensor([0.18]))
    torch.testing.assert_close(t["margin_gen"], torch.tensor([0.38]))
    torch.testing.assert_close(t["self_loss"], torch.tensor([0.2624]))
    torch.testing.assert_close(t["gen_loss"], torch.tensor([0.3844]))
    torch.testing.assert_close(t["loss"], srpo_loss(**vals, beta=0.1, alpha=0.5))


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("beta", [0.01, 0.1, 3.0])
def test_value_at_reference_is_alpha_half_plus_one_minus_alpha(alpha, beta):
    zeros = [torch.zeros(4) for _ in NAMES]
    torch.testing.assert_close(srpo_loss(*zeros, beta=beta, alpha=alpha), torch.full((4,), alpha / 2 + (1 - alpha)))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.7, 1.0])
def test_gradient_signs_at_reference(alpha):
    beta = 0.2
    hs = [torch.zeros(1, dtype=torch.float64, requires_grad=True) for _ in NAMES]
    srpo_loss(*hs, beta=beta, alpha=alpha).sum().backward()
    g = {n: h.grad.item() for n, h in zip(NAMES, hs)}
    # hand-derived: dL/dh_w = -2 beta (1 - alpha), dL/dh_l = +2 beta (1 - alpha);
    # dL/dhp(w|l) = -alpha beta - 2 beta (1 - alpha), dL/dhp(l|l) = +alpha beta
    assert g["h_w"] == pytest.approx(-2 * beta * (1 - alpha), abs=1e-15)
    assert g["h_l"] == pytest.approx(2 * beta * (1 - alpha), abs=1e-15)
    assert g["hp_w_given_l"] == pytest.approx(-alpha * beta - 2 * beta * (1 - alpha), abs=1e-15)
    assert g["hp_l_given_l"] == pytest.approx(alpha * beta, abs=1e-15)
    if alpha < 1:
        assert g["h_w"] < 0 < g["h_l"]
    if alpha > 0:
        assert g["hp_w_given_l"] < 0 < g["hp_l_given_l"]
        assert g["hp_w_given_w"] < 0 < g["hp_l_given_w"]


def test_zero_at_the_closed_form_solution():
    # pi+*(y'|y) = pi_ref(y'|y) exp(P(y' > y)/beta) / Z(y) and pi*(y) = pi_ref(y) / (C Z(y)), so
    # h+(y'|y) = P(y' > y)/beta - log Z(y) and h(y) = -log Z(y) - log C: every squared term vanishes.
    beta, log_c = 0.3, 0.7
    log_z = {"w": 1.3, "l": -0.4}
    for p in (1.0, 0.8, 0.5, 0.1):
        prob = {("w", "l"): p, ("l", "w"): 1 - p, ("w", "w"): 0.5, ("l", "l"): 0.5}

        def hp(a, b, prob=prob):
            return torch.tensor([prob[(a, b)] / beta - log_z[b]], dtype=torch.float64)

        h = {y: torch.tensor([-log_z[y] - log_c], dtype=torch.float64) for y in "wl"}
        for alpha in (0.0, 0.4, 1.0):
            loss = srpo_loss(h["w"], h["l"], hp("w", "l"), hp("l", "l"), hp("w", "w"), hp("l", "w"),
                             beta=beta, alpha=alpha, preference_prob=p)
            assert loss.item() == pytest.approx(0.0, abs=1e-24)
        if p != 1.0:  # hard labels do not fit a soft preference
            assert srpo_loss(h["w"], h["l"], hp("w", "l"), hp("l", "l"), hp("w", "w"), hp("l", "w"),
                             beta=beta, alpha=0.5).item() > 1e-3


def test_soft_labels_per_example_and_default_is_hard():
    vals = [torch.tensor([0.4, -1.0]) for _ in NAMES]
    torch.testing.assert_close(srpo_loss(*vals, beta=0.5, alpha=0.3),
                               srpo_loss(*vals, beta=0.5, alpha=0.3, preference_prob=1.0))
    both = srpo_loss(*vals, beta=0.5, alpha=0.3, preference_prob=torch.tensor([1.0, 0.6]))
    one = srpo_loss(*vals, beta=0.5, alpha=0.3, preference_prob=0.6)
    assert both[1].item() == pytest.approx(one[1].item())
    assert both[0].item() == pytest.approx(srpo_loss(*vals, beta=0.5, alpha=0.3)[0].item())


def test_gradcheck_float64_and_log_ratio_detaches_reference():
    torch.manual_seed(0)
    xs = tuple(torch.randn(3, dtype=torch.float64, requires_grad=True) for _ in NAMES)
    assert torch.autograd.gradcheck(lambda *a: srpo_loss(*a, beta=0.7, alpha=0.35), xs)
    pol, ref = torch.tensor([-3.0], requires_grad=True), torch.tensor([-5.0], requires_grad=True)
    log_ratio(pol, ref).sum().backward()
    assert pol.grad.item() == 1.0 and ref.grad is None


@pytest.mark.parametrize("kwargs, match", [
    ({"beta": 0.0, "alpha": 0.5}, "beta"), ({"beta": -1.0, "alpha": 0.5}, "beta"),
    ({"beta": float("nan"), "alpha": 0.5}, "beta"), ({"beta": 0.1, "alpha": -0.01}, "alpha"),
    ({"beta": 0.1, "alpha": 1.01}, "alpha"), ({"beta": 0.1, "alpha": 0.5, "preference_prob": 1.5}, "preference_prob"),
    ({"beta": 0.1, "alpha": 0.5, "preference_prob": torch.tensor([0.5, -0.1])}, "preference_prob"),
])
def test_validation(kwargs, match):
    zeros = [torch.zeros(2) for _ in NAMES]
    with pytest.raises(ValueError, match=match):
        srpo_loss(*zeros, **kwargs)
    assert math.isfinite(srpo_loss(*zeros, beta=0.1, alpha=0.5).sum().item())
