"""RMU (arXiv 2403.03218): the pure loss against hand-computed values, the control vector, the trainer on the tiny
model (only the named parameters change, forget states move toward c*u while retain states stay at the frozen
model's, the frozen states are exact), the bad-input errors, the recipes end to end, and 2-process DDP = 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trl import ModelConfig

from conftest import ROOT
from llmpost.benchmarks.tofu.data import TofuArguments
from llmpost.config import ConfigError, parse_config
from llmpost.losses.rmu import control_vector, rmu_loss, rmu_token_losses

SHARED = ROOT.parent / "shared"
TINY = SHARED / "models" / "stories260K"
TOFU = SHARED / "data" / "tofu"
MUSE = SHARED / "data" / "muse_news"
LAYER = 2
TRAINED = {f"model.layers.{i}.mlp.down_proj.weight" for i in range(3)}
SMALL = ["--model_name_or_path", str(TINY), "--data_dir", str(TOFU), "--forget_split", "forget01",
         "--num_retain_authors", "2", "--eval_after_training", "false", "--report_to", "none", "--disable_tqdm", "true"]


# ----- tier 1: the loss -----------------------------------------------------------------------------------------------
def test_token_losses_hand_values():
    acts = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [5.0, 5.0]]])
    control = torch.tensor([1.0, 0.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    # per-token mean over d of (h - c u)^2: row 0: (0 + 4)/2 = 2, (4 + 16)/2 = 10; row 1: (1 + 0)/2 = 0.5, masked
    ex = rmu_token_losses(acts, control, mask, "example")
    torch.testing.assert_close(ex, torch.tensor([6.0, 0.5]))
    tok = rmu_token_losses(acts, control, mask, "token")
    torch.testing.assert_close(tok.mean(), torch.tensor(12.5 / 3))  # the mean over the batch's 3 real tokens
    torch.testing.assert_close(tok, torch.tensor([12.0 * 2 / 3, 0.5 * 2 / 3]))
    # equal rows: both reductions agree; an example without tokens gives 0
    full = torch.ones(2, 2, dtype=torch.bool)
    torch.testing.assert_close(rmu_token_losses(acts, control, full, "example"), rmu_token_losses(acts, control, full, "token"))
    assert rmu_token_losses(acts, control, torch.zeros(2, 2), "example").tolist() == [0.0, 0.0]


def test_rmu_loss_terms_and_gradient():
    torch.manual_seed(0)
    f = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    r = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    frozen = r.detach() + 0.5
    c = control_vector(4, 2.0, 0).double()
    mask = torch.ones(2, 3, dtype=torch.bool)
    forget, retain = rmu_loss(f, c, mask, r, frozen, mask)
    torch.testing.assert_close(forget, ((f - c) ** 2).mean(-1).mean(-1))
    torch.testing.assert_close(retain, torch.full((2,), 0.25, dtype=torch.float64))  # (0.5)^2 everywhere
    assert rmu_loss(f, c, mask)[1] is None
    with pytest.raises(ValueError, match="frozen_retain_acts"):
        rmu_loss(f, c, mask, r)
    # d/dh of the forget term: 2 (h - c u) / (d T B)
    forget.mean().backward()
    torch.testing.assert_close(f.grad, 2 * (f.detach() - c) / (4 * 3 * 2))


def test_control_vector_is_the_authors_draw():
    c = control_vector(64, 6.5, 42)
    g = torch.Generator().manual_seed(42)
    r = torch.rand(64, generator=g)
    torch.testing.assert_close(c, r / r.norm() * 6.5)
    assert c.norm().item() == pytest.approx(6.5) and (c > 0).all()  # uniform [0, 1): every component positive
    assert torch.equal(c, control_vector(64, 6.5, 42)) and not torch.equal(c, control_vector(64, 6.5, 43))


# ----- tier 2: the trainer on the tiny model --------------------------------------------------------------------------
def _build(tmp_path, *extra, config="configs/rmu_tofu_tiny.yaml"):
    from llmpost.benchmarks.tofu.recipe import tofu_train_splits
    from llmpost.data.unlearn import ForgetRetainDataset
    from llmpost.models import load_model, load_tokenizer
    from llmpost.trainers.rmu import RmuConfig, RmuTrainer

    model_args, data_args, args = parse_config((ModelConfig, TofuArguments, RmuConfig), [
        "--config", str(ROOT / config), *SMALL, "--output_dir", str(tmp_path / "out"), "--logging_steps", "1", *extra])
    tok = load_tokenizer(model_args.model_name_or_path)
    forget, retain = tofu_train_splits(data_args, tok, args.max_length)
    model = load_model(model_args)
    from trl.trainer.utils import get_peft_config

    return RmuTrainer(model, args, ForgetRetainDataset(forget, retain, seed=args.seed), tok,
                      peft_config=get_peft_config(model_args))


def _states(model, batch, layer=LAYER):
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    return out.hidden_states[layer + 1]


def _rows(trainer, part, n=8):
    from llmpost.data.collators import IndexedRowCollator

    rows = getattr(trainer.train_dataset, part)
    return IndexedRowCollator(trainer.pad_id)([rows[i] for i in range(n)])


def _mean_dist(a, b, mask):
    m = mask.float()
    return (((a - b).norm(dim=-1) * m).sum() / m.sum()).item()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp("rmu")
    trainer = _build(tmp, "--max_steps", "20")
    frozen = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32).eval()
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    return trainer, frozen, before


def test_only_the_named_parameters_train(trained):
    trainer, _, before = trained
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == TRAINED
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for n, p in trainer.model.named_parameters() if n in TRAINED}
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == TRAINED


def test_forget_states_move_to_control_retain_states_stay(trained):
    trainer, frozen, _ = trained
    model = trainer.model.eval()
    c = trainer.control
    f, r = _rows(trainer, "forget"), _rows(trainer, "retain")
    fm, rm = f["attention_mask"].bool(), r["attention_mask"].bool()
    f_before, f_after = _states(frozen, f), _states(model, f)
    r_before, r_after = _states(frozen, r), _states(model, r)
    d_before, d_after = _mean_dist(f_before, c, fm), _mean_dist(f_after, c, fm)
    assert d_after < 0.9 * d_before, (d_before, d_after)  # measured 9.3 -> 7.9
    forget_moved = _mean_dist(f_after, f_before, fm)
    retain_moved = _mean_dist(r_after, r_before, rm)
    assert retain_moved < 0.5 * forget_moved, (retain_moved, forget_moved)


def test_truncated_forward_and_frozen_snapshot_are_exact(trained):
    """The hooked forward that stops after rmu_layer gives the full forward's states; the snapshot's frozen states
    (layers 0..2 recomputed with the saved down_proj values) equal a separately loaded starting model's."""
    trainer, frozen, _ = trained
    batch = _rows(trainer, "retain", 4)
    ids, att = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        states, layer_input = trainer._states(trainer.model, ids, att, capture_input=trainer.first_layer)
        snap = trainer._frozen_from_input(layer_input)
    assert len(trainer.decoder.layers) == 5  # restored after the truncated call
    torch.testing.assert_close(states, _states(trainer.model, batch), rtol=0, atol=1e-6)
    torch.testing.assert_close(snap, _states(frozen, batch), rtol=0, atol=1e-6)
    assert trainer.first_layer == 0 and sorted(trainer.frozen) == [0, 1, 2]


