"""DCO's chain-of-thought mode (``dco_mode: cot``; the authors' MATH run, allanraventos/refine ``--filter_strategy cot``):
the sampled-p^ loss against hand values, the graders, p^ from known completions -> the weight and the filter decision
(rows with p^ >= threshold dropped), the no-filter warm-up, and a few reproducible training steps on the arithmetic
task with the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY_MODEL
from llmpost.losses.dco_sampled import dco_sampled_loss

pytestmark = pytest.mark.usefixtures("one_thread")

LN2 = math.log(2.0)


# ----- the loss (tier 1) -------------------------------------------------------------------------------------------------


def test_sampled_loss_hand_values():
    logps = torch.tensor([[-LN2, -2 * LN2], [-LN2, 0.0]], dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    p_hat = torch.tensor([0.25, 0.0], dtype=torch.float64)
    loss, weight = dco_sampled_loss(logps, mask, 4, p_hat)
    # F(4, 1/4) = 4 (1/4) (3/4)^3 / (1 - (3/4)^4) = (27/64) / (175/256) = 108/175; F(4, 0) = 1 (the limit)
    torch.testing.assert_close(weight, torch.tensor([108 / 175, 1.0], dtype=torch.float64), rtol=1e-14, atol=0)
    # token-mean NLL: (ln 2 + 2 ln 2) / 2 and ln 2
    torch.testing.assert_close(loss, torch.tensor([108 / 175 * 1.5 * LN2, LN2], dtype=torch.float64), rtol=1e-14, atol=0)
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    torch.testing.assert_close(grad, torch.tensor([[-54 / 175, -54 / 175], [-1.0, 0.0]], dtype=torch.float64))
    summed, _ = dco_sampled_loss(logps, mask, 4, p_hat, "token_sum")
    torch.testing.assert_close(summed, torch.tensor([108 / 175 * 3 * LN2, LN2], dtype=torch.float64), rtol=1e-14, atol=0)
    ce, ones = dco_sampled_loss(logps, mask, 1, torch.tensor([0.9, 0.3], dtype=torch.float64))
    assert ones.tolist() == [1.0, 1.0]  # N = 1 (the authors' README command): cross-entropy whatever p^ is
    with pytest.raises(ValueError, match="p_hat must have shape"):
        dco_sampled_loss(logps, mask, 4, torch.zeros(3))


def test_graders():
    from llmpost.trainers.dco_cot import grade_samples

    texts = [["so \\boxed{7}", "7", "\\boxed{8}", "\\boxed{1} then \\boxed{7}"], ["The answer is $\\frac{1}{2}$"]]
    golds = ["7", "\\frac{1}{2}"]
    # the authors' rule: the last \boxed{} equals the answer; no box is wrong
    assert grade_samples(texts, golds, "boxed_match") == [[True, False, False, True], [False]]
    assert grade_samples(texts, golds, "math_verify")[1] == [True]  # math-verify extracts the unboxed answer too
    with pytest.raises(ValueError, match="2 gold answers"):
        grade_samples(texts[:1], golds)


def test_config_errors_name_the_key():
    from llmpost.trainers.dco import DCOConfig

    base = dict(output_dir="/tmp/x", use_cpu=True, report_to="none")
    for kwargs, key in [({"dco_mode": "sampled"}, "dco_mode"), ({"dco_mode": "cot", "cot_num_samples": 0}, "cot_num_samples"),
                        ({"cot_grader": "exact"}, "cot_grader"), ({"cot_backend": "sglang"}, "cot_backend"),
                        ({"cot_warmup_steps": -1}, "cot_warmup_steps"), ({"dco_mode": "cot", "dco_threshold": 1.5}, "dco_threshold")]:  # fmt: skip
        with pytest.raises(ValueError, match=key):
            DCOConfig(**base, **kwargs)
    cot = DCOConfig(**base, dco_mode="cot", dco_n=1, dco_threshold=1.0)  # p^ < 1: drop only the always-solved rows
    assert cot.filtering and cot.scoring
    assert not DCOConfig(**base, dco_mode="cot", dco_n=1, dco_filter=False).scoring  # plain cross-entropy


# ----- the trainer (tier 2) ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rows(tokenizer):
    from llmpost.benchmarks.math.data import MathArguments, tokenize_math

    data_args = MathArguments(task="arithmetic", arithmetic_train_size=24, user_start_tag="Question: ",
                              user_end_tag="\n", asst_start_tag="Answer: ")  # fmt: skip
    return tokenize_math(data_args.problems("train"), tokenizer, data_args, "solution", 64, generation_columns=True)


def _trainer(tmp_path, train, tokenizer, **kw):
    from transformers import AutoModelForCausalLM

    from llmpost.trainers.dco import DCOConfig, DCOTrainer

    kw = {"dco_mode": "cot", "dco_n": 4, "dco_threshold": 0.5, "cot_num_samples": 4, "cot_max_new_tokens": 6,
          "cot_warmup_steps": 1, "learning_rate": 1e-3, **kw}  # fmt: skip
    args = DCOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=2,
                     gradient_accumulation_steps=2, logging_steps=1, save_strategy="no", disable_tqdm=True, seed=0,
                     **kw)  # fmt: skip
    return DCOTrainer(AutoModelForCausalLM.from_pretrained(TINY_MODEL), args, train, tokenizer)


def _expected_p(answer: str, n: int = 4) -> float:
    return (int(answer) % (n + 1)) / n  # what the fake sampler below makes of a row: 0, 1/4, 1/2, 3/4 or 1


def _fake_sampler(train, calls):
    """Stands in for generate_samples: for a row with answer a, (a mod 5) of its 4 samples box the answer, the others
    box -1; records (prompts, settings) of every call."""
    answer_of = {tuple(p): a for p, a in zip(train["prompt_ids"], train["answer"])}

    def fake(model, tokenizer, prompts, settings):
        calls.append(([answer_of[tuple(p)] for p in prompts], settings))
        out = []
        for p in prompts:
            a = answer_of[tuple(p)]
            k = round(_expected_p(a, settings.n) * settings.n)
            out.append([f"So the sum is \\boxed{{{a}}}."] * k + ["\\boxed{-1}"] * (settings.n - k))
        return out

    return fake


def test_p_hat_weight_filter_and_warmup_from_known_samples(tmp_path, rows, tokenizer, monkeypatch):
    import llmpost.trainers.dco_cot as dco_cot
    from llmpost.ops import token_logps

    calls = []
    monkeypatch.setattr(dco_cot, "generate_samples", _fake_sampler(rows, calls))
    trainer = _trainer(tmp_path, rows, tokenizer, cot_seed=7)
    answers = rows["answer"]
    it = iter(trainer.get_train_dataloader())
    cpu = torch.device("cpu")

    # step 0 < cot_warmup_steps: nothing sampled, one global batch of candidates trains whole, with p^ = 0
    warm, _ = trainer.get_batch_samples(it, 2, cpu)
    assert calls == [] and len(warm) == 2
    warm_rows = [i for s in warm for i in s["index"].tolist()]
    assert len(set(warm_rows)) == 4 and all(s["p_hat"].tolist() == [0.0, 0.0] for s in warm)
    assert trainer._filter_counts.tolist() == [0.0, 0.0]  # warm-up rows are not counted as scored

    # after the warm-up: p^ from the graded samples; rows with p^ >= 0.5 are dropped
    trainer.state.global_step = 1
    samples, _ = trainer.get_batch_samples(it, 2, cpu)
    scored = [a for answers_of_call, _ in calls for a in answers_of_call]
    assert len(calls) >= 1 and all(len(c[0]) == 4 for c in calls)  # one call per global batch of candidates (2 x 2)
    settings = calls[0][1]
    assert (settings.n, settings.sampling.temperature, settings.max_new_tokens) == (4, 1.0, 6)
    stride = math.ceil(4 * 4 / 64)  # generation batches per call: 4 rows x 4 samples in batches of 64 rows
    assert [s.seed for _, s in calls] == [7 + c * stride for c in range(len(calls))]
    taken = [i for s in samples for i in s["index"].tolist()]
    kept = [a for a in scored if _expected_p(a) < 0.5]
    assert len(taken) == 4 and len(set(taken)) == 4 and not set(taken) & set(warm_rows)
    for s in samples:  # every trained row is a hard one, carrying the p^ its samples gave
        expected = [_expected_p(answers[i]) for i in s["index"].tolist()]
        assert all(p < 0.5 for p in expected)
        assert s["p_hat"].tolist() == expected
    assert trainer._filter_counts.tolist() == [len(scored), len(kept)] and len(kept) < len(scored)
    assert len(trainer._queue) == len(kept) - 4 == len(trainer._queue_p)  # surplus hard rows wait, with their p^

    # the loss of a kept micro-batch: F(4, p^) x token-mean NLL, F(4, 1/4) = 108/175, F(4, 0) = 1
    batch = next(s for s in samples if 0.25 in s["p_hat"].tolist())
    weights = {0.0: 1.0, 0.25: 108 / 175}
    w = torch.tensor([weights[p] for p in batch["p_hat"].tolist()])
    logps, mask = token_logps(trainer.model, batch["input_ids"], batch["attention_mask"], batch["labels"], fused=True)
    expected = (w * -(logps.sum(-1) / mask.sum(-1))).mean()
    torch.testing.assert_close(trainer.compute_loss(trainer.model, batch), expected, rtol=1e-5, atol=1e-6)


def test_without_the_filter_every_row_trains_with_its_weight(tmp_path, rows, tokenizer, monkeypatch):
    import llmpost.trainers.dco_cot as dco_cot

    calls = []
    monkeypatch.setattr(dco_cot, "generate_samples", _fake_sampler(rows, calls))
    trainer = _trainer(tmp_path, rows, tokenizer, dco_filter=False, cot_warmup_steps=0)
    it, taken, p_hat = iter(trainer.get_train_dataloader()), [], []
    while samples := trainer.get_batch_samples(it, 2, torch.device("cpu"))[0]:  # one epoch
        taken += [i for s in samples for i in s["index"].tolist()]
        p_hat += [p for s in samples for p in s["p_hat"].tolist()]
    assert sorted(taken) == list(range(len(rows)))  # every row trains once: nothing dropped, easy rows included
    assert p_hat == [_expected_p(rows["answer"][i]) for i in taken] and max(p_hat) >= 0.5
    assert [a for c, _ in calls for a in c] == [rows["answer"][i] for i in taken]  # one call per global batch of 4
    assert trainer._queue == [] and trainer._filter_counts.tolist() == [len(rows), len(rows)]


def test_missing_generation_columns_is_an_error(tmp_path, rows, tokenizer):
    with pytest.raises(ValueError, match=r"lacks \['prompt_ids', 'answer'\]"):
        _trainer(tmp_path, rows.remove_columns(["prompt_ids", "answer"]), tokenizer)


def test_vllm_backend_without_vllm_fails_before_training(tmp_path, rows, tokenizer, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ImportError, match="cot_backend: 'vllm' needs vLLM"):
        _trainer(tmp_path, rows, tokenizer, cot_backend="vllm")


def _run(tmp_path, train, tokenizer, monkeypatch, **kw):
    """A few steps with the real sampler (the tiny model, 4 samples of 6 tokens per row), recording its samples."""
    import llmpost.trainers.dco_cot as dco_cot
    from llmpost.generation import generate_samples

    seen = []

    def spy(*a, **k):
        out = generate_samples(*a, **k)
        seen.append(out)
        return out

    monkeypatch.setattr(dco_cot, "generate_samples", spy)
    trainer = _trainer(tmp_path, train, tokenizer, max_steps=3, **kw)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    params = [p.detach().clone() for p in trainer.model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, params))
    return trainer, seen, params


def test_training_steps_are_reproducible_from_the_seeds(tmp_path, rows, tokenizer, monkeypatch):
    trainer, seen, params = _run(tmp_path / "a", rows, tokenizer, monkeypatch)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(math.isfinite(h["loss"]) for h in logs)
    assert "filter_scored" not in logs[0]  # step 1 is the warm-up: nothing sampled
    assert len(seen) == 2 and all(len(call) == 4 and all(len(s) == 4 for s in call) for call in seen)  # steps 2, 3
    assert all(h["filter_scored"] == 4 and 0 <= h["filter_p_hat"] <= 1 and "p_hat" in h for h in logs[1:])
    # Same seeds, same run: bitwise-identical samples and weights (one thread, CPU: the claim is exact reproducibility)
    _, seen2, params2 = _run(tmp_path / "b", rows, tokenizer, monkeypatch)
    assert seen2 == seen and all(torch.equal(a, b) for a, b in zip(params, params2))
    # Another cot_seed draws other samples from the same model and rows
    _, seen3, _ = _run(tmp_path / "c", rows, tokenizer, monkeypatch, cot_seed=99)
    assert seen3 != seen
