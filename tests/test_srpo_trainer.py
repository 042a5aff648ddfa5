"""Tier 2 (and one tier-3 test): the SRPO trainer (arXiv 2406.01660) on the tiny real Llama (CPU) and TOFU forget10
preference pairs: the six-sequence batch layout, the precomputed reference, compute_loss against srpo_loss on
independently computed log-probs, training raising the margins and the held-out implicit-reward accuracy, the three
references, padding-free and gradient-accumulation invariance, config and data errors, and two DDP processes against
one process."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import CPU_BACKENDS, TINY_MODEL, TOFU_DIR, accelerate_cmd, run_dumped
from llmpost.benchmarks.preference.data import tofu_preference_pairs
from llmpost.benchmarks.preference.evaluate import implicit_reward_metrics, pair_logps
from llmpost.data.preference import train_heldout_split
from llmpost.data.templates import PreferenceTemplates
from llmpost.losses.srpo import srpo_loss
from llmpost.ops import IGNORE_INDEX, sequence_logps, token_logps
from llmpost.trainers.reference import Reference
from llmpost.trainers.srpo import KEYS, SRPOConfig, SRPOTrainer
from llmpost.utils import DataError

pytestmark = pytest.mark.usefixtures("one_thread")

HELPER = Path(__file__).resolve().parent / "srpo_dist_helper.py"
MAX_LEN = 128
# The six sequences written out from the paper's definitions (not read from the trainer): (completion, draft held by
# the revision prompt, or None for the generation prompt).
SIX = {"w": ("chosen", None), "l": ("rejected", None), "w_given_l": ("chosen", "rejected"),
       "l_given_l": ("rejected", "rejected"), "w_given_w": ("chosen", "chosen"), "l_given_w": ("rejected", "chosen")}  # fmt: skip


@pytest.fixture(scope="module")
def pairs():
    return tofu_preference_pairs(TOFU_DIR / "forget10_perturbed.jsonl").select(range(80))


@pytest.fixture(scope="module")
def split(pairs):
    return train_heldout_split(pairs, 0.5, seed=0)  # 40 / 40 pairs, no question in both


def _model():
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32)


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-3, max_steps=2,
                max_length=MAX_LEN, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, seed=0,
                disable_tqdm=True, lr_scheduler_type="constant", dataloader_drop_last=True)
    base.update(kw)
    return SRPOConfig(**base)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _logs(trainer):
    return [h for h in trainer.state.log_history if "srpo/margin_gen" in h]


def _texts(pair, key):
    """(prompt, completion) of sequence ``key`` of a pair, by the default templates' definition."""
    target, given = SIX[key]
    q = pair["prompt"]
    prompt = f"Question: {q}\nAnswer:" if given is None else f"Question: {q}\nDraft answer: {pair[given].strip()}\nImproved answer:"
    return prompt, " " + pair[target].strip()


@torch.no_grad()
def _six_logps(model, trainer, rows) -> torch.Tensor:
    """``(len(rows), 6)`` completion log-prob sums, one unpadded forward per sequence (plain logits, no fused head),
    of the trainer's tokenised sequences ``rows``."""
    model.eval()
    out = torch.empty(len(rows), len(KEYS))
    for i, row in enumerate(rows):
        for k, key in enumerate(KEYS):
            ids, lab = torch.tensor([row[f"{key}_input_ids"]]), torch.tensor([row[f"{key}_labels"]])
            logps, mask = token_logps(model, ids, torch.ones_like(ids), lab)
            out[i, k] = sequence_logps(logps, mask)[0]
    return out


