"""Tier 2: the implicit-reward SFT trainer (arXiv 2507.00018) on the tiny real Llama (CPU): answer-only tokenisation,
the ce loss and its precomputed reference, the f-divergence losses through the trainer (identities at pi = pi_ref,
the hand-built reduction after training), the logged implicit reward, LoRA with the PEFT base as reference."""

from __future__ import annotations

import copy
import math

import datasets
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from conftest import TINY_MODEL, TOFU_DIR
from llmpost.benchmarks.preference.data import tofu_sft_rows
from llmpost.data.collators import pad_examples
from llmpost.data.templates import PreferenceTemplates
from llmpost.losses.fdiv_sft import fdiv_sft_loss_from_labels, sequence_token_mean
from llmpost.ops import IGNORE_INDEX, sequence_logps, token_logps
from llmpost.trainers.implicit_sft import ImplicitSFTConfig, ImplicitSFTTrainer, tokenize_sft
from llmpost.trainers.reference import Reference
from llmpost.utils import DataError

pytestmark = pytest.mark.usefixtures("one_thread")

TEMPLATES = PreferenceTemplates()


@pytest.fixture(scope="module")
def rows():
    return tofu_sft_rows(TOFU_DIR / "forget10_perturbed.jsonl").select(range(8))


@pytest.fixture(scope="module")
def data(rows, tokenizer):
    return tokenize_sft(rows, tokenizer, TEMPLATES, 256)


def _model():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32)


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=5e-3, max_steps=2,
                use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, seed=0, disable_tqdm=True,
                lr_scheduler_type="constant", dataloader_drop_last=True)
    base.update(kw)
    return ImplicitSFTConfig(**base)


def _batch(data, tokenizer, n=4):
    return pad_examples([{k: data[i][k] for k in ("input_ids", "labels", "attention_mask", "index")} for i in range(n)],
                        tokenizer.pad_token_id)


@torch.no_grad()
def _seq_logps(model, batch):
    logps, mask = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return sequence_logps(logps, mask)


# ----- tokenisation ---------------------------------------------------------------------------------------------------
def test_labels_cover_exactly_the_completion_and_eos(rows, data, tokenizer):
    assert data.column_names == ["input_ids", "labels", "attention_mask", "index"]
    assert data["index"] == list(range(len(rows)))
    for i in range(len(rows)):
        prompt = tokenizer(TEMPLATES.generation_prompt(rows[i]["prompt"]))["input_ids"]
        completion = tokenizer(TEMPLATES.completion(rows[i]["completion"]), add_special_tokens=False)["input_ids"]
        row = data[i]
        assert prompt[0] == tokenizer.bos_token_id
        assert row["input_ids"] == prompt + completion + [tokenizer.eos_token_id]
        assert row["labels"] == [IGNORE_INDEX] * len(prompt) + completion + [tokenizer.eos_token_id]
        assert row["attention_mask"] == [1] * len(row["input_ids"])
        answer = tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX], skip_special_tokens=True)
        assert answer.strip() == rows[i]["completion"].strip()


def test_truncation_follows_the_shared_rule(rows, data, tokenizer):
    """tokenize_prompt_completion's rule: exact fit unchanged; too long: the prompt keeps its first (BOS) token and its
    end (at least max_prompt_length tokens), then the completion is cut at its end (no EOS)."""
    row = data[0]
    n_prompt = row["labels"].count(IGNORE_INDEX)
    full = len(row["input_ids"])
    exact = tokenize_sft(rows.select([0]), tokenizer, TEMPLATES, full)[0]
    assert exact["input_ids"] == row["input_ids"]
    cut = tokenize_sft(rows.select([0]), tokenizer, TEMPLATES, n_prompt + 3, max_prompt_length=n_prompt)[0]
    assert len(cut["input_ids"]) == n_prompt + 3 == len(cut["labels"]) == len(cut["attention_mask"])
    assert cut["input_ids"] == row["input_ids"][: n_prompt + 3]  # the whole prompt fits in max_prompt_length
    assert tokenizer.eos_token_id not in cut["labels"]
    short = tokenize_sft(rows.select([0]), tokenizer, TEMPLATES, 20, max_prompt_length=8)[0]
    assert len(short["input_ids"]) == 20 and short["input_ids"][0] == tokenizer.bos_token_id
    assert short["input_ids"][1:8] == row["input_ids"][n_prompt - 7 : n_prompt]  # the prompt's end is kept
    assert short["labels"][8:] == row["labels"][n_prompt : n_prompt + 12]


