"""Tier 3: ``recipes/npo_tofu.py`` on two CPU processes under DDP, DeepSpeed ZeRO-3 (and ZeRO-2), checked rank by rank.

An exit code of 0 proves nothing (``accelerate launch --cpu --num_processes 2`` starts ONE process and exits 0;
DESIGN.md records ZeRO-3 without ``ddp_backend gloo`` training both ranks on the same data). Each run goes through
``tests/dist_launch_helper.py``, which runs the recipe unchanged and makes every rank dump what it saw (forget/retain
``index`` per micro-batch, its loss) and what it ended with (every parameter, gathered from the ZeRO-3 shards).
Against a single-process run with the same global batch (2 processes x 2 rows vs 1 process x 4 rows, 2 accumulation
steps, 3 optimizer steps; NPO+RT so both the forget and the retain data paths count) we check:

- two ranks really ran, under the backend asked for (DDP wrapper / DeepSpeed engine of the right ZeRO stage, with
  partitioned parameters under ZeRO-3);
- the ranks end with bitwise identical weights (and the saved model holds those weights);
- per optimizer step the ranks saw disjoint forget rows whose union is exactly the single-process step's rows, each
  paired with the same retain row;
- per optimizer step the mean of the ranks' losses, and the global gradient norm, match the single-process run;
- the precomputed reference log-probs (a sharded pass, gathered) and the final weights match the single-process run.

Tolerances (fp32 throughout; measured on this machine's 2-core CPU). The runs differ only in how rows are grouped into
micro-batches, hence in padding lengths and reduction order, which moves a per-example loss (a sum of ~100 token
log-probs, |value| up to ~800) by a few ulps:
- per-step loss (mean over ranks and micro-batches): measured <= 3e-7 relative (DDP, ZeRO-2, ZeRO-3); asserted
  rtol 1e-5.
- per-step global gradient norm (checked because AdamW hides a gradient's scale, so a summed instead of averaged
  all-reduce, or a wrong accumulation scale, would otherwise pass): measured <= 3e-6 relative (ZeRO-3, step 3;
  <= 1e-6 for DDP and ZeRO-2); asserted rtol 1e-4. Both are orders of magnitude below the 2x such a bug gives.
- final weights, as the distance to the single-process weights over the distance trained, |w - w_1| / |w_1 - w_0|
  over all parameters: measured 1e-5 (max abs difference 6e-7, after 3 AdamW steps at lr 1e-4 that move each weight
  ~2.6e-4); asserted <= 1e-2. For scale: a run on other data (data_seed 7) gives 0.63, and a run on half the global
  batch (one rank's gradient without the all-reduce) gives 0.44. The bound leaves room for AdamW's sign-like first
  step to flip a few near-zero gradient elements on another CPU (each flip costs ~2e-3 of this ratio).
- across ranks: bitwise equality (two-rank all-reduce and ZeRO-3 all-gather give every rank the same bits).

Runtime on 2 idle cores: ~15 s (single process, shared) + ~20 s per two-process run, ~80-100 s in all, plus a one-off
~1.5 min compile of DeepSpeed's shm_comm op on the first DeepSpeed run, cached in ``TORCH_EXTENSIONS_DIR`` (default
here: ``~/.cache/torch_extensions``, as in scripts/test.sh).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from conftest import assert_results_close

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TINY_MODEL = SHARED / "models" / "stories260K"
TOFU_DIR = SHARED / "data" / "tofu"
HELPER = ROOT / "tests" / "dist_launch_helper.py"

MAX_STEPS = 3
GRAD_ACC = 2
PER_DEVICE = 2  # x 2 processes; the single-process run uses 2 * PER_DEVICE
LOSS_RTOL = 1e-5
GRAD_NORM_RTOL = 1e-4
WEIGHT_RTOL = 1e-2  # |w_dist - w_single| / |w_single - w_initial|, over all parameters


def _recipe_args(output_dir: Path, per_device: int) -> list[str]:
    return [
        "--config", "configs/npo_tofu_tiny.yaml",
        "--model_name_or_path", str(TINY_MODEL),
        "--data_dir", str(TOFU_DIR),
        "--forget_split", "forget01",
        "--num_retain_authors", "2",
        "--method", "npo_rt",  # forget (NPO, precomputed reference) + retain NLL: both data paths and both terms
        "--learning_rate", "1e-4",
        "--max_steps", str(MAX_STEPS),
        "--per_device_train_batch_size", str(per_device),
        "--gradient_accumulation_steps", str(GRAD_ACC),
        "--precompute_ref_batch_size", "6",  # 40 forget rows: uneven shards, so gather_for_metrics must drop padding
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--eval_after_training", "false",
        "--report_to", "none",
        "--disable_tqdm", "true",
        "--output_dir", str(output_dir),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(dump: Path, use_cpu_flag: bool) -> dict:
    env = dict(os.environ)
    env.update(
        LLMPOST_DIST_DUMP_DIR=str(dump),
        OMP_NUM_THREADS="1",  # 2 processes on 2 cores
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TQDM_DISABLE="1",
        TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions")),
    )
    env.pop("ACCELERATE_USE_CPU", None)
    if use_cpu_flag:
        env["ACCELERATE_USE_CPU"] = "true"
    return env


def _run(cmd: list[str], env: dict, dump: Path, world_size: int) -> dict:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout[-3000:] + "\n" + proc.stderr[-6000:]) if proc.returncode else ""
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}"
    files = sorted(p.name for p in dump.glob("rank*.json"))
    assert files == [f"rank{r}.json" for r in range(world_size)], f"expected one dump per rank, got {files}"
    ranks = [json.loads((dump / f"rank{r}.json").read_text()) for r in range(world_size)]
    states = [torch.load(dump / f"rank{r}.pt") for r in range(world_size)]
    return {"ranks": ranks, "states": states, "output_dir": dump / "out"}


def _launch(tmp_path_factory, name: str, config: str, extra: list[str], use_cpu_flag: bool) -> dict:
    dump = tmp_path_factory.mktemp(name)
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", config,
        "--num_processes", "2",
        "--main_process_port", str(_free_port()),
        str(HELPER), *_recipe_args(dump / "out", PER_DEVICE), *extra,
    ]
    return _run(cmd, _env(dump, use_cpu_flag), dump, world_size=2)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    dump = tmp_path_factory.mktemp("single")
    cmd = [sys.executable, str(HELPER), *_recipe_args(dump / "out", 2 * PER_DEVICE)]
    return _run(cmd, _env(dump, use_cpu_flag=False), dump, world_size=1)


@pytest.fixture(scope="module")
def initial_params():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _launch_ddp(tmp_path_factory):
    # ACCELERATE_USE_CPU=true + distributed_type MULTI_GPU; `--cpu` would silently start one process.
    return _launch(tmp_path_factory, "ddp", "configs/accelerate/cpu_ddp.yaml", [], use_cpu_flag=True)


def _launch_zero3(tmp_path_factory):
    # DeepSpeed must not see a CPU flag (accelerate then drops DeepSpeed altogether), and needs gloo on CPU.
    return _launch(tmp_path_factory, "zero3", "configs/accelerate/cpu_zero3.yaml",
                   ["--ddp_backend", "gloo", "--use_cpu", "false"], use_cpu_flag=False)


def _launch_zero2(tmp_path_factory):
    # The GPU config itself (its JSON, all "auto"), with --num_processes 2 as a user would pass the GPU count.
    return _launch(tmp_path_factory, "zero2", "configs/accelerate/zero2.yaml",
                   ["--ddp_backend", "gloo", "--use_cpu", "false"], use_cpu_flag=False)


def _per_step(rank: dict) -> dict[int, list[dict]]:
    steps = defaultdict(list)
    for rec in rank["seen"]:
        steps[rec["step"]].append(rec)
    return steps


def _step_losses(ranks: list[dict]) -> dict[int, float]:
    """Mean over processes and accumulation micro-batches: the objective of each optimizer step."""
    losses = defaultdict(list)
    for rank in ranks:
        for step, recs in _per_step(rank).items():
            losses[step] += [r["loss"] for r in recs]
    return {step: sum(v) / len(v) for step, v in sorted(losses.items())}


def _check_against_single(run: dict, single: dict, initial_params: dict, backend: str) -> None:
    ranks, states = run["ranks"], run["states"]
    (ref_rank,), (ref_state,) = single["ranks"], single["states"]

    # --- two ranks really ran, with the backend asked for --------------------------------------------------------
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["env_rank"] == str(r["rank"]) for r in ranks)
    assert ref_rank["world_size"] == 1
    if backend == "ddp":
        assert all(r["wrapper"] == "DistributedDataParallel" and not r["deepspeed"] for r in ranks), ranks[0]["wrapper"]
    else:
        stage = {"zero2": 2, "zero3": 3}[backend]
        assert all(r["deepspeed"] and r["zero_stage"] == stage and r["wrapper"] == "DeepSpeedEngine" for r in ranks), ranks
        assert all(r["zero3_partitioned"] == (stage == 3) for r in ranks)
    assert all(r["global_step"] == MAX_STEPS for r in ranks + [ref_rank])

    # --- identical weights on both ranks, and the saved model holds them ----------------------------------------
    p0, p1 = states[0]["params"], states[1]["params"]
    assert p0.keys() == p1.keys() == ref_state["params"].keys()
    differing = [k for k in p0 if not torch.equal(p0[k], p1[k])]
    assert not differing, f"ranks ended with different weights in {differing}"
    from safetensors.torch import load_file

    saved = load_file(run["output_dir"] / "model.safetensors")
    for k, v in p0.items():
        assert k in saved, f"saved model lacks {k}"
        assert saved[k].shape == v.shape, f"saved {k} has shape {tuple(saved[k].shape)} (not gathered?)"
        assert torch.equal(saved[k].float(), v), f"saved {k} differs from the trained weights"

    # --- different data on each rank; together, exactly the single-process global batch ------------------------
    ref_steps = _per_step(ref_rank)
    rank_steps = [_per_step(r) for r in ranks]
    assert sorted(ref_steps) == list(range(MAX_STEPS))
    ref_pairs = {}
    for recs in ref_steps.values():
        for r in recs:
            ref_pairs.update(zip(r["forget_index"], r["retain_index"]))
    sizes = set()
    for step, ref_recs in ref_steps.items():
        assert len(ref_recs) == GRAD_ACC
        seen = []
        for steps in rank_steps:
            recs = steps[step]
            assert len(recs) == GRAD_ACC, f"step {step}: {len(recs)} micro-batches on a rank"
            seen.append([i for r in recs for i in r["forget_index"]])
            sizes |= {r["n"] for r in recs}
            for r in recs:  # the forget/retain pairing does not depend on the number of processes
                assert r["retain_index"] == [ref_pairs[i] for i in r["forget_index"]], f"step {step}: retain pairing differs"
        a, b = set(seen[0]), set(seen[1])
        assert len(a) == len(seen[0]) and len(b) == len(seen[1]), f"step {step}: a rank saw a row twice"
        assert not a & b, f"step {step}: both ranks saw forget rows {sorted(a & b)}"
        expected = {i for r in ref_recs for i in r["forget_index"]}
        assert a | b == expected, f"step {step}: ranks saw {sorted(a | b)}, single process {sorted(expected)}"
    assert sizes == {PER_DEVICE}, f"uneven micro-batches {sizes}: the mean of rank means would not be the global mean"

    # --- same objective and gradient per step, same reference, same final weights ------------------------------
    loss, ref_loss = _step_losses(ranks), _step_losses([ref_rank])
    for step in ref_loss:
        assert loss[step] == pytest.approx(ref_loss[step], rel=LOSS_RTOL), f"step {step}: loss {loss[step]} vs {ref_loss[step]}"
    gn, ref_gn = ranks[0]["grad_norm"], ref_rank["grad_norm"]
    assert sorted(ref_gn) == [str(s) for s in range(1, MAX_STEPS + 1)]
    for step in ref_gn:
        assert gn[step] == pytest.approx(ref_gn[step], rel=GRAD_NORM_RTOL), f"step {step}: grad norm {gn[step]} vs {ref_gn[step]}"
    ref0, ref1 = states[0]["ref_forget_logps"], states[1]["ref_forget_logps"]
    assert torch.equal(ref0, ref1)
    torch.testing.assert_close(ref0, ref_state["ref_forget_logps"], rtol=1e-5, atol=1e-4)

    dist, base = torch.cat([p0[k].flatten() for k in p0]), torch.cat([ref_state["params"][k].flatten() for k in p0])
    start = torch.cat([initial_params[k].flatten() for k in p0])
    ratio = ((dist - base).norm() / (base - start).norm()).item()
    assert ratio <= WEIGHT_RTOL, (
        f"{backend} vs single process: final weights differ by {ratio:.2e} of the distance trained (> {WEIGHT_RTOL}); "
        f"max abs difference {(dist - base).abs().max().item():.2e}"
    )


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path_factory, single, initial_params):
    _check_against_single(_launch_ddp(tmp_path_factory), single, initial_params, "ddp")


@pytest.mark.slow
def test_deepspeed_zero3_two_cpu_processes(tmp_path_factory, single, initial_params):
    _check_against_single(_launch_zero3(tmp_path_factory), single, initial_params, "zero3")


@pytest.mark.slow
def test_deepspeed_zero2_two_cpu_processes(tmp_path_factory, single, initial_params):
    _check_against_single(_launch_zero2(tmp_path_factory), single, initial_params, "zero2")


# Evaluation during training on two processes (llmpost.trainers.checkpoint_eval): TOFU on 6 rows of each split after
# every optimizer step, sharded over the ranks, with checkpoint selection.
EVAL_ARGS = ["--eval_strategy", "steps", "--eval_steps", "1", "--eval_after_training", "true", "--eval_max_examples",
             "6", "--eval_max_new_tokens", "8", "--per_device_eval_batch_size", "8", "--select", "max_forget_quality"]


@pytest.fixture(scope="module")
def retain_log(tmp_path_factory):
    from llmpost.cli import main

    out = tmp_path_factory.mktemp("retain_log")
    assert main(["eval", "tofu", "--model_name_or_path", str(TINY_MODEL), "--data_dir", str(TOFU_DIR), "--forget_split",
                 "forget01", "--max_examples", "6", "--max_new_tokens", "8", "--batch_size", "8", "--output_dir",
                 str(out)]) == 0  # fmt: skip
    return out / "TOFU_EVAL.json"


def _check_eval_during_training(run: dict, retain_log: Path, tmp_path: Path) -> None:
    """Both ranks recorded the same evaluations at every step; the run's best/ and final evaluations equal a standalone
    single-process ``llmpost eval tofu`` of the same checkpoints."""
    from llmpost.cli import main

    ev = [r["evaluations"] for r in run["ranks"]]
    assert [e["step"] for e in ev[0]] == list(range(1, MAX_STEPS + 1)) and ev[0] == ev[1]
    out = run["output_dir"]
    sel = json.loads((out / "SELECTION.json").read_text())
    assert sel["status"] == "final" and [e["summary"] for e in sel["evaluations"]] == [e["summary"] for e in ev[0]]
    for name, model_dir in (("best", out / "best"), ("final", out)):
        assert main(["eval", "tofu", "--model_name_or_path", str(model_dir), "--data_dir", str(TOFU_DIR),
                     "--forget_split", "forget01", "--max_examples", "6", "--max_new_tokens", "8", "--batch_size", "8",
                     "--retain_logs_path", str(retain_log), "--output_dir", str(tmp_path / name)]) == 0  # fmt: skip
        # 2 shards vs 1: other batches, float32 reduction noise
        assert_results_close(json.loads((tmp_path / name / "TOFU_EVAL.json").read_text()),
                             json.loads((model_dir / "eval" / "TOFU_EVAL.json").read_text()), abs_=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "zero3"])
def test_eval_during_training_two_processes(tmp_path_factory, retain_log, tmp_path, backend):
    config, extra, use_cpu = {
        "ddp": ("configs/accelerate/cpu_ddp.yaml", [], True),
        "zero3": ("configs/accelerate/cpu_zero3.yaml", ["--ddp_backend", "gloo", "--use_cpu", "false"], False),
    }[backend]
    run = _launch(tmp_path_factory, f"eval_{backend}", config,
                  [*extra, *EVAL_ARGS, "--retain_logs_path", str(retain_log)], use_cpu_flag=use_cpu)  # fmt: skip
    _check_eval_during_training(run, retain_log, tmp_path)


@pytest.mark.parametrize("name", ["single", "ddp", "zero2", "zero3", "cpu_ddp", "cpu_zero3"])
def test_accelerate_configs(name):
    """Every shipped accelerate config loads; the DeepSpeed ones point at a JSON that leaves precision, batch and
    clipping to the recipe ("auto"), builds no optimizer of its own, and (ZeRO-3) saves gathered full weights."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
    assert not cfg.use_cpu, "use_cpu makes accelerate launch start one process (and drops DeepSpeed)"
    assert cfg.num_processes == (2 if name.startswith("cpu_") else 1 if name == "single" else 8)
    if cfg.distributed_type.value != "DEEPSPEED":
        assert cfg.mixed_precision == ("no" if name.startswith("cpu_") else "bf16")
        return
    assert cfg.mixed_precision is None, "accelerate refuses mixed_precision together with deepspeed_config_file"
    ds_file = ROOT / cfg.deepspeed_config["deepspeed_config_file"]
    ds = json.loads(ds_file.read_text())
    assert "optimizer" not in ds and "scheduler" not in ds, f"{ds_file.name}: the Trainer builds these"
    assert ds["bf16"]["enabled"] == ds["fp16"]["enabled"] == "auto"
    for key in ("gradient_accumulation_steps", "gradient_clipping", "train_micro_batch_size_per_gpu"):
        assert ds[key] == "auto", f"{ds_file.name}: {key} must follow the training arguments"
    stage = ds["zero_optimization"]["stage"]
    assert stage == (2 if "zero2" in name else 3)
    assert cfg.deepspeed_config["zero3_init_flag"] == (stage == 3)
    if stage == 3:
        assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
