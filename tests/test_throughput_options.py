"""Tier 1-2: the throughput options every llmpost trainer shares give the same numbers as the plain path.

* ``padding_free`` (:func:`llmpost.ops.pack_padded`): the real tokens of a batch laid end to end with restarting
  ``position_ids``; the log-probs, the loss and the updated weights equal the padded batch's.
* ``activation_checkpointing`` (transformers 5's name for gradient checkpointing): same loss and weights.
* Liger kernels: the options are checked before any work (an ImportError naming the extra; loss kernels stay off).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from conftest import TINY_MODEL, TOFU_DIR
from llmpost.benchmarks.tofu.data import load_split, tokenize_qa
from llmpost.data.templates import TemplateArgs
from llmpost.data.unlearn import ForgetRetainDataset
from llmpost.models import check_kernel_options
from llmpost.ops import pack_padded, sequence_logps, token_logps
from llmpost.trainers.unlearn import UnlearnConfig, UnlearnTrainer

LENGTHS = [40, 12, 25, 33, 7, 18]


def _model(fused=False):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32)
    if fused:
        add_fused_lm_head(model)
    return model


def _batch(side: str, width: int = 40):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 500, (len(LENGTHS), width), generator=g)
    att = torch.zeros_like(ids)
    for b, n in enumerate(LENGTHS):
        att[b, :n] = 1 if side == "right" else 0
        if side == "left":
            att[b, width - n:] = 1
    labels = ids.masked_fill(att == 0, -100)
    for b in range(len(LENGTHS)):  # the first 3 real tokens are "prompt"
        labels[b, att[b].nonzero()[:3, 0]] = -100
    return ids, att, labels


def test_pack_padded_layout():
    ids, att, labels = _batch("right")
    packed = pack_padded(ids, att, labels, row_length=40)
    # first-fit decreasing into rows of 40: [40], [33, 7], [25, 12], [18]
    assert packed.input_ids.shape == (4, 40)
    assert packed.position_ids[1, :33].tolist() == list(range(33)) and packed.position_ids[1, 33:].tolist() == list(range(7))
    assert packed.position_ids[3, :18].tolist() == list(range(18)) and packed.position_ids[3, 18:].tolist() == list(range(22))
    assert (packed.labels[3, 18:] == -100).all()  # fill
    real = att.bool()
    assert sorted(packed.input_ids[packed.dst].tolist()) == sorted(ids[real].tolist())
    assert int((packed.labels != -100).sum()) == int((labels != -100).sum())  # each sequence's first label is -100 already
    one_row = pack_padded(ids, att, labels)
    assert one_row.input_ids.shape == (1, sum(LENGTHS))
    with pytest.raises(ValueError, match="shorter than the longest sequence"):
        pack_padded(ids, att, labels, row_length=30)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_log_probs_and_gradients_equal_padded(side, fused, attn):
    ids, att, labels = _batch(side)
    grads = []
    for padding_free in (False, True):
        model = _model(fused)
        model.config._attn_implementation = attn
        logps, mask = token_logps(model, ids, att, labels, fused=fused, padding_free=padding_free)
        seq = sequence_logps(logps, mask)
        seq.sum().backward()
        grads.append((logps.detach(), mask, seq.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (a, ma, sa, ga), (b, mb, sb, gb) = grads
    assert torch.equal(ma, mb)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sa, sb, rtol=1e-5, atol=1e-4)
    assert sa.abs().min() > 1.0  # real, non-trivial sequence log-probs
    for name in ga:
        scale = float(ga[name].abs().max())  # float32 summation order: differences ~1e-6 of the largest entry
        torch.testing.assert_close(ga[name], gb[name], rtol=1e-4, atol=1e-5 * max(scale, 1.0), msg=name)


def test_packed_rows_never_attend_across_sequences():
    """Changing one sequence's tokens leaves the log-probs of the sequences packed next to it unchanged."""
    ids, att, labels = _batch("right")
    model = _model()
    a, mask = token_logps(model, ids, att, labels, padding_free=True)
    ids2 = ids.clone()
    ids2[1, :12] = torch.randint(3, 500, (12,), generator=torch.Generator().manual_seed(5))  # the 12-token sequence
    b, _ = token_logps(model, ids2, att, labels, padding_free=True)
    others = [i for i in range(len(LENGTHS)) if i != 1]
    torch.testing.assert_close(a[others], b[others], rtol=0, atol=1e-6)
    assert not torch.allclose(a[1], b[1])


