"""Tier 1: the f-divergence SFT losses (arXiv 2507.00018) against hand-computed values on a 3-token vocabulary, their
population minimiser (pi = data distribution), the CE case, masking, and the implicit rewards."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmpost.losses.fdiv_sft import (
    SFTDivergence,
    fdiv_sft_loss_from_labels,
    fdiv_sft_token_loss,
    implicit_rewards,
    sequence_token_mean,
)
from llmpost.ops import IGNORE_INDEX

POLICY, REF = [1.0, -0.5, 0.3], [0.2, 0.9, -1.1]


def _softmax(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def _hand(div: str, target: int) -> float:
    """The module docstring's formulas, in plain Python."""
    pi, ref = _softmax(POLICY), _softmax(REF)
    if div == "ce":
        return -math.log(pi[target])
    if div == "pearson":
        return -2 * pi[target] / ref[target] + sum(p * p / r for p, r in zip(pi, ref))
    if div == "hellinger":
        return math.sqrt(ref[target] / pi[target]) + sum(math.sqrt(p * r) for p, r in zip(pi, ref))
    if div == "forward_kl":
        return ref[target] / pi[target] - sum(r * math.log(r / p) for p, r in zip(pi, ref))
    raise AssertionError(div)


def _one_state(logits, targets):
    """``len(targets)`` positions that share one state's logits, as a (1, T, V) batch."""
    t = len(targets)
    z = torch.as_tensor(logits).reshape(1, 1, -1).expand(1, t, -1)
    return z, torch.tensor([targets]), torch.ones(1, t, dtype=torch.bool)


@pytest.mark.parametrize("div", [d.value for d in SFTDivergence])
def test_hand_values_three_token_vocab(div):
    z, targets, mask = _one_state(POLICY, [0, 1, 2])
    ref = torch.tensor(REF).reshape(1, 1, 3).expand(1, 3, 3)
    out = fdiv_sft_token_loss(z, ref, targets, mask, div)
    assert out.dtype == torch.float32 and out.shape == (1, 3)
    torch.testing.assert_close(out[0], torch.tensor([_hand(div, a) for a in range(3)]), rtol=1e-6, atol=1e-6)


def test_hand_values_written_out():
    # pi = softmax(1, -0.5, 0.3) = (0.5814915438, 0.1297483013, 0.2887601549),
    # ref = softmax(0.2, 0.9, -1.1) = (0.3042950176, 0.6127749156, 0.0829300668), target token 0:
    #   ce         -log 0.5814915438                                                      = 0.5421588492
    #   pearson    -2 (0.58149 / 0.30430) + (0.58149^2/0.30430 + 0.12975^2/0.61277 + 0.28876^2/0.08293)
    #              = -3.8219 + (1.1112 + 0.0275 + 1.0054)                                 = -1.6777664930
    #   hellinger  sqrt(0.30430 / 0.58149) + sum sqrt(pi ref)                             = 1.5807604789
    #   forward_kl 0.30430 / 0.58149 - KL(ref || pi)                                      = -0.1274471806
    assert _softmax(POLICY)[0] == pytest.approx(0.5814915438, rel=1e-9)
    assert _softmax(REF)[0] == pytest.approx(0.3042950176, rel=1e-9)
    # float64 (fdiv_sft_token_loss keeps it): the hand values have 10 decimals, beyond float32's ~7 digits
    z, targets, mask = _one_state(torch.tensor(POLICY, dtype=torch.float64), [0])
    ref = torch.tensor(REF, dtype=torch.float64).reshape(1, 1, 3)
    expected = {"ce": 0.5421588492, "pearson": -1.6777664930, "hellinger": 1.5807604789, "forward_kl": -0.1274471806}
    for div, value in expected.items():
        assert fdiv_sft_token_loss(z, ref, targets, mask, div).item() == pytest.approx(value, abs=1e-10), div


@pytest.mark.parametrize("div", ["pearson", "hellinger", "forward_kl"])
def test_values_at_policy_equal_reference(div):
    # u = 1 everywhere: pearson -2 + 1, hellinger 1 + 1, forward_kl 1 - 0, whatever the logits and target
    z = torch.randn(2, 4, 7)
    out = fdiv_sft_token_loss(z, z.clone(), torch.randint(7, (2, 4)), torch.ones(2, 4, dtype=torch.bool), div)
    torch.testing.assert_close(out, torch.full((2, 4), {"pearson": -1.0, "hellinger": 2.0, "forward_kl": 1.0}[div]))


@pytest.mark.parametrize("div", [d.value for d in SFTDivergence])
def test_expected_loss_is_minimised_at_the_data_distribution(div):
    # One state, data distribution q over a 5-token vocabulary: minimise E_{a*~q}[loss(a*)] over the policy's logits
    # with Adam from a random start; the minimiser must be q (for every form, whatever the reference).
    vocab, seeds = 5, 3  # the three (q, reference) draws are optimised together, one batch row each
    targets, mask = torch.arange(vocab).repeat(seeds, 1), torch.ones(seeds, vocab, dtype=torch.bool)
    draws = []
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        draws.append((torch.softmax(torch.randn(vocab, generator=g), -1), torch.randn(vocab, generator=g),
                      torch.randn(vocab, generator=g)))
    q = torch.stack([d[0] for d in draws])
    ref = torch.stack([d[1] for d in draws])[:, None, :].expand(seeds, vocab, vocab)
    z = torch.stack([d[2] for d in draws]).requires_grad_()
    opt = torch.optim.Adam([z], lr=0.1)
    for _ in range(1000):
        opt.zero_grad()
        loss = fdiv_sft_token_loss(z[:, None, :].expand(seeds, vocab, vocab), ref, targets, mask, div)
        (loss * q).sum().backward()  # the rows are independent: each gets its own expected loss's gradient
        opt.step()
    pi = torch.softmax(z.detach(), -1)
    assert (pi - q).abs().max().item() < 1e-3, (div, pi, q)


