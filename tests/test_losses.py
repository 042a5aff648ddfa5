"""Tier 1: each pure loss against hand-derived values, limit cases and float64 gradient checks."""

from __future__ import annotations

import math

import pytest
import torch

from llmpost.losses.grad_diff import gradient_ascent_loss, nll_loss, retain_kl_loss
from llmpost.losses.npo import npo_loss
from llmpost.losses.simnpo import simnpo_loss
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


# ----- FLAT (arXiv 2410.11143) -----------------------------------------------------------------------------------------
# Hand-derived at P(x, y_e) = 0.5, P(x, y_f) = 0.25, loss = -(g*(0.5) - f*(g*(0.25))):
#   kl          -(0.5 - exp(-0.75))                                       = -0.0276334473
#   reverse_kl  -(-exp(-0.5) - (-1 + 0.25))  = -(-0.6065306597 + 0.75)     = -0.1434693403
#   pearson     -(0.5 - (0.0625/4 + 0.25))                                = -0.234375
#   js          -((log 2 - log(1 + e^-0.5)) - (0.25 + log(1 + e^-0.25) - log 2))
#               = -(0.2190701964 - 0.1327922393)                          = -0.0862779571
#   tv          -(tanh(0.5)/2 - tanh(0.25)/2) = -(0.2310585786 - 0.1224593312) = -0.1085992474
#   hellinger   -((1 - e^-0.5) - (e^0.25 - 1)) = -(0.3934693403 - 0.2840254167) = -0.1094439236
FLAT_HAND = {"kl": -0.0276334473, "reverse_kl": -0.1434693403, "pearson": -0.234375, "js": -0.0862779571,
             "tv": -0.1085992474, "hellinger": -0.1094439236}


@pytest.mark.parametrize("divergence", list(FLAT_HAND))
def test_flat_hand_values(divergence):
    from llmpost.losses.flat import flat_loss

    loss = flat_loss(torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.25], dtype=torch.float64), divergence)
    assert loss.item() == pytest.approx(FLAT_HAND[divergence], abs=1e-9)


@pytest.mark.parametrize("divergence", list(FLAT_HAND))
def test_flat_gradient_raises_template_and_lowers_forget_probability(divergence):
    """For every divergence and every probability in (0, 1): dL/dP_e < 0 and dL/dP_f > 0, so a descent step moves the
    template answer up and the forget answer down (the authors' reverse-KL and Hellinger forms fail this)."""
    from llmpost.losses.flat import flat_loss

    grid = torch.linspace(0.01, 0.99, 25, dtype=torch.float64)
    p_e, p_f = grid.clone().requires_grad_(True), grid.flip(0).clone().requires_grad_(True)
    flat_loss(p_e, p_f, divergence).sum().backward()
    assert (p_e.grad < 0).all() and (p_f.grad > 0).all(), (p_e.grad, p_f.grad)
    assert torch.autograd.gradcheck(lambda a, b: flat_loss(a, b, divergence), (p_e.detach().requires_grad_(), p_f.detach().requires_grad_()))


def test_flat_batch_form_and_unknown_divergence():
    from llmpost.losses.flat import flat_batch_loss, flat_loss

    probs_e = torch.tensor([[0.2, 0.4, 0.9], [0.6, 0.0, 0.0]])  # second row: one answer token
    mask_e = torch.tensor([[True, True, True], [True, False, False]])
    probs_f = torch.tensor([[0.5, 0.1, 0.0], [0.3, 0.3, 0.3]])
    mask_f = torch.tensor([[True, True, False], [True, True, True]])
    # one mean over all answer tokens of the batch: P_e = 2.1/4, P_f = 1.5/5
    expected = flat_loss(torch.tensor([2.1 / 4]), torch.tensor([1.5 / 5]), "js")[0]
    torch.testing.assert_close(flat_batch_loss(probs_e, mask_e, probs_f, mask_f, "js"), expected)
    with pytest.raises(ValueError, match="'chi2' is not a valid FDivergence"):
        flat_loss(torch.tensor([0.5]), torch.tensor([0.5]), "chi2")


# ----- DPO / IdkDPO (arXiv 2305.18290) --------------------------------------------------------------------------------
def test_dpo_hand_values_and_label_smoothing():
    from llmpost.losses.dpo import dpo_loss

    # h = (-5 - -6) - (-9 - -7) = 3; beta 0.1: -log sigmoid(0.3) = log(1 + e^-0.3) = 0.5543552444
    args = [torch.tensor([-5.0]), torch.tensor([-9.0]), torch.tensor([-6.0]), torch.tensor([-7.0])]
    # in float64 (the inputs are exact integers): float32's ulp at 0.55 is 6e-8, too coarse for 10 written decimals
    assert dpo_loss(*[a.double() for a in args], beta=0.1).item() == pytest.approx(0.5543552444, abs=1e-10)
    # eps 0.1: 0.9 * 0.5543552444 + 0.1 * log(1 + e^0.3) = 0.4989197200 + 0.0854355244 = 0.5843552444
    assert dpo_loss(*[a.double() for a in args], beta=0.1, label_smoothing=0.1).item() == pytest.approx(0.5843552444, abs=1e-10)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(*args, beta=0.0)


def test_dpo_loss_equals_trl_dpo_trainer_sigmoid_loss(tmp_path):
    """TRL's DPOTrainer (loss_type sigmoid, explicit reference) on the tiny model, one pair per batch: its loss equals
    dpo_loss of the per-example numbers it logs (policy log-probs; reference = policy - reward / beta)."""
    import copy

    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from conftest import TINY_MODEL
    from llmpost.losses.dpo import dpo_loss
    from llmpost.models import load_tokenizer

    torch.manual_seed(0)
    tok = load_tokenizer(str(TINY_MODEL))
    policy = AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32)
    ref = copy.deepcopy(policy)
    with torch.no_grad():  # make the policy differ from the reference, so the log-ratios are not all 0
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    data = Dataset.from_dict({"prompt": ["Once upon a time", "The cat", "Tom and Lily"],
                              "chosen": [" there was a girl.", " sat down.", " went to the park."],
                              "rejected": [" the sky fell.", " ran far away from home.", " were sad."]})
    beta = 0.3
    cfg = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=1, beta=beta, loss_type=["sigmoid"],
                    use_cpu=True, bf16=False, report_to="none", max_length=64)
    trainer = DPOTrainer(policy, ref_model=ref.requires_grad_(False), args=cfg, train_dataset=data, processing_class=tok)
    trainer.model.train()  # TRL files its metrics under "train" in training mode
    checked = 0
    for batch in trainer.get_train_dataloader():
        trainer._metrics["train"].clear()
        with torch.no_grad():
            trl_loss = trainer.compute_loss(trainer.model, batch)
        m = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        chosen, rejected = torch.tensor([m["logps/chosen"]]), torch.tensor([m["logps/rejected"]])
        ref_chosen = chosen - torch.tensor([m["rewards/chosen"]]) / beta
        ref_rejected = rejected - torch.tensor([m["rewards/rejected"]]) / beta
        ours = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
        assert abs(m["rewards/margins"]) > 1e-3  # a non-trivial pair
        assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-5)
        checked += 1
    assert checked == 3
