"""DCO (arXiv 2502.07154): the weight F(N, p) against 50-digit arithmetic, its limits, the gradient identity it rests
on, the two reductions; the trainer's loss, and the authors' filter (full global batches of kept, distinct rows)."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch

from conftest import TINY_MODEL
from llmpost.losses.dco import DCOReduction, dco_loss, dco_weight

pytestmark = pytest.mark.usefixtures("one_thread")


def _exact(n: int, p: float) -> mpmath.mpf:
    with mpmath.workdps(60):
        p = mpmath.mpf(p)
        q = 1 - p
        return n * p * q ** (n - 1) / (1 - q**n)


NS = [2, 3, 4, 7, 16, 64, 256, 1000, 4096]
PS = np.concatenate([np.logspace(-12, 0, 241), 1 - np.logspace(-12, -1, 45), [0.5, 1 / 3]])


@pytest.mark.parametrize("n", NS)
def test_weight_matches_high_precision_everywhere(n):
    got = dco_weight(n, torch.tensor(PS, dtype=torch.float64)).tolist()
    worst = 0.0
    for p, w in zip(PS, got):
        exact = _exact(n, float(p))
        if exact < mpmath.mpf("1e-290"):  # below float64's range: must underflow to (almost) 0, not blow up
            assert 0 <= w < 1e-280
            continue
        worst = max(worst, float(abs(w - exact) / exact))
    assert worst < 1e-6  # the requirement; measured here: < 1e-12 (log1p/expm1 form)
    assert worst < 1e-11


def test_weight_limits_and_shape():
    assert dco_weight(1, torch.tensor([0.0, 0.3, 1.0])).tolist() == [1.0, 1.0, 1.0]  # N = 1: cross-entropy
    w = dco_weight(16, torch.tensor([0.0, 1e-300, 1e-12, 1.0], dtype=torch.float64))
    assert w[0] == 1.0 and w[1] == 1.0 and abs(w[2] - 1) < 1e-10 and w[3] == 0.0  # F -> 1 as p -> 0; F(1) = 0
    grid = dco_weight(8, torch.linspace(0, 1, 101, dtype=torch.float64))
    assert (grid[1:] <= grid[:-1]).all()  # F decreases in p
    # hand-derived: N = 2, p = 1/2: 2 * 0.5 * 0.5 / (1 - 0.25) = 2/3
    # float64 through log1p, exp, expm1 and a division: a few ulps each, so 1e-14 rather than one ulp's 1e-16
    assert dco_weight(2, torch.tensor(0.5)).item() == pytest.approx(2 / 3, rel=1e-14)
    assert dco_weight(3, torch.tensor(0.5)).item() == pytest.approx(3 * 0.5 * 0.25 / (1 - 0.125), rel=1e-14)


@pytest.mark.parametrize("p", [0.999999, np.float64(0.999999), [0.999999], np.array([0.999999])])
def test_weight_keeps_float64_precision_of_python_and_numpy_probabilities(p):
    # issue 17: a Python float used to become a float32 tensor first (1 - p lost its digits: 1.95e-89, not 1.60e-89)
    exact = _exact(16, 0.999999)  # 1.5999984e-89 (mpmath, 60 digits)
    got = dco_weight(16, p)
    assert got.dtype == torch.float64
    assert float(abs(got.reshape(-1)[0].item() - exact) / exact) < 1e-9  # the float64 promise, from a float too
    assert dco_weight(16, 0.999999).item() == pytest.approx(1.5999984e-89, rel=1e-7)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_weight_rejects_bad_n(bad):
    with pytest.raises(ValueError, match="N must be an integer >= 1"):
        dco_weight(bad, torch.tensor([0.5]))


def test_weight_rejects_probabilities_outside_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dco_weight(4, torch.tensor([1.5]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dco_weight(4, torch.tensor([float("nan")]))


def _toy(seed=0, batch=3, length=4, vocab=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, -1] = False  # answers of different lengths
    return logits, targets, mask


def _token_logps(logits, targets, mask):
    return torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0] * mask


@pytest.mark.parametrize("n", [1, 4, 64])
def test_token_sum_loss_has_the_exact_pass_at_n_gradient(n):
    """grad of F(N, p) * (-log p) with F detached == grad of -log(1 - (1-p)^N): the identity DCO rests on."""
    logits, targets, mask = _toy()
    loss, _ = dco_loss(_token_logps(logits, targets, mask), mask, n, DCOReduction.TOKEN_SUM)
    (g_dco,) = torch.autograd.grad(loss.sum(), logits)
    seq = _token_logps(logits, targets, mask).sum(-1)
    objective = -torch.log(-torch.expm1(n * torch.log1p(-seq.exp())))
    (g_exact,) = torch.autograd.grad(objective.sum(), logits)
    torch.testing.assert_close(g_dco, g_exact, rtol=1e-9, atol=1e-12)


def test_token_mean_is_the_authors_per_token_average():
    logits, targets, mask = _toy(1)
    logps = _token_logps(logits, targets, mask)
    mean_loss, w = dco_loss(logps, mask, 16, "token_mean")
    sum_loss, w2 = dco_loss(logps, mask, 16, "token_sum")
    torch.testing.assert_close(mean_loss, sum_loss / mask.sum(-1))
    torch.testing.assert_close(w, w2)
    nll_mean = -(logps.sum(-1) / mask.sum(-1))
    torch.testing.assert_close(mean_loss, w * nll_mean)  # the weight multiplies the token-mean NLL
    ce, ones = dco_loss(logps, mask, 1)
    assert ones.tolist() == [1.0] * 3
    torch.testing.assert_close(ce, nll_mean)  # N = 1 is cross-entropy


def test_config_errors_name_the_key():
    from llmpost.trainers.dco import DCOConfig

    for kwargs, key in [({"dco_n": 0}, "dco_n"), ({"dco_threshold": 1.0}, "dco_threshold"),
                        ({"dco_reduction": "sum"}, "dco_reduction"), ({"max_length": 0}, "max_length")]:  # fmt: skip
        with pytest.raises(ValueError, match=key):
            DCOConfig(output_dir="/tmp/x", use_cpu=True, report_to="none", **kwargs)


# ----- the trainer -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tokenizer):
    from llmpost.benchmarks.math.data import MathArguments, tokenize_math

    data_args = MathArguments(task="arithmetic", arithmetic_train_size=48, user_start_tag="Question: ",
                              user_end_tag="\n", asst_start_tag="Answer: ")  # fmt: skip
    train = tokenize_math(data_args.problems("train"), tokenizer, data_args, "direct", 64)
    return train


@pytest.fixture(scope="module")
def warm(setup, tokenizer, tmp_path_factory):
    """The tiny model after a few cross-entropy epochs on the rows: answer probabilities of ~1e-2 instead of ~1e-22,
    so that the DCO weights differ between rows."""
    path = tmp_path_factory.mktemp("warm")
    trainer = _trainer(path, setup, tokenizer, model=TINY_MODEL, dco_n=1, num_train_epochs=6, learning_rate=3e-3)
    trainer.train()
    trainer.save_model(str(path))
    return path


def _trainer(tmp_path, train, tokenizer, model, **kw):
    from transformers import AutoModelForCausalLM

    from llmpost.trainers.dco import DCOConfig, DCOTrainer

    kw = {"learning_rate": 1e-3, **kw}
    args = DCOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=4,
                     gradient_accumulation_steps=2, logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0,
                     **kw)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(model)
    return DCOTrainer(model, args, train, tokenizer)


def _weights(trainer, train):
    from llmpost.ops import token_logps

    batch = trainer.data_collator([train[i] for i in range(len(train))])
    trainer.model.eval()
    with torch.no_grad():
        logps, mask = token_logps(trainer.model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                  fused=trainer.fused)  # fmt: skip
    return dco_weight(trainer.args.dco_n, (logps * mask).sum(-1).double().exp())


def test_filter_builds_full_batches_of_kept_distinct_rows(tmp_path, setup, tokenizer, warm):
    train = setup
    trainer = _trainer(tmp_path, train, tokenizer, warm, dco_n=16, dco_threshold=0.5)
    weights = _weights(trainer, train)
    threshold = float(weights.median())  # about half of the rows pass
    trainer.args.dco_threshold = threshold
    kept = {i for i, w in enumerate(weights.tolist()) if w > threshold}
    assert 0 < len(kept) < len(train)
    loader = trainer.get_train_dataloader()
    it = iter(loader)
    samples, _ = trainer.get_batch_samples(it, 2, torch.device("cpu"))
    assert len(samples) == 2 and all(len(s["index"]) == 4 for s in samples)  # a full global batch: 2 x 4 rows
    taken = [i for s in samples for i in s["index"].tolist()]
    assert len(set(taken)) == 8 and set(taken) <= kept  # distinct rows, every one above the threshold
    scored, n_kept = trainer._filter_counts.tolist()
    assert n_kept == 8 + len(trainer._queue) and scored > n_kept  # rows were dropped, surplus waits in the queue
    rest = []
    while True:
        more, _ = trainer.get_batch_samples(it, 2, torch.device("cpu"))
        if not more:
            break
        rest += [i for s in more for i in s["index"].tolist()]
    assert set(rest).isdisjoint(taken) and len(set(rest)) == len(rest)  # one pass: every kept row at most once
    assert len(taken) + len(rest) + len(trainer._queue) == len(kept)  # and none lost: the rest waits for next epoch


def test_training_runs_and_logs_the_filter(tmp_path, setup, tokenizer, warm):
    train = setup
    trainer = _trainer(tmp_path, train, tokenizer, warm, dco_n=16, num_train_epochs=2)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(math.isfinite(h["loss"]) for h in logs)
    assert {"dco_weight", "answer_prob", "filter_kept_fraction"} <= set(logs[0])
    assert all(0 < h["dco_weight"] <= 1 for h in logs)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    with pytest.raises(ValueError, match="resuming a run with dco_filter"):
        trainer.train(resume_from_checkpoint=str(tmp_path))


def test_unfiltered_loss_is_the_mean_weighted_nll(tmp_path, setup, tokenizer, warm):
    train = setup
    trainer = _trainer(tmp_path, train, tokenizer, warm, dco_n=16, dco_filter=False)
    batch = trainer.data_collator([train[i] for i in range(6)])
    weights = _weights(trainer, train)[:6]
    loss = trainer.compute_loss(trainer.model, batch)
    from llmpost.ops import token_logps

    logps, mask = token_logps(trainer.model, batch["input_ids"], batch["attention_mask"], batch["labels"], fused=True)
    expected = (weights.float() * -(logps.sum(-1) / mask.sum(-1))).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