def test_frozen_copy_reference(tmp_path, trained):
    """reference via a separate frozen copy (ref_model_name_or_path): its states are the starting model's, and the
    run trains only the named parameters."""
    _, frozen, _ = trained
    t = _build(tmp_path, "--max_steps", "3", "--ref_model_name_or_path", str(TINY))
    assert t.frozen is None and t.ref_model is not None
    t.train()
    batch = _rows(t, "retain", 4)
    torch.testing.assert_close(t._reference_states(batch["input_ids"], batch["attention_mask"]), _states(frozen, batch),
                               rtol=0, atol=1e-6)
    start = frozen.state_dict()
    assert {n for n, p in t.model.named_parameters() if not torch.equal(p.detach(), start[n])} == TRAINED


def test_lora_uses_the_peft_base(tmp_path, trained):
    t = _build(tmp_path, "--max_steps", "2", "--use_peft", "true", "--lora_target_modules", ".*down_proj",
               "--rmu_param_patterns", r"model\.layers\.(0|1|2)\.mlp\.down_proj\.lora_.*")
    from llmpost.trainers.reference import Reference

    assert t.reference == Reference.PEFT_BASE and t.frozen is None
    names = {n for n, p in t.model.named_parameters() if p.requires_grad}
    assert names and all(".mlp.down_proj.lora_" in n and any(f"layers.{i}." in n for i in range(3)) for n in names)
    t.train()
    batch = _rows(t, "retain", 4)  # the base model with adapters disabled is the starting model
    torch.testing.assert_close(t._reference_states(batch["input_ids"], batch["attention_mask"]),
                               _states(trained[1], batch), rtol=0, atol=1e-6)