def test_forward_kl_is_unbounded_below_for_one_hot_data_pearson_hellinger_are_not():
    # token-level SFT data is one-hot: q = delta_0. Pushing the other tokens' logits down makes forward_kl go to
    # -inf (its -KL(ref || pi) term), while pearson / hellinger approach their infima -1/ref(0) and 2 sqrt(ref(0)).
    ref_logits = torch.tensor(REF).reshape(1, 1, 3)
    ref0 = _softmax(REF)[0]
    values = {d: [] for d in ("pearson", "hellinger", "forward_kl")}
    for s in (2.0, 8.0, 32.0, 128.0):
        z, targets, mask = _one_state([0.0, -s, -s], [0])
        for d in values:
            values[d].append(fdiv_sft_token_loss(z, ref_logits, targets, mask, d).item())
    fkl = values["forward_kl"]
    assert all(a > b for a, b in zip(fkl, fkl[1:])) and fkl[-1] < -50
    assert min(values["pearson"]) >= -1 / ref0 - 1e-5 and values["pearson"][-1] == pytest.approx(-1 / ref0, rel=1e-5)
    assert min(values["hellinger"]) >= 2 * math.sqrt(ref0) - 1e-5
    assert values["hellinger"][-1] == pytest.approx(2 * math.sqrt(ref0), rel=1e-5)


def test_ce_equals_cross_entropy():
    torch.manual_seed(0)
    z = torch.randn(3, 6, 11)
    targets = torch.randint(11, (3, 6))
    mask = torch.rand(3, 6) > 0.3
    out = fdiv_sft_token_loss(z, None, targets, mask, "ce")
    ce = F.cross_entropy(z.reshape(-1, 11), targets.masked_fill(~mask, IGNORE_INDEX).reshape(-1), reduction="none",
                         ignore_index=IGNORE_INDEX).reshape(3, 6)
    torch.testing.assert_close(out, ce)
    # the reference is ignored by ce
    torch.testing.assert_close(fdiv_sft_token_loss(z, torch.randn(3, 6, 11), targets, mask, SFTDivergence.CE), out)


@pytest.mark.parametrize("div", [d.value for d in SFTDivergence])
def test_masking_zeroes_padded_positions(div):
    torch.manual_seed(1)
    z, ref = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    targets = torch.randint(7, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = fdiv_sft_token_loss(z, ref, targets, mask, div)
    assert (out[0, 3:] == 0).all() and (out[0, :3] != 0).all()
    # garbage in padded positions (-100 targets, inf logits) changes nothing and makes no NaN
    z2, targets2 = z.clone(), targets.clone()
    z2[0, 3:] = float("inf")
    targets2[0, 3:] = IGNORE_INDEX
    out2 = fdiv_sft_token_loss(z2, ref, targets2, mask, div)
    torch.testing.assert_close(out2, out)
    # per-sequence token mean; a sequence with no token gives 0
    torch.testing.assert_close(sequence_token_mean(out, mask), torch.stack([out[0, :3].mean(), out[1].mean()]))
    assert sequence_token_mean(out, torch.zeros_like(mask)).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("div", [d.value for d in SFTDivergence])
def test_from_labels_shifts_like_ops_and_no_gradient_into_reference(div):
    torch.manual_seed(2)
    z = torch.randn(2, 6, 9, requires_grad=True)
    ref = torch.randn(2, 6, 9, requires_grad=True)
    labels = torch.randint(9, (2, 6))
    labels[0, :3] = IGNORE_INDEX
    loss, mask = fdiv_sft_loss_from_labels(z, ref, labels, div)
    assert loss.shape == mask.shape == (2, 5) and mask[0].tolist() == [False, False, True, True, True]
    expected = fdiv_sft_token_loss(z[:, :-1], ref[:, :-1], labels[:, 1:], labels[:, 1:] != IGNORE_INDEX, div)
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()
    assert ref.grad is None and z.grad is not None and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("div", ["pearson", "hellinger", "forward_kl"])
def test_gradcheck_float64(div):
    torch.manual_seed(3)
    ref = torch.randn(1, 3, 4, dtype=torch.float64)
    targets, mask = torch.randint(4, (1, 3)), torch.tensor([[True, True, False]])
    z = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert fdiv_sft_token_loss(z, ref, targets, mask, div).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: fdiv_sft_token_loss(x, ref, targets, mask, div), (z,))


def test_errors():
    z, t, m = torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"divergence: 'chi2' is not one of \['ce', 'pearson'"):
        fdiv_sft_token_loss(z, z, t, m, "chi2")
    with pytest.raises(ValueError, match="needs the reference logits"):
        fdiv_sft_token_loss(z, None, t, m, "pearson")
    with pytest.raises(ValueError, match="must have the policy's shape"):
        fdiv_sft_token_loss(z, torch.zeros(1, 2, 4), t, m, "hellinger")
    with pytest.raises(ValueError, match="expected logits"):
        fdiv_sft_token_loss(z, z, t[:, :1], m, "ce")


def test_implicit_rewards():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -9.0, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    per_token, per_seq = implicit_rewards(logp, ref, mask, beta=0.1)
    torch.testing.assert_close(per_token, torch.tensor([[0.05, -0.1, 0.0], [-0.1, 0.0, 0.0]]))
    torch.testing.assert_close(per_seq, torch.tensor([0.1 * (-3.5 + 3.0), 0.1 * (-3.0 + 2.0)]))
    with pytest.raises(ValueError, match="beta"):
        implicit_rewards(logp, ref, mask, beta=0.0)
