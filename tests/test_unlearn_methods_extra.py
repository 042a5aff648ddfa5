"""Tier 2 for UNDIAL, WGA, SatImp, CE-U, PDU and AltPO on the tiny real Llama (CPU) and TOFU forget01: the forget
likelihood falls; PDU's dual variable follows the hand-computed updates and resumes exactly; bad settings are errors
that name the key."""

from __future__ import annotations

import pytest
import torch
from test_unlearn_trainer import _args, _forget_logps, _model, _params
from transformers import TrainerCallback

from conftest import TOFU_DIR
from llmpost.benchmarks.tofu.data import load_split, tokenize_qa
from llmpost.data.templates import TemplateArgs
from llmpost.data.unlearn import ForgetRetainDataset
from llmpost.losses.pdu import dual_update
from llmpost.trainers.reference import Reference
from llmpost.trainers.unlearn import UnlearnConfig, UnlearnTrainer, uses_retain

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def splits01(tokenizer):
    t = TemplateArgs()
    forget = tokenize_qa(load_split("forget01", str(TOFU_DIR)).select(range(8)), tokenizer, t, 256)
    retain = tokenize_qa(load_split("retain99", str(TOFU_DIR)).select(range(20)), tokenizer, t, 256)
    return forget, retain


@pytest.fixture(scope="module")
def memorised(splits01, tokenizer, tmp_path_factory):
    """stories260K fine-tuned on the 8 forget rows until it has memorised them (the situation unlearning starts from:
    UNDIAL, WGA and SatImp act on tokens the model predicts with high probability), saved so that a reference can be
    reloaded from its path."""
    from llmpost.data.collators import pad_examples
    from llmpost.ops import masked_mean, token_logps

    forget, _ = splits01
    model = _model()
    batch = pad_examples([forget[i] for i in range(len(forget))], tokenizer.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        logps, mask = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        loss = -masked_mean(logps, mask).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1.5, loss.item()  # from ~5.4 nats per answer token
    path = tmp_path_factory.mktemp("memorised")
    model.save_pretrained(path)
    return path


def _memorised_model(path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


@pytest.fixture(scope="module")
def templates01(tokenizer):
    from llmpost.data.templates import encode_qa
    from llmpost.data.unlearn import TemplateAnswers, load_template_answers

    questions = load_split("forget01", str(TOFU_DIR)).select(range(8))["question"]
    return TemplateAnswers(load_template_answers(TOFU_DIR / "idontknow.jsonl"),
                           lambda i, a: encode_qa(tokenizer, TemplateArgs(), questions[i], a, 256))


@pytest.mark.parametrize("method,extra", [
    ("undial", {}), ("undial", {"alpha": 1.0, "token_reduction": "batch"}),
    ("wga", {}), ("wga", {"token_reduction": "batch"}), ("satimp", {}),
    ("ceu", {}), ("pdu", {"pdu_retain_eps": 1.0, "pdu_dual_warmup_epochs": 0}),
    ("pdu", {"pdu_retain_eps": 1.0, "pdu_label_positions": True}), ("altpo", {}),
])
def test_each_new_method_lowers_forget_likelihood(tmp_path, splits01, templates01, memorised, tokenizer, method, extra):
    forget, retain = splits01
    model = _memorised_model(memorised)
    before_logps, before = _forget_logps(model, forget, tokenizer), _params(model)
    args = _args(tmp_path, method=method, **extra)
    ds = ForgetRetainDataset(forget, retain if uses_retain(args) else None, templates=templates01 if method == "altpo" else None)
    trainer = UnlearnTrainer(model, args, ds, tokenizer)
    if method == "undial":  # the teacher's full-vocabulary logits: a frozen copy for full fine-tuning
        assert trainer.reference == Reference.MODEL and trainer.ref_model is not None
    if method == "altpo":
        assert trainer.reference == Reference.PRECOMPUTED and trainer.ref_template_logps is not None
    trainer.train()
    after = _params(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    after_logps = _forget_logps(trainer.model, forget, tokenizer)
    assert after_logps.mean() < before_logps.mean() - 1.0, (before_logps.mean(), after_logps.mean())
    logged = [h for h in trainer.state.log_history if "forget_loss" in h]
    assert len(logged) == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logged)
    assert ("retain_loss" in logged[0]) == (method not in ("ceu",) and args.alpha > 0 or method == "pdu")
    if method == "undial":
        # the first step starts at the teacher: the loss is the CE to the adjusted target, finite and positive
        assert logged[0]["forget_loss"] > 0


def _pdu_args(tmp_path, **kw):
    base = dict(method="pdu", pdu_retain_eps=2.0, pdu_dual_step_size=0.5, alpha=1.0, max_steps=4,
                per_device_train_batch_size=4)
    base.update(kw)
    return _args(tmp_path, **base)


@pytest.mark.parametrize("warmup", [0.0, 1.0])
def test_pdu_dual_variable_follows_hand_updates(tmp_path, splits01, tokenizer, warmup):
    """lambda_{k+1} = max(0, lambda_k + eta (R_k - eps)) with R_k the step's retain NLL, once `warmup` epochs have
    passed (8 rows, batch 4: two steps an epoch); each step's loss uses lambda_k."""
    forget, retain = splits01
    trainer = UnlearnTrainer(_model(), _pdu_args(tmp_path, pdu_dual_warmup_epochs=warmup), ForgetRetainDataset(forget, retain), tokenizer)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "retain_loss" in h]
    assert len(logged) == 4
    lam = 1.0
    for step, h in enumerate(logged):
        assert h["dual_lambda"] == pytest.approx(lam, rel=1e-6, abs=1e-7)
        if step >= 2 * warmup:
            lam = max(0.0, lam + 0.5 * (h["retain_loss"] - 2.0))
    assert trainer.dual.value == pytest.approx(lam, rel=1e-5, abs=1e-6)
    assert trainer.dual.value == pytest.approx(dual_update(logged[-1]["dual_lambda"], logged[-1]["retain_loss"], 2.0, 0.5), rel=1e-5)
    if warmup:
        assert logged[1]["dual_lambda"] == 1.0 and logged[2]["dual_lambda"] == 1.0  # no update during the first epoch
    assert lam != 1.0  # the retain NLL of the untrained model is far from eps: lambda moved


def test_pdu_resume_restores_the_dual_variable(tmp_path, splits01, tokenizer):
    forget, retain = splits01
    kw = dict(per_device_train_batch_size=2, save_strategy="steps", save_steps=2, pdu_dual_warmup_epochs=0)
    full = UnlearnTrainer(_model(), _pdu_args(tmp_path / "full", **kw), ForgetRetainDataset(forget, retain), tokenizer)
    full.train()

    class StopAfter2(TrainerCallback):
        def on_step_end(self, args, state, control, **_):
            control.should_training_stop = state.global_step >= 2

    part = UnlearnTrainer(_model(), _pdu_args(tmp_path / "part", **kw), ForgetRetainDataset(forget, retain), tokenizer,
                          callbacks=[StopAfter2()])
    part.train()
    lam_at_2 = part.dual.value
    assert part.state.global_step == 2 and lam_at_2 != 1.0
    resumed = UnlearnTrainer(_model(), _pdu_args(tmp_path / "part", **kw), ForgetRetainDataset(forget, retain), tokenizer)
    assert resumed.dual.value == 1.0  # before resuming: alpha
    seen = []

    class Peek(TrainerCallback):
        def on_step_begin(self, args, state, control, **_):
            seen.append(resumed.dual.value)

    resumed.add_callback(Peek())
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "out" / "checkpoint-2"))
    assert seen[0] == pytest.approx(lam_at_2, rel=1e-12)  # step 3 starts from the saved lambda
    assert resumed.dual.value == pytest.approx(full.dual.value, rel=1e-6)
    a, b = _params(full.model), _params(resumed.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_new_method_defaults_and_validation():
    cfg = dict(output_dir="x", use_cpu=True)
    assert UnlearnConfig(**cfg, method="undial").alpha == 0.0  # open-unlearning UNDIAL.yaml
    assert UnlearnConfig(**cfg, method="satimp").alpha == 0.1  # SatImp README / class default
    assert UnlearnConfig(**cfg, method="wga").alpha == 1.0 and UnlearnConfig(**cfg, method="npo").alpha == 1.0
    assert UnlearnConfig(**cfg, method="undial", alpha=2.0).alpha == 2.0
    c = UnlearnConfig(**cfg, method="undial")
    assert (c.undial_beta, c.wga_beta, c.satimp_beta1, c.satimp_beta2, c.ceu_ignore_first_n) == (10.0, 1.0, 5.0, 1.0, 1)
    assert c.needs_ref_logits and not UnlearnConfig(**cfg, method="wga").needs_ref_logits
    with pytest.raises(ValueError, match="pdu_retain_eps: method 'pdu' needs"):
        UnlearnConfig(**cfg, method="pdu")
    with pytest.raises(ValueError, match="pdu_retain_eps: must be >= 0"):
        UnlearnConfig(**cfg, method="pdu", pdu_retain_eps=-0.1)
    with pytest.raises(ValueError, match="retain_loss: method 'pdu'"):
        UnlearnConfig(**cfg, method="pdu", pdu_retain_eps=0.3, retain_loss="kl", reference="model")
    for key in ("undial_beta", "wga_beta", "satimp_beta1", "satimp_beta2", "ceu_ignore_first_n", "pdu_dual_step_size",
                "pdu_dual_warmup_epochs", "alpha"):
        with pytest.raises(ValueError, match=f"{key}: must be >= 0"):
            UnlearnConfig(**cfg, method="pdu", pdu_retain_eps=0.3, **{key: -1})
    with pytest.raises(ValueError, match="token_reduction: 'tokens' is not one of"):
        UnlearnConfig(**cfg, method="wga", token_reduction="tokens")
    with pytest.raises(ValueError, match="reference: 'precomputed' cannot serve method 'undial'"):
        UnlearnConfig(**cfg, method="undial", reference="precomputed")


@pytest.mark.parametrize("method", ["undial", "wga", "satimp", "ceu", "pdu", "altpo"])
def test_gradient_accumulation_invariance_new_methods(tmp_path, splits01, templates01, memorised, tokenizer, method):
    """One optimizer step on 8 examples: (batch 8, accumulation 1) == (batch 2, accumulation 4) with the per-example
    token reduction (``token_reduction: example``). Plain SGD, lr 1: the step is the gradient itself (Adam's first step,
    ``lr * g / |g|``, would blow float32 noise in near-zero gradient entries up to ``lr``)."""
    forget, retain = splits01
    extra = {"pdu_retain_eps": 1.0, "pdu_dual_warmup_epochs": 0} if method == "pdu" else {}
    results = []
    for bs, ga in ((8, 1), (2, 4)):
        args = _args(tmp_path / f"{bs}", method=method, per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                     max_steps=1, learning_rate=1.0, optim="sgd", max_grad_norm=1e9, **extra)
        ds = ForgetRetainDataset(forget, retain if uses_retain(args) else None, seed=3,
                                 templates=templates01 if method == "altpo" else None)
        model = _memorised_model(memorised)
        before = _params(model)
        trainer = UnlearnTrainer(model, args, ds, tokenizer)
        trainer.train()
        results.append({n: p - before[n] for n, p in _params(trainer.model).items()})
    scale = max(v.abs().max().item() for v in results[0].values())  # PDU's and AltPO's gradients are large
    assert scale > 0
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_undial_with_lora_uses_the_peft_base_as_teacher(tmp_path, splits01, memorised, tokenizer):
    from peft import LoraConfig

    forget, retain = splits01
    model = _memorised_model(memorised)
    before_logps = _forget_logps(model, forget, tokenizer)
    peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
    trainer = UnlearnTrainer(model, _args(tmp_path, method="undial", learning_rate=2e-2), ForgetRetainDataset(forget),
                             tokenizer, peft_config=peft_config)
    assert trainer.reference == Reference.PEFT_BASE and trainer.ref_model is None
    trainer.train()
    assert _forget_logps(trainer.model, forget, tokenizer).mean() < before_logps.mean() - 1.0
    with trainer.model.disable_adapter():
        torch.testing.assert_close(_forget_logps(trainer.model, forget, tokenizer), before_logps, rtol=1e-5, atol=1e-4)


def test_alpha_parses_from_the_command_line():
    from llmpost.config import parse_config

    (args,) = parse_config((UnlearnConfig,), ["--output_dir", "x", "--use_cpu", "true", "--method", "undial", "--alpha", "0.5"])
    assert args.alpha == 0.5
    (args,) = parse_config((UnlearnConfig,), ["--output_dir", "x", "--use_cpu", "true", "--method", "undial"])
    assert args.alpha == 0.0