# ----- batch layout ---------------------------------------------------------------------------------------------------
def test_batch_is_six_rows_per_pair_key_major(tmp_path, pairs, tokenizer):
    """Row ``k * B + j`` of a batch of ``B`` pairs is sequence ``KEYS[k]`` of pair ``j``: its prompt (generation or
    revision holding the right draft) and its completion decode to the expected texts; padding is on the right."""
    assert KEYS == tuple(SIX)
    data = pairs.select(range(6))
    trainer = SRPOTrainer(_model(), _args(tmp_path, per_device_train_batch_size=3, max_length=512), data, tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    B = 3
    index = batch["index"].tolist()
    assert len(set(index)) == B and batch["input_ids"].shape[0] == batch["labels"].shape[0] == 6 * B
    for k, key in enumerate(KEYS):
        for j, i in enumerate(index):
            row = k * B + j
            n = int(batch["attention_mask"][row].sum())
            assert batch["attention_mask"][row, :n].all() and (batch["labels"][row, n:] == IGNORE_INDEX).all()
            ids, labels = batch["input_ids"][row, :n].tolist(), batch["labels"][row, :n].tolist()
            n_prompt = labels.count(IGNORE_INDEX)
            assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt and labels[n_prompt:] == ids[n_prompt:]
            prompt, completion = _texts(data[i], key)
            assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
            assert tokenizer.decode(ids[:n_prompt], skip_special_tokens=True) == prompt, (key, j)
            assert tokenizer.decode(ids[n_prompt:-1]).strip() == completion.strip(), (key, j)


# ----- reference and loss ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, split, tokenizer):
    """8 steps (batch 4, lr 1e-4) on the 40 training pairs, with the starting model kept aside (never patched)."""
    train, held = split
    initial = _model()
    before = {name: pair_logps(initial, tokenizer, ds, PreferenceTemplates(), MAX_LEN) for name, ds in (("train", train), ("heldout", held))}
    trainer = SRPOTrainer(_model(), _args(tmp_path_factory.mktemp("srpo"), max_steps=8, learning_rate=1e-4,
                                          length_normalize=False), train, tokenizer)  # the equations' literal sums
    ref_at_start = trainer.ref_logps.clone()
    trainer.train()
    after = {name: pair_logps(trainer.model, tokenizer, ds, PreferenceTemplates(), MAX_LEN) for name, ds in (("train", train), ("heldout", held))}
    return SimpleNamespace(trainer=trainer, initial=initial, before=before, after=after, ref_at_start=ref_at_start)


def test_precomputed_reference_is_the_initial_model_and_no_second_model_is_held(trained):
    trainer = trained.trainer
    assert trainer.reference == Reference.PRECOMPUTED and trainer.ref_model is None
    n = len(trainer.train_dataset)
    assert trained.ref_at_start.shape == (n, 6) and n == 40
    rows = list(range(0, n, 2))  # every other pair: each sits in a different place of the padded reference batches
    expected = _six_logps(trained.initial, trainer, [trainer.train_dataset[i] for i in rows])
    torch.testing.assert_close(trained.ref_at_start[rows].cpu(), expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(trainer.ref_logps, trained.ref_at_start)  # training leaves it alone


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_loss_at_the_reference_is_alpha_half_plus_one_minus_alpha(tmp_path, pairs, tokenizer, alpha):
    """Before training every log-ratio h is 0: L_self = 1/4 + 1/4, L_gen = 1, so L = alpha / 2 + (1 - alpha)."""
    trainer = SRPOTrainer(_model(), _args(tmp_path, alpha=alpha), pairs.select(range(4)), tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    assert loss.item() == pytest.approx(alpha / 2 + (1 - alpha), abs=1e-5)
    assert trainer._metrics["srpo/self_loss"][0].item() == pytest.approx(0.5, abs=1e-5)
    assert trainer._metrics["srpo/gen_loss"][0].item() == pytest.approx(1.0, abs=1e-5)


def test_compute_loss_is_srpo_loss_of_independent_log_probs(trained):
    """After training (policy != reference), compute_loss on a fixed batch (one fused, padded 24-row forward) equals
    srpo_loss of log-ratios from one unpadded plain-logits forward per sequence, policy and the kept starting model."""
    trainer = trained.trainer
    rows = [trainer.train_dataset[i] for i in (0, 5, 11, 17)]
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, trainer.data_collator(rows))
    h = _six_logps(trainer.model, trainer, rows) - _six_logps(trained.initial, trainer, rows)
    assert h.abs().max() > 1.0  # the policy really moved away from the reference
    expected = srpo_loss(*h.double().T, beta=0.1, alpha=0.5).mean()
    assert abs(expected.item() - 0.75) > 0.05
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)
    # length_normalize (the default): each log-ratio divided by its completion's token count, as TRL's IPO
    counts = torch.tensor([[sum(t != -100 for t in row[f"{key}_labels"][1:]) for key in KEYS] for row in rows])
    trainer.args.length_normalize = True
    try:
        with torch.no_grad():
            normalized = trainer.compute_loss(trainer.model, trainer.data_collator(rows))
    finally:
        trainer.args.length_normalize = False
    expected = srpo_loss(*(h / counts).double().T, beta=0.1, alpha=0.5).mean()
    assert normalized.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)
    assert abs(normalized.item() - loss.item()) > 1e-3


