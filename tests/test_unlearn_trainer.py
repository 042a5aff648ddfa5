"""Tier 2: the unlearning trainer on the tiny real Llama (CPU): parameters move, the forget likelihood falls,
references behave, gradient accumulation is invariant, training resumes exactly, a non-finite loss stops cleanly."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from conftest import TINY_MODEL, TOFU_DIR
from llmpost.benchmarks.tofu.data import load_split, tokenize_qa
from llmpost.data.collators import pad_examples
from llmpost.data.templates import TemplateArgs
from llmpost.data.unlearn import ForgetRetainDataset
from llmpost.ops import masked_mean, sequence_logps, token_logps
from llmpost.trainers.metrics import NonFiniteLossError
from llmpost.trainers.reference import Reference
from llmpost.trainers.unlearn import UnlearnConfig, UnlearnTrainer


@pytest.fixture(scope="module")
def splits(tokenizer):
    t = TemplateArgs()
    forget = tokenize_qa(load_split("forget10", str(TOFU_DIR)).select(range(8)), tokenizer, t, 256)
    retain = tokenize_qa(load_split("retain90", str(TOFU_DIR)).select(range(20)), tokenizer, t, 256)
    return forget, retain


def _model():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32)


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=5e-3, max_steps=3,
                use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, seed=0, disable_tqdm=True,
                lr_scheduler_type="constant", dataloader_drop_last=True)
    base.update(kw)
    return UnlearnConfig(**base)


@torch.no_grad()
def _forget_logps(model, forget, tokenizer):
    batch = pad_examples([forget[i] for i in range(len(forget))], tokenizer.pad_token_id)
    logps, mask = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return sequence_logps(logps, mask)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "method,extra",
    [("grad_ascent", {}), ("grad_diff", {}), ("grad_diff", {"retain_loss": "kl"}), ("npo", {}), ("npo_rt", {}),
     ("npo", {"reference": "model", "ref_model_name_or_path": str(TINY_MODEL)}), ("simnpo", {"simnpo_beta": 0.1, "alpha": 0.1})],
)
def test_each_method_lowers_forget_likelihood(tmp_path, splits, tokenizer, method, extra):
    forget, retain = splits
    model = _model()
    before_logps = _forget_logps(model, forget, tokenizer)
    before = _params(model)
    trainer = UnlearnTrainer(model, _args(tmp_path, method=method, **extra), ForgetRetainDataset(forget, retain), tokenizer)
    trainer.train()
    after = _params(trainer.model)
    assert any(not torch.equal(before[n], after[n]) for n in before)
    after_logps = _forget_logps(trainer.model, forget, tokenizer)
    assert after_logps.mean() < before_logps.mean() - 1.0, (before_logps.mean(), after_logps.mean())
    logged = [h for h in trainer.state.log_history if "forget_loss" in h]
    assert logged and all(torch.isfinite(torch.tensor(h["loss"])) for h in logged)
    if method in ("grad_diff", "npo_rt", "simnpo"):
        assert "retain_loss" in logged[0]
    if extra.get("retain_loss") == "kl":
        assert trainer.reference == Reference.MODEL and trainer.ref_model is not None
        assert logged[0]["retain_loss"] == pytest.approx(0.0, abs=1e-6)  # the first step starts at the reference


def test_precomputed_reference_is_the_initial_model_and_keeps_no_second_model(tmp_path, splits, tokenizer):
    forget, retain = splits
    model = _model()
    expected = _forget_logps(copy.deepcopy(model), forget, tokenizer)
    trainer = UnlearnTrainer(model, _args(tmp_path, method="npo_rt"), ForgetRetainDataset(forget, retain), tokenizer)
    assert trainer.reference == Reference.PRECOMPUTED and trainer.ref_model is None
    torch.testing.assert_close(trainer.ref_forget_logps, expected, rtol=1e-5, atol=1e-4)
    # the fused LM head (no full logits) and the plain logits path agree
    batch = pad_examples([forget[i] for i in range(4)], tokenizer.pad_token_id)
    with torch.no_grad():
        fused, m1 = token_logps(trainer.model, batch["input_ids"], batch["attention_mask"], batch["labels"], fused=True)
        plain, m2 = token_logps(trainer.model, batch["input_ids"], batch["attention_mask"], batch["labels"], fused=False)
    assert torch.equal(m1, m2)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)


def test_lora_uses_peft_base_as_reference_and_trains_adapters_only(tmp_path, splits, tokenizer):
    from peft import LoraConfig

    forget, retain = splits
    model = _model()
    before_logps = _forget_logps(model, forget, tokenizer)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
    trainer = UnlearnTrainer(model, _args(tmp_path, method="npo", learning_rate=2e-2), ForgetRetainDataset(forget, retain),
                             tokenizer, peft_config=peft_config)
    assert trainer.reference == Reference.PEFT_BASE and trainer.ref_model is None
    trainer.train()
    peft_model = trainer.model
    for name, p in peft_model.named_parameters():
        if "lora_" not in name:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p.detach(), base_before[key]), name
    assert _forget_logps(peft_model, forget, tokenizer).mean() < before_logps.mean() - 0.5
    with peft_model.disable_adapter():  # the reference: adapters off gives back the starting model exactly
        torch.testing.assert_close(_forget_logps(peft_model, forget, tokenizer), before_logps, rtol=1e-5, atol=1e-4)


def test_gradient_accumulation_invariance(tmp_path, splits, tokenizer):
    """One optimizer step on 8 examples: (batch 8, accumulation 1) == (batch 2, accumulation 4)."""
    forget, retain = splits
    results = []
    for bs, ga in ((8, 1), (2, 4)):
        trainer = UnlearnTrainer(_model(), _args(tmp_path / f"{bs}", method="npo_rt", per_device_train_batch_size=bs,
                                                 gradient_accumulation_steps=ga, max_steps=1, learning_rate=1e-3,
                                                 max_grad_norm=1e9),
                                 ForgetRetainDataset(forget, retain, seed=3), tokenizer)
        trainer.train()
        results.append(_params(trainer.model))
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, splits, tokenizer):
    forget, retain = splits
    kw = dict(method="npo_rt", max_steps=4, per_device_train_batch_size=2, save_strategy="steps", save_steps=2)
    full = UnlearnTrainer(_model(), _args(tmp_path / "full", **kw), ForgetRetainDataset(forget, retain), tokenizer)
    full.train()

    class StopAfter2(TrainerCallback):
        def on_step_end(self, args, state, control, **_):
            control.should_training_stop = state.global_step >= 2

    part = UnlearnTrainer(_model(), _args(tmp_path / "part", **kw), ForgetRetainDataset(forget, retain), tokenizer,
                          callbacks=[StopAfter2()])
    part.train()
    assert part.state.global_step == 2
    resumed = UnlearnTrainer(_model(), _args(tmp_path / "part", **kw), ForgetRetainDataset(forget, retain), tokenizer)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "out" / "checkpoint-2"))
    a, b = _params(full.model), _params(resumed.model)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_pairing_is_a_function_of_seed_epoch_index(splits):
    forget, retain = splits
    ds = ForgetRetainDataset(forget, retain, seed=7)
    first = [ds.retain_index(i) for i in range(8)]
    assert first == [ForgetRetainDataset(forget, retain, seed=7).retain_index(i) for i in range(8)]
    ds.set_epoch(1)
    assert [ds.retain_index(i) for i in range(8)] != first  # a new epoch draws new pairs


def test_non_finite_loss_stops_and_names_the_step(tmp_path, splits, tokenizer):
    forget, retain = splits

    class Poison(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **_):
            if state.global_step == 2:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))

    args = _args(tmp_path, method="npo", max_steps=4, per_device_train_batch_size=2, save_strategy="steps", save_steps=1)
    trainer = UnlearnTrainer(_model(), args, ForgetRetainDataset(forget, retain), tokenizer, callbacks=[Poison()])
    with pytest.raises(NonFiniteLossError, match="optimizer step 3"):
        trainer.train()
    good = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "checkpoint-2")
    assert all(torch.isfinite(p).all() for p in good.parameters())
    assert not (tmp_path / "out" / "checkpoint-3").exists()


def test_config_validation_messages():
    with pytest.raises(ValueError, match="method: 'npoo' is not one of"):
        UnlearnConfig(output_dir="x", method="npoo", use_cpu=True)
    with pytest.raises(ValueError, match="beta: must be > 0"):
        UnlearnConfig(output_dir="x", beta=0.0, use_cpu=True)
    with pytest.raises(ValueError, match="cannot serve retain_loss 'kl'"):
        UnlearnConfig(output_dir="x", method="grad_diff", retain_loss="kl", reference="precomputed", use_cpu=True)


def test_epoch_callback_sets_dataset_and_collator_epoch_from_state():
    from types import SimpleNamespace

    from llmpost.epochs import EpochCallback, current_epoch

    class Aware:
        def __init__(self):
            self.epoch = None

        def set_epoch(self, epoch):
            self.epoch = epoch

    ds, collator, extra = Aware(), Aware(), Aware()
    loader = SimpleNamespace(dataset=ds, collate_fn=collator)
    args = SimpleNamespace(dataloader_num_workers=0, dataloader_persistent_workers=False)
    cb = EpochCallback(extra)
    for state_epoch, expected in ((None, 0), (0.0, 0), (1.0, 1), (1.6, 1), (2.9999, 2)):  # resumed at 1.6: epoch 1
        state = SimpleNamespace(epoch=state_epoch)
        assert current_epoch(state) == expected
        cb.on_epoch_begin(args, state, None, train_dataloader=loader)
        assert ds.epoch == collator.epoch == extra.epoch == expected
    with pytest.raises(ValueError, match="dataloader_persistent_workers"):
        cb.on_train_begin(SimpleNamespace(dataloader_num_workers=2, dataloader_persistent_workers=True), None, None,
                          train_dataloader=loader)


@pytest.fixture(scope="module")
def templates(tokenizer):
    from llmpost.data.templates import encode_qa
    from llmpost.data.unlearn import TemplateAnswers, load_template_answers

    questions = load_split("forget10", str(TOFU_DIR)).select(range(8))["question"]
    answers = load_template_answers(TOFU_DIR / "idontknow.jsonl")
    assert len(answers) == 100  # 100 lines (the last without a newline, so `wc -l` says 99)
    return TemplateAnswers(answers, lambda i, a: encode_qa(tokenizer, TemplateArgs(), questions[i], a, 256))


@torch.no_grad()
def _answer_stats(model, rows, tokenizer):
    """Per-row summed log-prob and mean token probability of the answers."""
    batch = pad_examples([{k: v for k, v in r.items() if k != "template_id"} for r in rows], tokenizer.pad_token_id)
    logps, mask = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return sequence_logps(logps, mask), masked_mean(logps.exp(), mask)


@pytest.mark.parametrize("method,extra", [("flat", {}), ("flat", {"flat_divergence": "kl"}), ("flat", {"flat_divergence": "js", "flat_reduction": "batch"}),
                                          ("flat", {"flat_divergence": "reverse_kl"}), ("idk_dpo", {})])
def test_flat_and_idk_dpo_lower_forget_and_raise_template_likelihood(tmp_path, splits, templates, tokenizer, method, extra):
    """Each moves what it optimises: FLAT the answers' mean token probability (template up, forget down), IdkDPO the
    log-probs (chosen template up, rejected forget answer down)."""
    forget, retain = splits
    model = _model()
    ds = ForgetRetainDataset(forget, retain if method == "idk_dpo" else None, seed=1, templates=templates)
    forget_rows = [forget[i] for i in range(8)]
    template_rows = [ds.templates.encode(i, ds.template_index(i, 0)) for i in range(8)]
    (f_logps, f_prob), (t_logps, t_prob) = _answer_stats(model, forget_rows, tokenizer), _answer_stats(model, template_rows, tokenizer)
    lr = 1e-3 if method == "flat" else 5e-3
    trainer = UnlearnTrainer(model, _args(tmp_path, method=method, max_steps=4, learning_rate=lr, **extra), ds, tokenizer)
    if method == "idk_dpo":
        assert trainer.reference == Reference.PRECOMPUTED and trainer.ref_model is None
        # the template reference table holds, for each row, the template drawn in each planned epoch (4 steps of 4
        # rows over 8 rows: 2 epochs), equal to the initial model's log-prob; other entries are NaN
        table = trainer.ref_template_logps
        torch.testing.assert_close(table[torch.arange(8), [ds.template_index(i, 0) for i in range(8)]], t_logps,
                                   rtol=1e-5, atol=1e-4)
        assert trainer.planned_epochs(len(ds)) == 2 and 8 < int((~torch.isnan(table)).sum()) <= 16
    trainer.train()
    (f_logps2, f_prob2), (t_logps2, t_prob2) = (_answer_stats(trainer.model, rows, tokenizer) for rows in (forget_rows, template_rows))
    if method == "flat":
        assert f_prob2.mean() < f_prob.mean() - 0.05 and t_prob2.mean() > t_prob.mean() + 0.05, (f_prob.mean(), f_prob2.mean(), t_prob.mean(), t_prob2.mean())
    else:
        assert f_logps2.mean() < f_logps.mean() - 1.0 and t_logps2.mean() > t_logps.mean() + 1.0, (f_logps.mean(), f_logps2.mean(), t_logps.mean(), t_logps2.mean())
    logged = [h for h in trainer.state.log_history if "forget_loss" in h]
    assert logged and ("template_prob" in logged[0] if method == "flat" else "reward_margin" in logged[0])
    assert ("retain_loss" in logged[0]) == (method == "idk_dpo")


def test_template_draw_is_a_function_of_seed_epoch_index_and_templates_are_required(tmp_path, splits, templates, tokenizer):
    forget, _ = splits
    ds = ForgetRetainDataset(forget, None, seed=5, templates=templates)
    first = [ds[i]["template"]["template_id"] for i in range(8)]
    assert first == [ForgetRetainDataset(forget, None, seed=5, templates=templates)[i]["template"]["template_id"] for i in range(8)]
    ds.set_epoch(1)
    assert [ds[i]["template"]["template_id"] for i in range(8)] != first
    assert ds[3]["template"]["index"] == 3 and "retain" not in ds[3]
    with pytest.raises(ValueError, match="'flat' needs template answers"):
        UnlearnTrainer(_model(), _args(tmp_path, method="flat"), ForgetRetainDataset(forget), tokenizer)


def test_template_answers_file_errors(tmp_path):
    from llmpost.data.unlearn import load_template_answers
    from llmpost.utils import DataError

    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(DataError, match="holds no answer"):
        load_template_answers(tmp_path / "empty.txt")
    (tmp_path / "mixed.jsonl").write_text('plain line\n"a json string"\n{"text": "an object"}\n')
    assert load_template_answers(tmp_path / "mixed.jsonl") == ["plain line", "a json string", "an object"]
    (tmp_path / "bad.jsonl").write_text('ok\n{"text": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2"):
        load_template_answers(tmp_path / "bad.jsonl")