def test_bad_rows_are_errors_naming_the_row(tokenizer):
    ds = datasets.Dataset.from_dict({"prompt": ["Who?", "Why?", "  "], "completion": ["A.", "B.", "C."]})
    with pytest.raises(DataError, match=r"row 2: column 'prompt' must be a non-empty string"):
        tokenize_sft(ds, tokenizer, TEMPLATES, 40)
    with pytest.raises(DataError, match="missing column"):
        tokenize_sft(ds.rename_column("completion", "answer"), tokenizer, TEMPLATES, 40)


# ----- ce with a precomputed reference --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ce_run(tmp_path_factory, data, tokenizer):
    model = _model()
    initial = _seq_logps(copy.deepcopy(model), pad_examples([data[i] for i in range(len(data))], tokenizer.pad_token_id))
    trainer = ImplicitSFTTrainer(model, _args(tmp_path_factory.mktemp("ce"), max_steps=6), data, tokenizer)
    assert trainer.reference == Reference.PRECOMPUTED and trainer.ref_model is None  # before training: no second model
    trainer.train()
    return trainer, initial


def test_ce_precomputes_the_reference_and_holds_no_second_model(ce_run, data):
    trainer, initial = ce_run
    assert trainer.args.fused_lm_head and trainer.ref_model is None and trainer.reference == Reference.PRECOMPUTED
    torch.testing.assert_close(trainer.ref_logps, initial, rtol=1e-5, atol=1e-4)
    counts = torch.tensor([sum(t != IGNORE_INDEX for t in lab[1:]) for lab in data["labels"]])
    assert torch.equal(trainer.ref_token_counts, counts)


def test_ce_loss_is_the_mean_of_per_sequence_token_mean_nll(ce_run, data, tokenizer):
    trainer, _ = ce_run
    batch = _batch(data, tokenizer)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = F.log_softmax(logits[:, :-1].float(), -1)
    labels = batch["labels"][:, 1:]
    hand = []
    for b in range(labels.shape[0]):
        pos = (labels[b] != IGNORE_INDEX).nonzero().squeeze(-1)
        hand.append(-logp[b, pos, labels[b, pos]].mean())
    torch.testing.assert_close(loss, torch.stack(hand).mean(), rtol=1e-5, atol=1e-5)


def test_ce_implicit_reward_starts_at_zero_and_grows(ce_run):
    trainer, _ = ce_run
    logs = [h for h in trainer.state.log_history if "rewards/sequence" in h]
    assert len(logs) == trainer.args.max_steps
    first, last = logs[0], logs[-1]
    for key in ("rewards/sequence", "rewards/token", "kl/token_estimate"):
        assert abs(first[key]) < 1e-5, (key, first[key])
        assert last[key] > 0, (key, last[key])
    assert first["logps/completion"] == pytest.approx(first["ref_logps/completion"], abs=1e-4)
    assert last["logps/completion"] > first["logps/completion"]
    assert first["loss/ce"] == pytest.approx(first["loss"], rel=1e-4)
    # rewards/sequence is beta x the log-ratio, consistent with the logged log-probs
    assert last["rewards/sequence"] == pytest.approx(
        0.1 * (last["logps/completion"] - last["ref_logps/completion"]), rel=1e-3, abs=1e-6)


