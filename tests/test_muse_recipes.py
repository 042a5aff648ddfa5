"""MUSE-News training data and recipes: corpus chunking, every unlearning method on real forget chunks (CPU, a few
steps), the tiny pipeline end to end (fine-tune retrain + target, unlearn, evaluate), the sustainability loop, and
bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, SHARED, TINY_MODEL
from llmpost.benchmarks.muse.data import MuseArguments, muse_texts
from llmpost.benchmarks.muse.evaluate import SUMMARY_KEYS
from llmpost.benchmarks.muse.recipe import label_after_prefix, muse_template_answers, muse_train_chunks
from llmpost.data.collators import pad_examples
from llmpost.data.corpus import chunk_texts, load_texts
from llmpost.data.unlearn import ForgetRetainDataset
from llmpost.ops import IGNORE_INDEX, sequence_logps, token_logps
from llmpost.trainers.unlearn import NEEDS_TEMPLATES, UnlearnConfig, UnlearnMethod, UnlearnTrainer
from llmpost.utils import DataError

pytestmark = pytest.mark.usefixtures("one_thread")
MUSE = SHARED / "data" / "muse_news"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# ----- data ---------------------------------------------------------------------------------------------------------
def test_chunks_are_full_length_bos_prefixed_and_rotate_like_muse_bench(tokenizer):
    texts = muse_texts("raw/forget", MUSE)[:2]
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    chunks = chunk_texts(texts, tokenizer, 64)
    assert len(chunks) == -(-len(ids) // 63)
    for row in chunks:
        assert len(row["input_ids"]) == 64 and row["input_ids"][0] == tokenizer.bos_token_id
        assert row["labels"] == row["input_ids"] and row["attention_mask"] == [1] * 64
    assert chunks[0]["input_ids"][1:] == ids[:63] and chunks[1]["input_ids"][1:] == ids[63:126]
    tail = ids[(len(chunks) - 1) * 63 :]
    last = chunks[-1]["input_ids"]
    assert last[1 : 1 + len(tail)] == tail and last[1 + len(tail) :] == chunks[0]["input_ids"][: 63 - len(tail)]
    assert chunks["index"] == list(range(len(chunks)))
    short = chunk_texts(["hello"], tokenizer, 16)  # shorter than one chunk: repeated up to max_length
    assert len(short) == 1 and len(short[0]["input_ids"]) == 16


def test_load_texts_formats_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nstill first\n\n  \nsecond doc\n\n\nthird\n")
    assert load_texts(tmp_path / "a.txt") == ["first doc\nstill first", "second doc", "third"]
    (tmp_path / "b.json").write_text(json.dumps(["x", {"text": "y"}, " "]))
    assert load_texts(tmp_path / "b.json") == ["x", "y"]
    (tmp_path / "c.jsonl").write_text('{"text": "p"}\n{"text": "q"}\n')
    assert load_texts(tmp_path / "c.jsonl") == ["p", "q"]
    (tmp_path / "d.jsonl").write_text('{"body": "p"}\n')
    with pytest.raises(DataError, match="lacks column 'text'"):
        load_texts(tmp_path / "d.jsonl")
    (tmp_path / "e.txt").write_text("\n \n\n")
    with pytest.raises(DataError, match="holds no text"):
        load_texts(tmp_path / "e.txt")
    with pytest.raises(DataError, match="expected a .txt"):
        load_texts(tmp_path / "f.csv")


def test_empty_and_missing_corpora_are_data_errors(tokenizer):
    with pytest.raises(DataError, match="retain corpus x: the texts tokenise to no token"):
        chunk_texts([], tokenizer, 32, name="retain corpus x")
    args = MuseArguments(data_dir=str(MUSE), retain_split="raw/retain1")
    with pytest.raises(DataError, match="raw/retain1.json"):
        muse_train_chunks(args, tokenizer, 64, include_forget=False)
    with pytest.raises(DataError, match="out of range"):
        muse_train_chunks(MuseArguments(data_dir=str(MUSE), forget_text_indices=[889]), tokenizer, 64, include_retain=False)


def test_template_examples_share_the_chunk_prefix(tokenizer):
    args = MuseArguments(data_dir=str(MUSE), forget_text_indices=[0], template_prompt_tokens=8)
    forget, _ = muse_train_chunks(args, tokenizer, 64, include_retain=False)
    templates = muse_template_answers(args, tokenizer, forget, 64)
    ex = templates.encode(2, 0)
    assert ex["input_ids"][:8] == forget[2]["input_ids"][:8] and ex["input_ids"][-1] == tokenizer.eos_token_id
    assert ex["labels"][:8] == [IGNORE_INDEX] * 8 and ex["labels"][8:] == ex["input_ids"][8:]
    masked = label_after_prefix(forget, 8)
    assert masked[2]["labels"][:8] == [IGNORE_INDEX] * 8 and masked[2]["labels"][8:] == forget[2]["input_ids"][8:]


# ----- every method lowers the forget likelihood on MUSE-News chunks ------------------------------------------------
@pytest.fixture(scope="module")
def muse_chunks(tokenizer):
    args = MuseArguments(data_dir=str(MUSE), forget_text_indices=[0], retain_split="privleak/retain", max_retain_texts=1)
    forget, retain = muse_train_chunks(args, tokenizer, 96)
    return args, forget.select(range(8)), retain.select(range(8))


@torch.no_grad()
def _logps(model, rows, pad_id):
    batch = pad_examples([{k: rows[i][k] for k in ("input_ids", "labels", "attention_mask")} for i in range(len(rows))], pad_id)
    return sequence_logps(*token_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])).mean().item()


# RMU has its own trainer and an activation objective: tests/test_rmu.py runs it on MUSE chunks
@pytest.mark.parametrize("method", [m.value for m in UnlearnMethod if m != UnlearnMethod.RMU])
def test_method_lowers_forget_likelihood_on_muse_chunks(method, muse_chunks, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    data_args, forget, retain = muse_chunks
    args = UnlearnConfig(output_dir=str(tmp_path / "out"), method=method, per_device_train_batch_size=4, max_steps=4,
                         learning_rate=1e-2, lr_scheduler_type="constant", use_cpu=True, report_to="none",
                         save_strategy="no", logging_steps=1, seed=0, disable_tqdm=True, max_length=96,
                         **({"pdu_retain_eps": 1.0} if method == "pdu" else {}))  # fmt: skip  -- PDU's bound has no default
    templates = None
    if args.method in NEEDS_TEMPLATES:
        templates = muse_template_answers(data_args, tokenizer, forget, 96)
        forget = label_after_prefix(forget, data_args.template_prompt_tokens)
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL)
    before = _logps(model, forget, tokenizer.pad_token_id)
    rows = [templates.encode(i, 0) for i in range(len(forget))] if templates is not None else None
    before_t = _logps(model, rows, tokenizer.pad_token_id) if rows else None
    trainer = UnlearnTrainer(model, args, ForgetRetainDataset(forget, retain, seed=0, templates=templates), tokenizer)
    trainer.train()
    after = _logps(trainer.model, forget, tokenizer.pad_token_id)
    assert after < before - 1.0, (before, after)
    if rows:  # FLAT, IdkDPO: the template answers gained on the forget continuations of the same prompts
        after_t = _logps(trainer.model, rows, tokenizer.pad_token_id)
        assert after_t - before_t > after - before, (before_t, after_t, before, after)


# ----- recipes ------------------------------------------------------------------------------------------------------
def _run(script, *argv, ok=True):
    r = subprocess.run([sys.executable, f"recipes/{script}", *argv], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    if ok:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


QUICK_EVAL = ["--eval_max_examples", "2", "--eval_verbmem_max_new_tokens", "8", "--eval_knowmem_max_new_tokens", "8",
              "--disable_tqdm", "true", "--forget_text_indices", "0", "--max_retain_texts", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory):
    """The tiny pipeline's first steps: retrained (retain only) and target (forget + retain) models, a few steps."""
    out = tmp_path_factory.mktemp("muse")
    ft = ["--config", "configs/finetune_muse_tiny.yaml", "--max_steps", "3", *QUICK_EVAL]
    _run("finetune_muse.py", *ft, "--include_forget", "false", "--output_dir", str(out / "retrain"))
    _run("finetune_muse.py", *ft, "--output_dir", str(out / "target"), "--eval_after_training", "false")
    return out