# ----- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, match", [
    (["--rmu_layer", "5"], r"rmu_layer: 5 is beyond the model's depth \(5 decoder layers, 0..4\)"),
    (["--rmu_param_patterns", r"model\.layers\.1\.mlp\.nope"], r"rmu_param_patterns: 'model\\\\.layers\\\\.1\\\\.mlp\\\\.nope' matches no"),
    (["--rmu_layer", "1"], r"rmu_param_patterns: \['model.layers.2.mlp.down_proj.weight'\] lie after rmu_layer 1"),
])
def test_bad_model_inputs_name_the_key(tmp_path, extra, match):
    with pytest.raises(ValueError, match=match):
        _build(tmp_path, *extra)


@pytest.mark.parametrize("extra, match", [
    (["--rmu_steering_coeff", "0"], "rmu_steering_coeff: must be > 0"),
    (["--rmu_alpha", "-1"], "rmu_alpha: must be >= 0"),
    (["--rmu_layer", "-1"], "rmu_layer: must be >= 0"),
    (["--rmu_param_patterns", "model.(layers"], "rmu_param_patterns: 'model.\\(layers' is not a regular expression"),
    (["--reference", "precomputed"], "reference: 'precomputed' is not available for method rmu"),
])
def test_bad_values_name_the_key(extra, match):
    from llmpost.trainers.rmu import RmuConfig

    with pytest.raises(ConfigError, match=match):
        parse_config((ModelConfig, TofuArguments, RmuConfig), ["--config", str(ROOT / "configs/rmu_tofu_tiny.yaml"),
                                                                "--output_dir", "x", *extra])


def test_recipe_refuses_before_writing_anything(tmp_path, monkeypatch):
    from test_config import _recipe_types

    monkeypatch.chdir(ROOT)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="rmu_layer: 7 is beyond"):
        _recipe_types("npo_tofu").main(["--config", "configs/rmu_tofu_tiny.yaml", *SMALL, "--rmu_layer", "7",
                                        "--output_dir", str(out)])
    assert not out.exists()


def test_unlearn_trainer_refuses_rmu(tmp_path):
    from llmpost.trainers.unlearn import UnlearnTrainer

    t = _build(tmp_path)
    with pytest.raises(ValueError, match="RmuTrainer"):
        UnlearnTrainer(t.model, t.args, t.train_dataset, t.processing_class)


# ----- tier 3: the recipes end to end ---------------------------------------------------------------------------------
def _changed(out: Path) -> set[str]:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32).state_dict()
    saved = load_file(out / "model.safetensors")
    return {k for k, v in saved.items() if not torch.equal(v.float(), start[k])}


def test_tofu_recipe(tmp_path, monkeypatch):
    from test_config import _recipe_types

    monkeypatch.chdir(ROOT)
    _recipe_types("npo_tofu").main(["--config", "configs/rmu_tofu_tiny.yaml", *SMALL, "--max_steps", "2",
                                    "--output_dir", str(tmp_path / "out")])
    assert _changed(tmp_path / "out") == TRAINED