# ----- trainers --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def splits(tokenizer):
    t = TemplateArgs()
    forget = tokenize_qa(load_split("forget10", str(TOFU_DIR)).select(range(8)), tokenizer, t, 256)
    retain = tokenize_qa(load_split("retain90", str(TOFU_DIR)).select(range(16)), tokenizer, t, 256)
    return forget, retain


def _unlearn(tmp_path, splits, tokenizer, **kw):
    forget, retain = splits
    args = UnlearnConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-3, max_steps=2,
                         use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, seed=0, disable_tqdm=True,
                         lr_scheduler_type="constant", method="npo_rt", max_grad_norm=1e9, **kw)
    trainer = UnlearnTrainer(_model(), args, ForgetRetainDataset(forget, retain, seed=3), tokenizer)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return losses, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, trainer


@pytest.fixture(scope="module")
def padded_run(tmp_path_factory, splits, tokenizer):
    losses, params, trainer = _unlearn(tmp_path_factory.mktemp("padded"), splits, tokenizer)
    return losses, params, trainer.ref_forget_logps


@pytest.mark.parametrize("option", [{"padding_free": True}, {"activation_checkpointing": True}])
def test_unlearn_trainer_options_equal_the_padded_run(tmp_path, splits, tokenizer, padded_run, option):
    losses, params, trainer = _unlearn(tmp_path, splits, tokenizer, **option)
    ref_losses, ref_params, ref_logps = padded_run
    if "activation_checkpointing" in option:
        assert trainer.model.is_activation_checkpointing  # the option took effect
    assert len(losses) == 2 and losses == pytest.approx(ref_losses, rel=1e-4)
    torch.testing.assert_close(trainer.ref_forget_logps, ref_logps, rtol=1e-5, atol=1e-4)  # the reference pass too
    moved = 0
    for name in params:
        torch.testing.assert_close(params[name], ref_params[name], rtol=1e-4, atol=1e-5, msg=name)
        moved += not torch.equal(params[name], _model().state_dict()[name])
    assert moved > 0


def test_dco_trainer_padding_free_equals_padded(tmp_path, tokenizer):
    from llmpost.benchmarks.math.data import MathArguments, tokenize_math
    from llmpost.trainers.dco import DCOConfig, DCOTrainer

    data_args = MathArguments(task="arithmetic", arithmetic_train_size=16, user_start_tag="Question: ",
                              user_end_tag="\n", asst_start_tag="Answer: ")  # fmt: skip
    train = tokenize_math(data_args.problems("train"), tokenizer, data_args, "direct", 64)
    runs = []
    for padding_free in (False, True):
        args = DCOConfig(output_dir=str(tmp_path / str(padding_free)), use_cpu=True, report_to="none", seed=0,
                         per_device_train_batch_size=4, max_steps=2, logging_steps=1, save_strategy="no",
                         disable_tqdm=True, dco_n=4, dco_filter=False, learning_rate=1e-3, padding_free=padding_free)
        trainer = DCOTrainer(_model(), args, train, tokenizer)
        trainer.train()
        runs.append(([h["loss"] for h in trainer.state.log_history if "loss" in h],
                     {n: p.detach().clone() for n, p in trainer.model.named_parameters()}))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-4)
    for name in runs[0][1]:
        torch.testing.assert_close(runs[0][1][name], runs[1][1][name], rtol=1e-4, atol=1e-5, msg=name)


# ----- Liger -----------------------------------------------------------------------------------------------------
def test_liger_options_are_checked_before_training(monkeypatch, tmp_path):
    import transformers.utils

    kw = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    monkeypatch.setattr(transformers.utils, "is_liger_kernel_available", lambda: False)
    with pytest.raises(ImportError, match=r"llmpost\[liger\]"):
        UnlearnConfig(use_liger_kernel=True, **kw)
    monkeypatch.setattr(transformers.utils, "is_liger_kernel_available", lambda: True)
    args = UnlearnConfig(use_liger_kernel=True, liger_kernel_config={"rms_norm": True}, **kw)
    assert args.liger_kernel_config == {"rms_norm": True, "fused_linear_cross_entropy": False, "cross_entropy": False}
    with pytest.raises(ValueError, match="liger_kernel_config.fused_linear_cross_entropy"):
        UnlearnConfig(use_liger_kernel=True, liger_kernel_config={"fused_linear_cross_entropy": True}, **kw)
    check_kernel_options(UnlearnConfig(**kw))  # off: nothing to check