# ----- training -------------------------------------------------------------------------------------------------------
def test_training_raises_margins_and_heldout_implicit_reward_accuracy(trained):
    logs = _logs(trained.trainer)
    assert len(logs) == 8
    first = logs[0]
    assert first["loss"] == pytest.approx(0.75, abs=1e-5) and abs(first["rewards/margins"]) < 1e-5
    late = logs[4:]  # each step logs its own 4 pairs (noisy: one of these steps is slightly negative): average them
    for key in ("rewards/margins", "srpo/margin_gen", "srpo/margin_given_l", "srpo/margin_given_w"):
        assert sum(h[key] for h in late) / len(late) > 0.05, (key, [h[key] for h in logs])
    train = implicit_reward_metrics(*trained.after["train"], *trained.before["train"])
    held = implicit_reward_metrics(*trained.after["heldout"], *trained.before["heldout"])
    assert held["n"] == 40 and train["accuracy"] > 0.85, train
    assert held["accuracy"] > 0.6 and held["mean_margin"] > 0, held  # questions never trained on


# ----- references -----------------------------------------------------------------------------------------------------
def test_explicit_reference_model_matches_precomputed(tmp_path, pairs, tokenizer):
    """reference: model (a frozen copy loaded from ref_model_name_or_path) logs the same loss and metrics as the
    precomputed reference, at the first step (policy = reference) and the second (policy moved)."""
    logs = {}
    for ref in ("precomputed", "model"):
        extra = {"ref_model_name_or_path": str(TINY_MODEL)} if ref == "model" else {}
        trainer = SRPOTrainer(_model(), _args(tmp_path / ref, reference=ref, **extra), pairs.select(range(8)), tokenizer)
        assert trainer.reference == ref
        if ref == "model":
            assert trainer.ref_logps is None and trainer.ref_model is not None
            assert not any(p.requires_grad for p in trainer.ref_model.parameters())
        trainer.train()
        logs[ref] = _logs(trainer)
    assert len(logs["model"]) == len(logs["precomputed"]) == 2
    assert abs(logs["model"][1]["rewards/margins"]) > 1e-3
    for a, b in zip(logs["precomputed"], logs["model"]):
        for key, value in a.items():
            if key not in ("grad_norm", "learning_rate", "epoch"):
                assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_lora_uses_the_peft_base_and_trains_only_adapters(tmp_path, pairs, tokenizer):
    from peft import LoraConfig

    data = pairs.select(range(8))
    model = _model()
    base_before = _params(model)
    peft_config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = SRPOTrainer(model, _args(tmp_path, learning_rate=1e-2), data, tokenizer, peft_config=peft_config)
    assert trainer.reference == Reference.PEFT_BASE and trainer.ref_model is None and trainer.ref_logps is None
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert lora_before
    trainer.train()
    logs = _logs(trainer)
    assert logs[0]["loss"] == pytest.approx(0.75, abs=1e-6)  # lora_B starts at 0: the policy is the base exactly
    assert abs(logs[1]["rewards/margins"]) > 1e-3
    for name, p in trainer.model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad
        else:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p.detach(), base_before[key]), name
    assert any(not torch.equal(p.detach(), lora_before[n]) for n, p in trainer.model.named_parameters() if "lora_" in n)
    rows = [trainer.train_dataset[i] for i in range(2)]
    with trainer.model.disable_adapter():  # the reference: adapters off gives back the starting model
        torch.testing.assert_close(_six_logps(trainer.model, trainer, rows), _six_logps(_model(), trainer, rows),
                                   rtol=1e-5, atol=1e-4)


# ----- invariances ----------------------------------------------------------------------------------------------------
def test_padding_free_matches_padded(tmp_path, pairs, tokenizer):
    runs = {}
    for padding_free in (False, True):
        trainer = SRPOTrainer(_model(), _args(tmp_path / str(padding_free), padding_free=padding_free),
                              pairs.select(range(8)), tokenizer)  # fmt: skip
        trainer.train()
        runs[padding_free] = (trainer.ref_logps, [h["loss"] for h in _logs(trainer)], _params(trainer.model))
    (ref_a, loss_a, params_a), (ref_b, loss_b, params_b) = runs[False], runs[True]
    torch.testing.assert_close(ref_a, ref_b, rtol=1e-5, atol=1e-4)
    assert len(loss_a) == 2 and loss_b == pytest.approx(loss_a, rel=1e-5, abs=1e-6)
    for name in params_a:  # Adam normalises each entry's step, so summation-order noise in a near-zero gradient
        # can move an entry by a fraction of lr (seen: 6e-6 at lr 1e-3); a wrong log-prob would move entries by ~lr
        torch.testing.assert_close(params_a[name], params_b[name], rtol=1e-5, atol=1e-5, msg=name)


