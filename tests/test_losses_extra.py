"""Tier 1 for open-unlearning's remaining methods (UNDIAL, WGA, SatImp, CE-U, PDU, AltPO): each pure loss against
hand-derived values, limit cases, gradients, and an independent restatement of open-unlearning's computation
(``src/trainer/utils.py``, ``src/trainer/unlearn/{ceu,pdu}.py``) on the same inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmpost.losses.altpo import altpo_loss
from llmpost.losses.ceu import ceu_loss, ceu_token_loss, skip_first_tokens
from llmpost.losses.dpo import dpo_loss
from llmpost.losses.grad_diff import gradient_ascent_loss
from llmpost.losses.pdu import dual_update, logit_margin_token_loss, pdu_forget_loss
from llmpost.losses.satimp import satimp_loss, satimp_token_loss
from llmpost.losses.undial import adjusted_target, undial_loss, undial_token_loss
from llmpost.losses.wga import wga_loss, wga_token_loss
from llmpost.ops import logps_from_logits, masked_sum, shift_labels

LN = math.log


def _batch_mean(terms, mask):
    """The trainer's ``token_reduction: batch``: per-example values whose mean is the mean over all answer tokens."""
    return masked_sum(terms, mask) * (mask.shape[0] / mask.sum())


def _random_batch(seed=0, b=3, t=7, v=11, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g, dtype=dtype) * 2
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :2] = -100  # prompt
    labels[1, 5:] = -100  # padding
    return logits, labels