@pytest.mark.slow
def test_tiny_pipeline_finetune_unlearn_evaluate(tiny_target):
    out = tiny_target
    assert set(json.loads((out / "retrain" / "eval" / "MUSE_SUMMARY.json").read_text())) == set(SUMMARY_KEYS)
    assert not (out / "target" / "eval").exists() and (out / "target" / "model.safetensors").is_file()
    retain_log = out / "retrain" / "eval" / "MUSE_EVAL.json"
    _run("npo_muse.py", "--config", "configs/npo_muse_tiny.yaml", "--model_name_or_path", str(out / "target"),
         "--retain_logs_path", str(retain_log), "--max_steps", "3", *QUICK_EVAL, "--output_dir", str(out / "npo"))
    summary = json.loads((out / "npo" / "eval" / "MUSE_SUMMARY.json").read_text())
    assert set(summary) == set(SUMMARY_KEYS) == {"forget_verbmem_ROUGE", "forget_knowmem_ROUGE", "retain_knowmem_ROUGE",
                                                 "privleak", "privleak_auc"}  # fmt: skip
    logs = json.loads((out / "npo" / "eval" / "MUSE_EVAL.json").read_text())
    assert logs["privleak"]["reference_source"] == str(retain_log)
    assert (out / "npo" / "model.safetensors").is_file()