def test_gradient_accumulation_invariance(tmp_path, pairs, tokenizer):
    """One optimizer step on 4 pairs: (batch 4, accumulation 1) == (batch 2, accumulation 2). SGD: the update is
    linear in the gradient (Adam's first step, g / (|g| + eps), turns float noise in near-zero gradients into lr-sized
    differences)."""
    results = []
    for bs, ga in ((4, 1), (2, 2)):
        trainer = SRPOTrainer(_model(), _args(tmp_path / f"{bs}", per_device_train_batch_size=bs, max_steps=1,
                                              gradient_accumulation_steps=ga, max_grad_norm=1e9, optim="sgd"),
                              pairs.select(range(8)), tokenizer)  # fmt: skip
        trainer.train()
        results.append((_logs(trainer)[0], _params(trainer.model)))
    (log_a, params_a), (log_b, params_b) = results
    assert log_b["grad_norm"] == pytest.approx(log_a["grad_norm"], rel=1e-5)
    for name in params_a:
        torch.testing.assert_close(params_a[name], params_b[name], rtol=1e-5, atol=1e-6, msg=name)


# ----- errors ---------------------------------------------------------------------------------------------------------
def test_config_and_data_errors_name_the_key_or_row(tmp_path, pairs, tokenizer):
    for kw, match in (({"beta": 0.0}, "beta: must be > 0"), ({"beta": -1.0}, "beta: must be > 0"),
                      ({"alpha": 1.5}, r"alpha: must be in \[0, 1\]"), ({"alpha": -0.1}, r"alpha: must be in \[0, 1\]")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            _args(tmp_path, **kw)
    with pytest.raises(ValueError, match=r"revision_template: must contain the placeholder \{previous\}"):
        PreferenceTemplates(revision_template="Question: {prompt}\nImproved answer:")
    rows = pairs.select(range(4)).to_dict()
    rows["rejected"][2] = rows["chosen"][2] + "  "
    out = tmp_path / "bad"
    with pytest.raises(DataError, match="row 2: chosen and rejected are the same text"):
        SRPOTrainer(_model(), _args(out), datasets.Dataset.from_dict(rows), tokenizer)
    assert not out.exists()  # nothing written before the data was checked
    with pytest.raises(ValueError, match="'peft_base' needs a PEFT"):
        SRPOTrainer(_model(), _args(tmp_path, reference="peft_base"), pairs.select(range(4)), tokenizer)


# ----- two processes --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_ddp_processes_match_one_process(tmp_path):
    """2 processes x 2 pairs == 1 process x 4 pairs, 2 optimizer steps: per step the ranks trained on disjoint halves
    of the single process's pairs; same reference table, logged loss and metrics, and weights (ranks bitwise equal)."""
    from dist_launch_helper import full_params
    from srpo_dist_helper import build, record

    trainer = build(output_dir=str(tmp_path / "single"), per_device_train_batch_size=4, use_cpu=True)
    trainer.train()
    single, single_state = record(trainer), full_params(trainer.model)
    config, extra, use_cpu = CPU_BACKENDS["ddp"]
    overrides = {"output_dir": str(tmp_path / "ddp"), "per_device_train_batch_size": 2, **extra}
    ranks = run_dumped(accelerate_cmd(config, HELPER, [json.dumps(overrides)]), tmp_path, 2, use_cpu=use_cpu)
    assert [r["world_size"] for r in ranks] == [2, 2] and all(r["global_step"] == 2 for r in ranks)
    for step in (0, 1):
        one = [i for s in single["seen"] if s["step"] == step for i in s["index"]]
        a, b = ([i for s in r["seen"] if s["step"] == step for i in s["index"]] for r in ranks)
        assert len(one) == 4 and len(a) == len(b) == 2 and not set(a) & set(b) and sorted(a + b) == sorted(one)
    for r in ranks:
        torch.testing.assert_close(torch.tensor(r["ref_logps"]), torch.tensor(single["ref_logps"]), rtol=1e-5, atol=1e-4)
        assert len(r["logs"]) == len(single["logs"]) == 2
        for mine, theirs in zip(r["logs"], single["logs"]):
            for key, value in theirs.items():
                if key not in ("learning_rate", "epoch"):
                    assert mine[key] == pytest.approx(value, rel=1e-5, abs=1e-5), key
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key  # the ranks agree bitwise
        torch.testing.assert_close(value, single_state[key], rtol=1e-5, atol=1e-5, msg=key)
