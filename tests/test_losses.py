"""Tier 1: each pure loss against hand-derived values, limit cases and float64 gradient checks."""

from __future__ import annotations

import math

import pytest
import torch

from llmpost.methods.grad_diff import gradient_ascent_loss, nll_loss, retain_kl_loss
from llmpost.methods.npo import npo_loss
from llmpost.methods.simnpo import simnpo_loss
from llmpost.ops import kl_per_token, logps_from_logits, masked_mean, sequence_logps


def test_npo_hand_values():
    # (2/beta) * log(1 + exp(beta * (logp - ref)))
    policy, ref = torch.tensor([-10.0, -8.0, -5.0]), torch.tensor([-8.0, -8.0, -9.0])
    expected = [20 * math.log(1 + math.exp(-0.2)), 20 * math.log(2.0), 20 * math.log(1 + math.exp(0.4))]
    torch.testing.assert_close(npo_loss(policy, ref, beta=0.1), torch.tensor(expected), rtol=1e-6, atol=0)
    assert expected[0] == pytest.approx(11.962777386, rel=1e-9)


def test_npo_gradient_tends_to_gradient_ascent_as_beta_to_zero():
    # d/dlogp NPO = 2 sigmoid(beta * delta) -> 1 = d/dlogp (logp), the gradient-ascent gradient on the summed log-prob.
    policy = torch.tensor([-30.0, -3.0, 4.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-10.0, -10.0, -10.0], dtype=torch.float64)
    npo_loss(policy, ref, beta=1e-6).sum().backward()
    torch.testing.assert_close(policy.grad, torch.ones(3, dtype=torch.float64), rtol=1e-4, atol=0)
    # and the loss minus its constant 2 log 2 / beta tends to (logp - ref)
    value = npo_loss(policy.detach(), ref, beta=1e-6) - 2 * math.log(2) / 1e-6
    torch.testing.assert_close(value, policy.detach() - ref, rtol=1e-3, atol=1e-3)


def test_npo_gradient_weight_vanishes_for_unlikely_answers_and_no_grad_into_ref():
    policy = torch.tensor([-1000.0], requires_grad=True)
    ref = torch.tensor([0.0], requires_grad=True)
    npo_loss(policy, ref, beta=0.1).sum().backward()
    assert policy.grad.abs().item() < 1e-30  # 2 sigmoid(-100): NPO stops pushing once the answer is forgotten
    assert ref.grad is None


def test_npo_gradcheck_float64():
    policy = torch.randn(5, dtype=torch.float64, requires_grad=True) * 10
    ref = torch.randn(5, dtype=torch.float64) * 10
    assert torch.autograd.gradcheck(lambda p: npo_loss(p, ref, 0.3), (policy.detach().requires_grad_(),))


def test_npo_rejects_nonpositive_beta():
    with pytest.raises(ValueError, match="beta"):
        npo_loss(torch.zeros(1), torch.zeros(1), beta=0.0)


def test_simnpo_hand_values():
    # (2/beta) * softplus(beta * (logp/|y| + delta))
    logps, lengths = torch.tensor([-12.0, -12.0]), torch.tensor([4, 4])
    out = simnpo_loss(logps, lengths, beta=1.0, delta=0.0)
    torch.testing.assert_close(out, torch.tensor([2 * math.log(1 + math.exp(-3.0))] * 2))
    out = simnpo_loss(logps, lengths, beta=2.0, delta=0.5)
    torch.testing.assert_close(out, torch.tensor([math.log(1 + math.exp(2 * (-3.0 + 0.5)))] * 2))
    assert 2 * math.log(1 + math.exp(-3.0)) == pytest.approx(0.0971747032, rel=1e-8)


def test_simnpo_is_length_normalised_and_gradchecks():
    # the same per-token log-likelihood gives the same loss whatever the length
    a = simnpo_loss(torch.tensor([-6.0]), torch.tensor([3]), beta=2.5)
    b = simnpo_loss(torch.tensor([-60.0]), torch.tensor([30]), beta=2.5)
    torch.testing.assert_close(a, b)
    lengths = torch.tensor([3, 7, 11])
    x = (torch.randn(3, dtype=torch.float64) * 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: simnpo_loss(p, lengths, 1.7, 0.2), (x,))


def test_gradient_ascent_and_nll_token_means():
    logps = torch.tensor([[-1.0, -2.0, -3.0, 0.0], [-4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(gradient_ascent_loss(logps, mask), torch.tensor([-2.0, -4.0]))
    torch.testing.assert_close(nll_loss(logps, mask), torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(sequence_logps(logps, mask), torch.tensor([-6.0, -4.0]))
    # an empty mask gives 0, not NaN
    assert masked_mean(logps, torch.zeros_like(mask)).eq(0).all()


def test_retain_kl_hand_value():
    # KL(ref || policy) with ref = [0.5, 0.5], policy = [0.9, 0.1]: 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1)
    policy = torch.log(torch.tensor([[[0.9, 0.1], [0.5, 0.5]]]))
    ref = torch.log(torch.tensor([[[0.5, 0.5], [0.5, 0.5]]]))
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(5.0)
    mask = torch.tensor([[True, False]])
    torch.testing.assert_close(retain_kl_loss(policy, ref, mask), torch.tensor([expected]))
    both = torch.tensor([[True, True]])  # the second position has KL 0, so the token mean halves it
    torch.testing.assert_close(retain_kl_loss(policy, ref, both), torch.tensor([expected / 2]))
    rev = kl_per_token(policy, ref, mask, direction="reverse")[0, 0]
    assert rev.item() == pytest.approx(0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5), rel=1e-5)


def test_logps_from_logits_shift_and_mask():
    # position t predicts labels[t + 1]; label -100 positions are masked out
    logits = torch.log(torch.tensor([[[0.25, 0.75], [0.6, 0.4], [0.1, 0.9]]]))
    labels = torch.tensor([[-100, 1, 0]])
    logps, mask = logps_from_logits(logits, labels)
    assert mask.tolist() == [[True, True]]
    torch.testing.assert_close(logps, torch.log(torch.tensor([[0.75, 0.6]])))