# ----- WGA ---------------------------------------------------------------------------------------------------------
def test_wga_hand_values_and_gradient():
    logps = torch.tensor([[LN(0.5), LN(0.25)], [LN(0.8), 0.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    loss = wga_loss(logps, mask, beta=1.0)
    expected = [(0.5 * LN(0.5) + 0.25 * LN(0.25)) / 2, 0.8 * LN(0.8)]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)
    loss.sum().backward()  # d/dlogp = p^beta / |y| (the weight is detached)
    torch.testing.assert_close(logps.grad, torch.tensor([[0.25, 0.125], [0.8, 0.0]], dtype=torch.float64), rtol=1e-12, atol=0)
    # beta = 2: weights p^2
    torch.testing.assert_close(wga_loss(logps.detach(), mask, beta=2.0)[1], torch.tensor(0.64 * LN(0.8), dtype=torch.float64),
                               rtol=1e-12, atol=0)


def test_wga_beta_zero_is_gradient_ascent():
    logps = -torch.rand(2, 5, dtype=torch.float64) * 4
    mask = torch.rand(2, 5) > 0.3
    mask[:, 0] = True
    torch.testing.assert_close(wga_loss(logps * mask, mask, beta=0.0), gradient_ascent_loss(logps * mask, mask), rtol=1e-12, atol=0)


def test_wga_matches_open_unlearning_restated():
    logits, labels = _random_batch()
    beta = 0.7
    # open-unlearning compute_wga_loss: CE per token, weight exp(-ce)^beta detached, -(w*ce) over valid tokens, mean
    ce = torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    ou = -((-ce).exp() ** beta * ce)[labels[:, 1:].reshape(-1) != -100].mean()
    logps, mask = logps_from_logits(logits, labels)
    torch.testing.assert_close(_batch_mean(wga_token_loss(logps, beta), mask).mean(), ou.float(), rtol=1e-5, atol=1e-6)  # logps in float32


# ----- SatImp ------------------------------------------------------------------------------------------------------
def test_satimp_hand_values_and_limits():
    logps = torch.tensor([[LN(0.5), LN(0.25)]], dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss = satimp_loss(logps, mask, beta1=5.0, beta2=1.0)
    w = [0.5**5 * 0.5, 0.25**5 * 0.75]
    torch.testing.assert_close(loss, torch.tensor([(w[0] * LN(0.5) + w[1] * LN(0.25)) / 2], dtype=torch.float64), rtol=1e-12, atol=0)
    loss.sum().backward()
    torch.testing.assert_close(logps.grad, torch.tensor([[w[0] / 2, w[1] / 2]], dtype=torch.float64), rtol=1e-12, atol=0)
    # beta2 = 0 is WGA with beta = beta1
    torch.testing.assert_close(satimp_loss(logps.detach(), mask, 3.0, 0.0), wga_loss(logps.detach(), mask, 3.0), rtol=1e-12, atol=0)
    # p = 1 gets weight 0 from the importance factor (1 - p) (computed as -expm1(log p), exact there)
    assert satimp_token_loss(torch.zeros(1, 1, dtype=torch.float64), 5.0, 1.0).item() == pytest.approx(0.0, abs=1e-300)


def test_satimp_matches_open_unlearning_restated():
    logits, labels = _random_batch(1)
    b1, b2 = 5.0, 1.0
    ce = torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    w = (-ce).exp().detach() ** b1 * (1 - (-ce).exp().detach()) ** b2
    ou = -(w * ce)[labels[:, 1:].reshape(-1) != -100].mean()
    logps, mask = logps_from_logits(logits, labels)
    torch.testing.assert_close(_batch_mean(satimp_token_loss(logps, b1, b2), mask).mean(), ou.float(), rtol=1e-5, atol=1e-7)


# ----- UNDIAL ------------------------------------------------------------------------------------------------------
def test_undial_hand_values():
    ref = torch.zeros(1, 1, 3, dtype=torch.float64)
    target = torch.tensor([[0]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    # softmax([-ln 2, 0, 0]) = [0.2, 0.4, 0.4]
    torch.testing.assert_close(adjusted_target(ref, target, LN(2))[0, 0], torch.tensor([0.2, 0.4, 0.4]), rtol=1e-6, atol=0)
    # a uniform student: CE = ln 3
    torch.testing.assert_close(undial_loss(torch.zeros(1, 1, 3), ref, target, mask, LN(2)), torch.tensor([LN(3)]), rtol=1e-6, atol=0)
    # the student equal to the target: CE = H(q), and the gradient p - q vanishes
    student = torch.tensor([[[0.0, LN(2), LN(2)]]], dtype=torch.float64, requires_grad=True)
    loss = undial_loss(student, ref, target, mask, LN(2))
    torch.testing.assert_close(loss, torch.tensor([-(0.2 * LN(0.2) + 0.8 * LN(0.4))], dtype=torch.float32), rtol=1e-6, atol=0)
    loss.sum().backward()
    torch.testing.assert_close(student.grad, torch.zeros_like(student), rtol=0, atol=1e-7)


def test_undial_gradient_lowers_the_forgotten_token_and_strength_zero_is_self_distillation():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 4, 9, generator=g, dtype=torch.float64)
    y = torch.randint(0, 9, (2, 4), generator=g)
    mask = torch.ones(2, 4, dtype=torch.bool)
    student = z.clone().requires_grad_(True)
    undial_loss(student, z, y, mask, 0.0).sum().backward()  # student = teacher, no adjustment: at the optimum
    torch.testing.assert_close(student.grad, torch.zeros_like(z), rtol=0, atol=1e-6)  # computed in float32
    student.grad = None
    undial_loss(student, z, y, mask, 5.0).sum().backward()  # d loss / d z_y = p_y - q_y > 0: descent lowers z_y
    assert (student.grad.gather(-1, y[..., None]) > 0).all()


def test_undial_matches_open_unlearning_restated_on_answer_positions():
    logits, labels = _random_batch(2)
    ref = logits + 0.3 * torch.randn_like(logits)
    beta = 3.0
    # open-unlearning compute_undial_loss, restricted to positions with a label (it also averages prompt/padding ones)
    sl, sz, sr = labels[:, 1:], logits[:, :-1], ref[:, :-1]
    valid = sl != -100
    onehot = torch.zeros_like(sr).scatter(-1, sl.clamp(min=0)[..., None], 1.0)
    soft = F.softmax(sr - onehot * beta, dim=-1)
    ou = torch.nn.CrossEntropyLoss(reduction="none")(sz[valid], soft[valid]).mean()
    targets, mask = shift_labels(labels)
    mine = _batch_mean(undial_token_loss(sz, sr, targets, beta), mask).mean()
    torch.testing.assert_close(mine, ou.float(), rtol=1e-5, atol=1e-6)


# ----- CE-U --------------------------------------------------------------------------------------------------------
def test_ceu_hand_values_and_gradient():
    logits = torch.tensor([[[0.0, LN(2), LN(2)]]], dtype=torch.float64, requires_grad=True)  # p = [0.2, 0.4, 0.4]
    target, mask = torch.tensor([[0]]), torch.ones(1, 1, dtype=torch.bool)
    loss = ceu_loss(logits, target, mask, ignore_first_n=0)  # q = [0, 0.5, 0.5]: CE = -ln 0.4
    torch.testing.assert_close(loss, torch.tensor([-LN(0.4)], dtype=torch.float32), rtol=1e-6, atol=0)
    loss.sum().backward()  # p - q
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor([0.2, -0.1, -0.1], dtype=torch.float64), rtol=1e-6, atol=1e-7)
    assert ceu_loss(logits.detach(), target, mask, ignore_first_n=1).item() == 0.0  # the only token is skipped


def test_skip_first_tokens():
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    expected = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(skip_first_tokens(mask, 1), expected)
    assert torch.equal(skip_first_tokens(mask, 0), mask)


def test_ceu_matches_open_unlearning_restated():
    logits, labels = _random_batch(3)
    # open-unlearning compute_batch_ceu: drop the first answer token, shift, target softmax with -inf at the label
    valid = labels != -100
    lab = labels.masked_fill((valid.cumsum(-1) <= 1) & valid, -100)[:, 1:]
    sz = logits[:, :-1]
    keep = lab != -100
    tgt = sz[keep].detach().clone().scatter(-1, lab[keep][:, None], float("-inf"))
    ou = F.cross_entropy(sz[keep], F.softmax(tgt, dim=-1))
    targets, mask = shift_labels(labels)
    mine = _batch_mean(ceu_token_loss(sz, targets), skip_first_tokens(mask, 1)).mean()
    torch.testing.assert_close(mine, ou.float(), rtol=1e-5, atol=1e-6)


# ----- PDU ---------------------------------------------------------------------------------------------------------
def test_pdu_logit_margin_hand_values_and_gradient():
    logits = torch.tensor([[[1.0, 2.0, 6.0], [4.0, 4.0, 4.0]]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True]])
    loss = pdu_forget_loss(logits, mask)  # ((6 - 3)^2 + 0) / 2
    torch.testing.assert_close(loss, torch.tensor([4.5], dtype=torch.float32), rtol=1e-6, atol=0)
    logit_margin_token_loss(logits)[0, 0].backward()  # 2 (max - mean) (e_argmax - 1/V)
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor([-2.0, -2.0, 4.0], dtype=torch.float64), rtol=1e-6, atol=1e-7)


def test_pdu_matches_open_unlearning_restated_unshifted():
    logits, labels = _random_batch(4)
    # open-unlearning PDU.compute_loss: (max - mean)^2 of every position's logits, masked by the unshifted labels
    flat = logits.reshape(-1, 11)
    m = (labels != -100).reshape(-1)
    ou = (((flat.max(-1)[0] - flat.mean(-1)) ** 2) * m).sum() / m.sum()
    mine = _batch_mean(logit_margin_token_loss(logits), labels != -100).mean()
    torch.testing.assert_close(mine, ou.float(), rtol=1e-5, atol=1e-6)


def test_dual_update_by_hand():
    assert dual_update(1.0, 0.5, 0.3, 5.0) == pytest.approx(2.0, rel=1e-12)  # violated: lambda rises by 5 * 0.2
    assert dual_update(1.0, 0.1, 0.3, 2.0) == pytest.approx(0.6, rel=1e-12)  # slack: lambda falls by 2 * 0.2
    assert dual_update(0.1, 0.0, 0.3, 1.0) == 0.0  # projected onto lambda >= 0
    assert dual_update(3.0, 9.0, 0.3, 0.0) == 3.0  # step 0: fixed weight
    with pytest.raises(ValueError, match="step_size"):
        dual_update(1.0, 0.0, 0.0, -1.0)


# ----- AltPO -------------------------------------------------------------------------------------------------------
def test_altpo_hand_values_and_limit():
    alt, forget = torch.tensor([-5.0]), torch.tensor([-10.0])
    ref_alt, ref_forget = torch.tensor([-6.0]), torch.tensor([-9.0])
    # h = (-5 + 6) - (-10 + 9) = 2: (2 / 0.1) * log(1 + exp(-0.2))
    torch.testing.assert_close(altpo_loss(alt, forget, ref_alt, ref_forget, 0.1), torch.tensor([20 * LN(1 + math.exp(-0.2))]),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(altpo_loss(alt, forget, ref_alt, ref_forget, 0.5),
                               4.0 * dpo_loss(alt, forget, ref_alt, ref_forget, 0.5), rtol=1e-6, atol=0)
    # beta -> 0: the gradient tends to that of log pi(forget) - log pi(alt)
    a = torch.tensor([-5.0], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([-10.0], dtype=torch.float64, requires_grad=True)
    altpo_loss(a, f, ref_alt.double(), ref_forget.double(), 1e-6).sum().backward()
    torch.testing.assert_close(torch.cat([a.grad, f.grad]), torch.tensor([-1.0, 1.0], dtype=torch.float64), rtol=1e-5, atol=0)


@pytest.mark.parametrize("fn,args", [(wga_token_loss, (-1.0,)), (satimp_token_loss, (-1.0, 1.0)), (satimp_token_loss, (1.0, -1.0))])
def test_negative_exponents_raise(fn, args):
    with pytest.raises(ValueError, match="must be >= 0"):
        fn(torch.zeros(1, 1), *args)


def test_undial_negative_strength_raises():
    with pytest.raises(ValueError, match="strength"):
        undial_token_loss(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), torch.zeros(1, 1, dtype=torch.long), -1.0)