# ----- the f-divergences with a frozen reference model ----------------------------------------------------------------
@pytest.mark.parametrize("divergence,at_reference", [("pearson", -1.0), ("hellinger", 2.0), ("forward_kl", 1.0)])
def test_fdiv_through_the_trainer(tmp_path, data, tokenizer, divergence, at_reference):
    trainer = ImplicitSFTTrainer(_model(), _args(tmp_path, sft_divergence=divergence), data, tokenizer)
    assert trainer.reference == Reference.MODEL and trainer.ref_model is not None and not trainer.args.fused_lm_head
    batch = _batch(data, tokenizer)
    # pi = pi_ref: pearson -2 u + sum pi^2/pi_ref = -2 + 1; hellinger 1/sqrt(u) + sum sqrt(pi pi_ref) = 1 + 1;
    # forward_kl 1/u - KL(pi_ref || pi) = 1 - 0 (u = 1 at every token), whatever the token.
    with torch.no_grad():
        assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(at_reference, abs=1e-5)
    trainer.train()
    logs = [h for h in trainer.state.log_history if f"loss/{divergence}" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    assert logs[0][f"loss/{divergence}"] == pytest.approx(at_reference, abs=1e-5)
    assert abs(logs[0]["rewards/sequence"]) < 1e-5
    # after training: the trainer's loss is the per-sequence token mean of fdiv_sft_loss_from_labels, averaged
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        token_loss, mask = fdiv_sft_loss_from_labels(trainer.model(**kw).logits, trainer.ref_model(**kw).logits,
                                                     batch["labels"], divergence)
    hand = sequence_token_mean(token_loss, mask).mean()
    assert math.isfinite(loss.item())
    torch.testing.assert_close(loss, hand, rtol=1e-5, atol=1e-6)
    assert abs(hand.item() - at_reference) > 1e-4  # the policy moved away from the reference


def test_lora_pearson_with_peft_base_trains_adapters_only(tmp_path, data, tokenizer):
    from peft import LoraConfig

    model = _model()
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                             task_type="CAUSAL_LM")
    trainer = ImplicitSFTTrainer(model, _args(tmp_path, sft_divergence="pearson", learning_rate=2e-2), data, tokenizer,
                                 peft_config=peft_config)
    assert trainer.reference == Reference.PEFT_BASE and trainer.ref_model is None
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    trainer.train()
    changed = 0
    for name, p in trainer.model.named_parameters():
        if "lora_" in name:
            changed += not torch.equal(p.detach(), lora_before[name])
        else:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p.detach(), base_before[key]), name
    assert changed > 0
    logs = [h for h in trainer.state.log_history if "loss/pearson" in h]
    assert logs[0]["loss/pearson"] == pytest.approx(-1.0, abs=1e-5)  # zero-initialised adapters: pi = pi_ref
    assert all(math.isfinite(h["loss"]) for h in logs) and len(logs) == 2


# ----- configuration --------------------------------------------------------------------------------------------------
def test_config_validation_messages():
    with pytest.raises(ValueError, match="reference: 'precomputed' .* sft_divergence 'pearson'"):
        ImplicitSFTConfig(output_dir="x", sft_divergence="pearson", reference="precomputed", use_cpu=True)
    for beta in (0.0, -0.1):
        with pytest.raises(ValueError, match="beta: must be > 0"):
            ImplicitSFTConfig(output_dir="x", beta=beta, use_cpu=True)
    with pytest.raises(ValueError, match=r"sft_divergence: 'kl' is not one of \['ce', 'pearson', 'hellinger', 'forward_kl'\]"):
        ImplicitSFTConfig(output_dir="x", sft_divergence="kl", use_cpu=True)
    with pytest.raises(ValueError, match="fused_lm_head: must be false"):
        ImplicitSFTConfig(output_dir="x", sft_divergence="hellinger", fused_lm_head=True, use_cpu=True)
    with pytest.raises(ValueError, match="padding_free: only for sft_divergence 'ce'"):
        ImplicitSFTConfig(output_dir="x", sft_divergence="forward_kl", padding_free=True, use_cpu=True)
    assert ImplicitSFTConfig(output_dir="x", use_cpu=True).fused_lm_head is True
    assert ImplicitSFTConfig(output_dir="x", sft_divergence="pearson", use_cpu=True).fused_lm_head is False


def test_reference_choices_for_ce(tmp_path, data, tokenizer):
    """peft_base needs a PEFT model; ce with reference 'model' runs the frozen copy through the fused LM head; ce
    without reward logging builds no reference at all (and runs padding-free)."""
    with pytest.raises(ValueError, match="reference: 'peft_base' needs a PEFT"):
        ImplicitSFTTrainer(_model(), _args(tmp_path, sft_divergence="pearson", reference="peft_base"), data, tokenizer)
    trainer = ImplicitSFTTrainer(_model(), _args(tmp_path, reference="model", max_steps=1), data, tokenizer)
    assert trainer.reference == Reference.MODEL and trainer.ref_model is not None and trainer.ref_logps is None
    trainer.train()
    assert abs(trainer.state.log_history[0]["rewards/sequence"]) < 1e-5
    trainer = ImplicitSFTTrainer(_model(), _args(tmp_path, log_implicit_reward=False, padding_free=True), data, tokenizer)
    assert trainer.reference is None and trainer.ref_model is None and trainer.ref_logps is None
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss/ce" in h]
    assert len(logs) == 2 and "rewards/sequence" not in logs[0] and "logps/completion" in logs[0]