@pytest.mark.slow
def test_sustainability_two_requests_write_one_table(tiny_target):
    out = tiny_target / "sust"
    _run("npo_muse.py", "--config", "configs/npo_muse_tiny.yaml", "--model_name_or_path", str(tiny_target / "target"),
         "--retain_logs_path", "", "--method", "npo_rt", "--max_steps", "2", *QUICK_EVAL, "--sustainability", "true",
         "--sust_requests", "2", "--eval_max_examples", "1", "--output_dir", str(out))  # fmt: skip
    table = json.loads((out / "SUSTAINABILITY.json").read_text())
    assert [r["forget_split"] for r in table["requests"]] == ["sust/forget_1", "sust/forget_2"]
    assert all(set(SUMMARY_KEYS) <= set(r) for r in table["requests"])
    md = (out / "SUSTAINABILITY.md").read_text().splitlines()
    assert md[0].startswith("| request | forget_split | forget_verbmem_ROUGE") and len(md) == 4
    for k in (1, 2):
        assert (out / f"request_{k}" / "eval" / "MUSE_SUMMARY.json").is_file()


def _recipe_main(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.main


def _fails(capsys, name, *argv) -> str:
    """Run a recipe in-process through run_main (as its __main__ does): exit status 2, one ``error:`` line."""
    from llmpost.config import run_main

    with pytest.raises(SystemExit) as e:
        run_main(_recipe_main(name), list(argv))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.splitlines()[-1].startswith("error: ") and "Traceback" not in err, err
    return err.splitlines()[-1]


def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    base = ["--config", "configs/npo_muse_tiny.yaml", "--model_name_or_path", str(TINY_MODEL), "--retain_logs_path", ""]
    err = _fails(capsys, "npo_muse", *base, "--method", "npo_rt", "--retain_split", "raw/retain1", "--output_dir",
                 str(tmp_path / "a"))  # fmt: skip
    assert "raw/retain1.json" in err and "raw/ holds ['forget.json']" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    err = _fails(capsys, "npo_muse", *base, "--method", "flat", "--template_answers_path", str(empty),
                 "--output_dir", str(tmp_path / "b"))  # fmt: skip
    assert "holds no answer" in err
    blank = tmp_path / "retain.json"
    blank.write_text(json.dumps([" ", ""]))
    err = _fails(capsys, "finetune_muse", "--config", "configs/finetune_muse_tiny.yaml", "--retain_file", str(blank),
                 "--output_dir", str(tmp_path / "c"))  # fmt: skip
    assert "retain.json holds no text" in err
    err = _fails(capsys, "npo_muse", *base, "--forget_split", "raw/forgot", "--output_dir", str(tmp_path / "d"))
    assert "unknown MUSE split raw/forgot" in err
    err = _fails(capsys, "npo_muse", *base, "--retain_logs_path", str(tmp_path / "no_log.json"), "--output_dir",
                 str(tmp_path / "e"))  # fmt: skip  -- caught before training, not after it
    assert "no_log.json' does not exist" in err
    assert not any((tmp_path / d).exists() for d in "abcde")
