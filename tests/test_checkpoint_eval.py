"""Tier 3: benchmark evaluation during training and checkpoint selection (llmpost.trainers.checkpoint_eval), on the
tiny model with a few TOFU / MUSE rows, in-process.

One run evaluates TOFU at steps 0, 2 and 4 (eval_on_start, eval_steps 2) with ``select: max_forget_quality`` and
TensorBoard; it is checked against a run without evaluation (same weights: evaluating does not change training),
against ``llmpost eval tofu`` on the chosen and the final checkpoints (same numbers), and for its curves, its
``best/`` and ``SELECTION.json``. A second run resumes from a checkpoint and keeps its selection state; MUSE runs with
``select: muse_bench``; bad input fails before anything is written.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY_MODEL, TOFU_DIR
from conftest import assert_results_close as _close

pytestmark = pytest.mark.usefixtures("one_thread")

MUSE_DIR = ROOT.parent / "shared" / "data" / "muse_news"
EVAL = ["--eval_max_examples", "6", "--eval_max_new_tokens", "8", "--per_device_eval_batch_size", "8"]
BASE = ["--config", "configs/npo_tofu_tiny.yaml", "--model_name_or_path", str(TINY_MODEL), "--data_dir", str(TOFU_DIR),
        "--forget_split", "forget01", "--num_retain_authors", "2", "--max_steps", "4", "--learning_rate", "1e-2",
        "--logging_steps", "1", "--disable_tqdm", "true", *EVAL]  # fmt: skip
WITH_EVAL = ["--eval_strategy", "steps", "--eval_steps", "2", "--eval_on_start", "true", "--select", "max_forget_quality"]


def _recipe(name):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.main


def _cli(*argv):
    from llmpost.cli import main

    assert main(list(argv)) == 0


@pytest.fixture(scope="module")
def retain_log(tmp_path_factory):
    out = tmp_path_factory.mktemp("retain")
    _cli("eval", "tofu", "--model_name_or_path", str(TINY_MODEL), "--data_dir", str(TOFU_DIR), "--forget_split",
         "forget01", "--max_examples", "6", "--max_new_tokens", "8", "--batch_size", "8", "--output_dir", str(out))  # fmt: skip
    return out / "TOFU_EVAL.json"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, retain_log):
    import os

    out = tmp_path_factory.mktemp("runs")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        main = _recipe("npo_tofu")
        main([*BASE, *WITH_EVAL, "--retain_logs_path", str(retain_log), "--report_to", "tensorboard",
              "--output_dir", str(out / "eval")])  # fmt: skip
        main([*BASE, "--retain_logs_path", str(retain_log), "--output_dir", str(out / "plain")])
    finally:
        os.chdir(cwd)
    return out


@pytest.mark.slow
def test_evaluating_does_not_change_training(runs):
    a, b = load_file(runs / "eval" / "model.safetensors"), load_file(runs / "plain" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    _close(json.loads((runs / "eval" / "eval" / "TOFU_EVAL.json").read_text()),
           json.loads((runs / "plain" / "eval" / "TOFU_EVAL.json").read_text()))


@pytest.mark.slow
def test_curves_selection_and_best(runs):
    out = runs / "eval"
    history = json.loads((out / "log_history.json").read_text())
    evals = [h for h in history if "eval_forget_quality" in h]
    assert [h["step"] for h in evals] == [0, 2, 4]
    assert all("eval_model_utility" in h and "eval_forget_Q_A_Prob" in h for h in evals)
    assert any("loss" in h for h in history)  # the training log rows are still there, apart from the eval rows
    sel = json.loads((out / "SELECTION.json").read_text())
    assert sel["status"] == "final" and sel["select"] == "max_forget_quality"
    assert [e["step"] for e in sel["evaluations"]] == [0, 2, 4]
    fq = [e["summary"]["forget_quality"] for e in sel["evaluations"]]
    for h, e in zip(evals, sel["evaluations"]):
        assert h["eval_forget_quality"] == pytest.approx(e["summary"]["forget_quality"])
    chosen = fq.index(max(fq))
    assert sel["chosen"]["step"] == 2 * chosen and "highest forget_quality" in sel["reason"]
    best = out / "best"
    assert json.loads((best / "SELECTION.json").read_text()) == sel
    assert (best / "model.safetensors").is_file() and not (best / "optimizer.pt").exists()
    _close(json.loads((best / "eval" / "TOFU_EVAL.json").read_text()),
           json.loads((Path(sel["chosen"]["checkpoint"]) / "eval" / "TOFU_EVAL.json").read_text()))
    for e in sel["evaluations"]:  # only the chosen evaluation-only checkpoint keeps its weights
        ckpt = Path(e["checkpoint"])
        assert (ckpt / "eval" / "TOFU_SUMMARY.json").is_file()
        assert (ckpt / "model.safetensors").is_file() == (e["step"] == sel["chosen"]["step"])
    # the last step was evaluated during training: the final evaluation is that one, not a second pass
    _close(json.loads((out / "eval" / "TOFU_EVAL.json").read_text()),
           json.loads((out / "checkpoint-4" / "eval" / "TOFU_EVAL.json").read_text()))


@pytest.mark.slow
def test_report_curves_marks_the_selected_step(runs, tmp_path, capsys):
    plot = tmp_path / "curves.png"
    _cli("report", "curves", "--run", f"npo={runs / 'eval'}", "--keys", "forget_quality", "model_utility",
         "--plot", str(plot))  # fmt: skip
    out = capsys.readouterr().out
    chosen = json.loads((runs / "eval" / "SELECTION.json").read_text())["chosen"]["step"]
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("npo ")]
    assert [ln[1] for ln in lines] == [f"{s}*" if s == chosen else str(s) for s in (0, 2, 4)]
    assert plot.stat().st_size > 1000
    from llmpost.cli import main

    assert main(["report", "curves", "--run", f"plain={runs / 'plain'}"]) == 2  # no eval_* curves: a clear error
    assert "no eval_forget_quality" in capsys.readouterr().err


@pytest.mark.slow
def test_equals_standalone_evaluation(runs, retain_log, tmp_path):
    """``llmpost eval tofu`` on the chosen checkpoint (best/) and on the final model gives the same files."""
    out = runs / "eval"
    for name, model_dir in (("best", out / "best"), ("final", out)):
        _cli("eval", "tofu", "--model_name_or_path", str(model_dir), "--data_dir", str(TOFU_DIR), "--forget_split",
             "forget01", "--max_examples", "6", "--max_new_tokens", "8", "--batch_size", "8", "--retain_logs_path",
             str(retain_log), "--output_dir", str(tmp_path / name))  # fmt: skip
        _close(json.loads((tmp_path / name / "TOFU_EVAL.json").read_text()),
               json.loads((model_dir / "eval" / "TOFU_EVAL.json").read_text()))


def _tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TFRecord event files under ``log_dir`` (length, crc, event proto, crc per record)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list] = {}
    for path in sorted(log_dir.rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    return scalars


@pytest.mark.slow
def test_tensorboard_gets_the_eval_scalars(runs):
    scalars = _tensorboard_scalars(runs / "eval" / "runs")
    assert [s for s, _ in scalars["eval/forget_quality"]] == [0, 2, 4]
    sel = json.loads((runs / "eval" / "SELECTION.json").read_text())
    for (_, v), e in zip(scalars["eval/forget_quality"], sel["evaluations"]):
        assert v == pytest.approx(e["summary"]["forget_quality"], rel=1e-6)  # float32 in the event file
    assert "train/loss" in scalars and "eval/model_utility" in scalars


@pytest.mark.slow
def test_resume_keeps_the_selection_state(tmp_path, retain_log, monkeypatch):
    monkeypatch.chdir(ROOT)
    main = _recipe("npo_tofu")
    args = [*BASE, "--eval_strategy", "steps", "--eval_steps", "2", "--select", "max_forget_quality", "--save_strategy",
            "steps", "--save_steps", "2", "--retain_logs_path", str(retain_log), "--output_dir", str(tmp_path)]  # fmt: skip
    main(args)
    first = json.loads((tmp_path / "SELECTION.json").read_text())
    assert [e["step"] for e in first["evaluations"]] == [2, 4]
    assert (tmp_path / "checkpoint-2" / "trainer_state.json").is_file()  # a training checkpoint keeps its weights
    assert (tmp_path / "checkpoint-2" / "model.safetensors").is_file()
    stamp = (tmp_path / "checkpoint-2" / "eval" / "TOFU_EVAL.json").stat().st_mtime_ns
    main([*args, "--resume_from_checkpoint", str(tmp_path / "checkpoint-2")])
    again = json.loads((tmp_path / "SELECTION.json").read_text())
    assert [e["step"] for e in again["evaluations"]] == [2, 4]
    assert again["evaluations"][0] == first["evaluations"][0]  # read back, not evaluated again
    assert (tmp_path / "checkpoint-2" / "eval" / "TOFU_EVAL.json").stat().st_mtime_ns == stamp
    _close(again["evaluations"][1]["summary"], first["evaluations"][1]["summary"])  # the same step 4 again


@pytest.mark.slow
def test_muse_bench_selects_the_earliest_at_or_below_the_retrained_model(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    retrained = tmp_path / "retrained"
    _cli("eval", "muse", "--model_name_or_path", str(TINY_MODEL), "--data_dir", str(MUSE_DIR), "--max_examples", "2",
         "--verbmem_max_new_tokens", "8", "--knowmem_max_new_tokens", "8", "--output_dir", str(retrained))  # fmt: skip
    out = tmp_path / "run"
    _recipe("npo_muse")(["--config", "configs/npo_muse_tiny.yaml", "--model_name_or_path", str(TINY_MODEL),
                         "--retain_logs_path", str(retrained / "MUSE_EVAL.json"), "--max_steps", "3",
                         "--eval_max_examples", "2", "--eval_verbmem_max_new_tokens", "8",
                         "--eval_knowmem_max_new_tokens", "8", "--disable_tqdm", "true", "--forget_text_indices", "0",
                         "--max_retain_texts", "1", "--learning_rate", "1e-2", "--eval_strategy", "steps",
                         "--eval_steps", "1", "--select", "muse_bench",
                         "--select_early_stop", "true", "--output_dir", str(out)])  # fmt: skip
    sel = json.loads((out / "SELECTION.json").read_text())
    ref = json.loads((retrained / "MUSE_SUMMARY.json").read_text())["forget_knowmem_ROUGE"]
    assert sel["reference"]["forget_knowmem_ROUGE"] == pytest.approx(ref)
    values = [e["summary"]["forget_knowmem_ROUGE"] for e in sel["evaluations"]]
    steps = [e["step"] for e in sel["evaluations"]]
    first = next((i for i, v in enumerate(values) if v <= ref), None)
    if first is None:  # nothing qualified: no early stop, the last evaluation is reported
        assert steps == [1, 2, 3] and sel["chosen"]["step"] == 3 and not sel["stopped_early"]
    else:  # the earliest qualifying checkpoint is chosen and training stops there
        assert sel["chosen"]["step"] == steps[first] == steps[-1] and sel["stopped_early"]
        assert json.loads((out / "log_history.json").read_text())[-1]["step"] == steps[first]
    assert (out / "best" / "model.safetensors").is_file() and (out / "best" / "eval" / "MUSE_SUMMARY.json").is_file()


def _fails(capsys, name, *argv) -> str:
    from llmpost.config import run_main

    with pytest.raises(SystemExit) as e:
        run_main(_recipe(name), list(argv))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.splitlines()[-1].startswith("error: ") and "Traceback" not in err, err
    return err.splitlines()[-1]


def test_bad_input_fails_before_training_naming_the_key(tmp_path, capsys, monkeypatch, retain_log):
    monkeypatch.chdir(ROOT)
    log = ["--retain_logs_path", str(retain_log)]
    err = _fails(capsys, "npo_tofu", *BASE, *log, "--eval_strategy", "steps", "--eval_after_training", "false",
                 "--output_dir", str(tmp_path / "a"))  # fmt: skip  -- an eval interval with nothing to evaluate
    assert "eval_strategy" in err
    err = _fails(capsys, "npo_tofu", *BASE, *log, "--eval_strategy", "steps", "--select", "muse_bench",
                 "--output_dir", str(tmp_path / "b"))  # fmt: skip
    assert "select: muse_bench is a MUSE rule" in err
    err = _fails(capsys, "npo_tofu", *BASE, "--retain_logs_path", "", "--eval_strategy", "steps", "--select",
                 "max_forget_quality", "--output_dir", str(tmp_path / "c"))  # fmt: skip
    assert "needs retain_logs_path" in err
    err = _fails(capsys, "npo_tofu", *BASE, *log, "--select", "pareto", "--output_dir", str(tmp_path / "d"))
    assert "select: pareto" in err and "eval_strategy" in err
    train_only = tmp_path / "train_only"  # the training splits without the evaluation ones
    train_only.mkdir()
    for split in ("forget01", "retain90"):
        (train_only / f"{split}.jsonl").symlink_to(TOFU_DIR / f"{split}.jsonl")
    err = _fails(capsys, "npo_tofu", *BASE, *log, "--eval_strategy", "steps", "--data_dir", str(train_only),
                 "--output_dir", str(tmp_path / "e"))  # fmt: skip  -- no evaluation data
    assert "forget01_perturbed" in err and "not found" in err
    err = _fails(capsys, "npo_muse", "--config", "configs/npo_muse_tiny.yaml", "--model_name_or_path", str(TINY_MODEL),
                 "--retain_logs_path", "", "--eval_strategy", "steps", "--select", "muse_bench",
                 "--output_dir", str(tmp_path / "f"))  # fmt: skip
    assert "select: muse_bench needs retain_logs_path" in err
    other = tmp_path / "other_tok"  # the tiny model with one more token: the Reference attack cannot compare losses
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(TINY_MODEL, other)
    tok = AutoTokenizer.from_pretrained(TINY_MODEL)
    tok.add_tokens(["zzqxword"])
    tok.save_pretrained(other)
    err = _fails(capsys, "npo_tofu", *BASE, *log, "--mia_reference_model_path", str(other),
                 "--output_dir", str(tmp_path / "g"))  # fmt: skip
    assert "mia_reference_model_path" in err
    assert not any((tmp_path / d).exists() for d in "abcdefg")