@pytest.mark.parametrize("forget_file", [False, True])
def test_muse_recipe(tmp_path, monkeypatch, forget_file):
    """The raw-text recipe (MUSE's chunking), also with a local forget corpus (forget_file, as configs/rmu_wmdp.yaml)."""
    from test_config import _recipe_types

    from llmpost.benchmarks.muse.data import muse_texts

    monkeypatch.chdir(ROOT)
    extra = []
    if forget_file:
        path = tmp_path / "forget.jsonl"
        texts = muse_texts("raw/forget", MUSE)
        path.write_text("".join(json.dumps({"text": texts[i]}) + "\n" for i in (138, 298, 319)))
        extra = ["--forget_file", str(path), "--forget_text_indices", "0", "1", "2"]
    _recipe_types("npo_muse").main(["--config", "configs/rmu_muse_tiny.yaml", "--model_name_or_path", str(TINY),
                                    "--data_dir", str(MUSE), "--max_steps", "2", "--eval_after_training", "false",
                                    "--report_to", "none", "--disable_tqdm", "true", "--output_dir", str(tmp_path / "out"),
                                    *extra])
    assert _changed(tmp_path / "out") == TRAINED


# ----- tier 3: two processes (DDP) = one process ----------------------------------------------------------------------
HELPER = ROOT / "tests" / "rmu_dist_helper.py"
DIST_STEPS, PER_DEVICE, GRAD_ACC = 3, 2, 2


def _dist_args(out: Path, per_device: int) -> list[str]:
    return ["--config", "configs/rmu_tofu_tiny.yaml", *SMALL, "--max_steps", str(DIST_STEPS), "--per_device_train_batch_size",
            str(per_device), "--gradient_accumulation_steps", str(GRAD_ACC), "--learning_rate", "1e-3",
            "--save_strategy", "no", "--output_dir", str(out)]


def _dist_run(cmd: list[str], dump: Path, world: int, cpu_flag: bool) -> list[dict]:
    env = {**os.environ, "LLMPOST_DIST_DUMP_DIR": str(dump), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("ACCELERATE_USE_CPU", None)
    if cpu_flag:
        env["ACCELERATE_USE_CPU"] = "true"
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    return [{**json.loads((dump / f"rank{r}.json").read_text()), "params": torch.load(dump / f"rank{r}.pt")}
            for r in range(world)]


@pytest.mark.slow
def test_ddp_two_processes_equal_one(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (one,) = _dist_run([sys.executable, str(HELPER), *_dist_args(tmp_path / "one" / "out", 2 * PER_DEVICE)],
                       tmp_path / "one", 1, False)
    ranks = _dist_run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu_ddp.yaml",
                       "--num_processes", "2", "--main_process_port", str(port), str(HELPER),
                       *_dist_args(tmp_path / "two" / "out", PER_DEVICE)], tmp_path / "two", 2, True)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 and r["wrapper"] == "DistributedDataParallel"
                                                       for r in ranks)
    assert one["world_size"] == 1
    for step in range(DIST_STEPS):  # disjoint forget rows per rank whose union is the single process's step
        a, b = ({i for rec in r["seen"] if rec["step"] == step for i in rec["forget_index"]} for r in ranks)
        assert not a & b and a | b == {i for rec in one["seen"] if rec["step"] == step for i in rec["forget_index"]}
    p0, p1, p = ranks[0]["params"], ranks[1]["params"], one["params"]
    assert all(torch.equal(p0[k], p1[k]) for k in p0), "ranks ended with different weights"
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32).state_dict()
    keys = sorted(TRAINED)
    flat = lambda d: torch.cat([d[k].flatten() for k in keys])  # noqa: E731
    ratio = ((flat(p0) - flat(p)).norm() / (flat(p) - flat(start)).norm()).item()
    assert ratio <= 1e-2, ratio  # tests/test_distributed.py's bound: distance to the 1-process weights / distance trained
    assert all(torch.equal(p0[k], start[k]) for k in p0 if k not in TRAINED)
