"""TOFU evaluation end to end on the tiny real Llama (stories260K) and the real TOFU data, small subsets.

Checks: open-unlearning key names and file shapes, batch-size invariance, forget quality / privleak against a retain
log, retain-log errors, PEFT models, generation order and stop words, the CLI (success and error paths), and a
two-process run that must reproduce the single-process numbers. Missing data or model is a failure, not a skip.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from scipy import stats

from llmpost.benchmarks.tofu.evaluate import (
    EVAL_FILE,
    SUMMARY_FILE,
    TofuEvalSettings,
    compute_tofu_metrics,
    evaluate_tofu,
    load_retain_logs,
)
from llmpost.cli import main as cli_main
from llmpost.eval import metrics as M
from llmpost.generation import generate_greedy
from llmpost.utils import RetainLogError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tofu"
MODEL = ROOT.parent / "shared" / "models" / "stories260K"
N = 4  # rows per split
pytestmark = pytest.mark.usefixtures("one_thread")

# Entries open-unlearning's default TOFU evaluation writes (top-level metrics and their pre-computes).
EXPECTED_KEYS = {
    "forget_quality", "forget_truth_ratio", "forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "forget_Q_A_Prob",
    "forget_Q_A_ROUGE", "model_utility", "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio",
    "retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob", "ra_Q_A_Prob_normalised", "ra_Q_A_Prob", "ra_Q_A_PERT_Prob",
    "ra_Q_A_ROUGE", "ra_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Q_A_Prob", "wf_Q_A_PERT_Prob", "wf_Q_A_ROUGE",
    "wf_Truth_Ratio", "privleak", "mia_min_k", "extraction_strength",
    # open-unlearning's optional entries, computed by default here (mia_reference only with a reference model)
    "exact_memorization", "mia_loss", "mia_zlib", "mia_min_k_plus_plus", "mia_gradnorm",
}  # fmt: skip
NO_GENERATION = {k for k in EXPECTED_KEYS if k.endswith("ROUGE")}


def _check_assets():
    missing = [str(p) for p in (DATA / "forget10_perturbed.jsonl", MODEL / "config.json") if not p.exists()]
    if missing:
        pytest.fail(f"test assets missing (data is required, never skipped): {missing}")


@pytest.fixture(scope="module")
def model_and_tokenizer():
    _check_assets()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(MODEL)
    return AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32), tok


@pytest.fixture(scope="module")
def full_run(model_and_tokenizer, tmp_path_factory):
    """One evaluation with generation, written to disk."""
    model, tok = model_and_tokenizer
    out = tmp_path_factory.mktemp("tofu_full")
    settings = TofuEvalSettings(data_dir=str(DATA), max_examples=N, batch_size=8, max_new_tokens=12)
    summary = evaluate_tofu(model, tok, settings, output_dir=out)
    return out, summary


def _probs(logs: dict) -> dict[str, float]:
    """Every per-example number of the teacher-forced entries, flattened."""
    flat = {}
    for key, entry in logs.items():
        if key.endswith("ROUGE") or "value_by_index" not in entry:
            continue
        for idx, vals in entry["value_by_index"].items():
            for name, v in vals.items():
                for j, x in enumerate(v if isinstance(v, list) else [v]):
                    flat[f"{key}/{idx}/{name}/{j}"] = x
    return flat


def test_files_and_key_names(full_run):
    out, summary = full_run
    logs = json.loads((out / EVAL_FILE).read_text())
    assert set(logs) == EXPECTED_KEYS
    assert list(logs) == sorted(logs)  # open-unlearning writes keys sorted
    assert json.loads((out / SUMMARY_FILE).read_text()) == summary
    assert logs["forget_quality"]["agg_value"] is None and "forget_quality" not in summary  # no retain log
    assert set(summary) == EXPECTED_KEYS - {"forget_quality"}
    # per-example shapes as in open-unlearning's TOFU_EVAL.json
    assert list(logs["forget_Q_A_Prob"]["value_by_index"]) == [str(i) for i in range(N)]
    assert set(logs["forget_Q_A_Prob"]["value_by_index"]["0"]) == {"prob", "avg_loss"}
    assert len(logs["forget_Q_A_PERT_Prob"]["value_by_index"]["0"]["prob"]) == 5
    assert len(logs["ra_Q_A_PERT_Prob"]["value_by_index"]["0"]["avg_loss"]) == 3
    assert set(logs["forget_truth_ratio"]["value_by_index"]["0"]) == {"score"}
    rouge = logs["retain_Q_A_ROUGE"]["value_by_index"]["1"]
    assert {"rougeL_recall", "rouge1_recall", "rougeL_f1", "input", "ground_truth", "generation"} <= set(rouge)
    assert rouge["input"].startswith("Question: ") and rouge["input"].endswith("\nAnswer: ")  # unstripped prompt
    assert set(logs["mia_min_k"]) >= {"forget", "holdout", "auc", "agg_value"}
    for key in EXPECTED_KEYS - {"forget_quality"}:
        value = summary[key]
        assert isinstance(value, float) and math.isfinite(value), key
    # the aggregates are recomputable from the per-example values
    probs = [v["prob"] for v in logs["forget_Q_A_Prob"]["value_by_index"].values()]
    assert summary["forget_Q_A_Prob"] == pytest.approx(sum(probs) / N)
    tr = [v["score"] for v in logs["forget_truth_ratio"]["value_by_index"].values()]
    assert summary["forget_truth_ratio"] == pytest.approx(sum(min(r, 1 / r) for r in tr) / N)
    assert summary["model_utility"] == pytest.approx(stats.hmean([summary[k] for k in M.MODEL_UTILITY_KEYS]))
    # ground truths are the answers of the split
    rows = [json.loads(line) for line in (DATA / "retain_perturbed.jsonl").read_text().splitlines()[:N]]
    assert rouge["ground_truth"] == rows[1]["answer"].strip()


def test_batch_size_invariance(model_and_tokenizer):
    model, tok = model_and_tokenizer
    kw = dict(data_dir=str(DATA), max_examples=N, compute_generation=False)
    a = compute_tofu_metrics(model, tok, TofuEvalSettings(batch_size=1, **kw))
    b = compute_tofu_metrics(model, tok, TofuEvalSettings(batch_size=8, **kw))
    assert set(a) == set(b) == EXPECTED_KEYS - NO_GENERATION
    assert a["model_utility"]["agg_value"] is None  # needs the ROUGE entries
    pa, pb = _probs(a), _probs(b)
    assert pa.keys() == pb.keys() and len(pa) > 100
    for key in pa:
        assert pa[key] == pytest.approx(pb[key], rel=1e-5, abs=1e-7), key


def test_prefix_shared_scoring_matches_whole_sequences(model_and_tokenizer):
    """Scoring each question's answers after one shared pass over its prompt (KV cache) gives the whole-sequence
    numbers within float32 noise; the batched tokenisation gives encode_qa's lists exactly."""
    import numpy as np

    from llmpost.benchmarks.tofu.data import load_tofu_eval_splits
    from llmpost.benchmarks.tofu.scoring import _shared_prefix, score_answers
    from llmpost.data.templates import TemplateArgs, encode_qa, encode_qa_batch

    model, tok = model_and_tokenizer
    splits = load_tofu_eval_splits(str(DATA), "forget10", None, 3)
    pairs = [(r["question"], a) for name in ("forget", "ra", "holdout") for r in splits[name]
             for c in ("answer", "paraphrased_answer", "perturbed_answer") if c in r
             for a in (r[c] if isinstance(r[c], list) else [r[c]])]  # fmt: skip
    template = TemplateArgs()
    examples = encode_qa_batch(tok, template, pairs, 512)
    assert examples == [encode_qa(tok, template, q, a, 512) for q, a in pairs]
    first = [e for (q, _), e in zip(pairs, examples) if q == pairs[0][0]]
    assert len(first) == 7 and _shared_prefix(first) > 10  # the prompt, less its last token, is shared
    whole = score_answers(model, tok, template, pairs, batch_size=8, share_prefix=False)
    shared = score_answers(model, tok, template, pairs, batch_size=8, share_prefix=True)
    for w, s in zip(whole, shared):
        assert s.avg_loss == pytest.approx(w.avg_loss, rel=1e-5)
        np.testing.assert_allclose(s.token_logps, w.token_logps, rtol=1e-5, atol=1e-4)
        assert s.extraction_strength == pytest.approx(w.extraction_strength, abs=1e-12)


def test_forget_quality_and_privleak_against_retain_logs(model_and_tokenizer, full_run, tmp_path):
    model, tok = model_and_tokenizer
    own_log = full_run[0] / EVAL_FILE
    settings = TofuEvalSettings(data_dir=str(DATA), max_examples=N, batch_size=8, compute_generation=False)
    own = compute_tofu_metrics(model, tok, settings, retain_logs_path=own_log)
    assert own["forget_quality"]["agg_value"] == pytest.approx(1.0)  # identical truth-ratio samples
    assert own["privleak"]["agg_value"] == pytest.approx(0.0, abs=1e-6)

    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.3)
    res = compute_tofu_metrics(other, tok, settings, retain_logs_path=own_log)
    retain = json.loads(own_log.read_text())
    tr_retain = [v["score"] for v in retain["forget_truth_ratio"]["value_by_index"].values()]
    tr_model = [v["score"] for v in res["forget_truth_ratio"]["value_by_index"].values()]
    assert res["forget_quality"]["agg_value"] == pytest.approx(stats.ks_2samp(tr_model, tr_retain).pvalue)
    auc, ref = res["mia_min_k"]["agg_value"], retain["mia_min_k"]["agg_value"]
    assert res["privleak"]["agg_value"] == pytest.approx(((1 - auc) - (1 - ref)) / (1 - ref) * 100)


def test_retain_log_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(RetainLogError, match="nope.json"):
        load_retain_logs(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RetainLogError, match="bad.json.*not valid JSON"):
        load_retain_logs(bad)
    lacking = tmp_path / "lacking.json"
    lacking.write_text(json.dumps({"model_utility": {"agg_value": 0.5}}))
    with pytest.raises(RetainLogError, match="lacking.json.*forget_truth_ratio"):
        load_retain_logs(lacking)
    no_score = tmp_path / "no_score.json"
    no_score.write_text(json.dumps({"forget_truth_ratio": {"value_by_index": {"0": {"prob": 1.0}}}}))
    with pytest.raises(RetainLogError, match="no_score.json.*'0'.*score"):
        load_retain_logs(no_score)
    # an open-unlearning-style log (int-like string keys, extra entries) is accepted
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"forget_truth_ratio": {"agg_value": 0.6, "value_by_index": {"0": {"score": 0.7}}}}))
    assert load_retain_logs(ok)["forget_truth_ratio"]["agg_value"] == 0.6


def test_peft_model_and_training_mode_restored(model_and_tokenizer):
    from peft import LoraConfig, get_peft_model

    model, tok = model_and_tokenizer
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.train()
    settings = TofuEvalSettings(data_dir=str(DATA), max_examples=2, batch_size=4, compute_generation=False)
    a = _probs(compute_tofu_metrics(peft_model, tok, settings))
    assert peft_model.training  # mode restored
    b = _probs(compute_tofu_metrics(model, tok, settings))  # LoRA starts as the identity
    assert all(a[k] == pytest.approx(b[k], rel=1e-5) for k in a)


def test_generation_order_stopwords_and_missing_vllm(model_and_tokenizer):
    model, tok = model_and_tokenizer
    texts = ["Once upon a time", "The dog ran to the big red ball and", "Lily was sad."]
    prompts = [tok(x)["input_ids"] for x in texts]
    single = [generate_greedy(model, tok, [p], max_new_tokens=10)[0] for p in prompts]
    batched = generate_greedy(model, tok, prompts, max_new_tokens=10, batch_size=3)
    assert batched == single and len(set(single)) == 3  # left padding is harmless; order restored after sorting
    assert single[0].startswith(", there was")  # the continuation, stripped, without the prompt
    full = generate_greedy(model, tok, prompts[:1], max_new_tokens=30)[0]
    word = full.split()[2]
    cut = generate_greedy(model, tok, prompts[:1], max_new_tokens=30, stopwords=[word])[0]
    assert cut == full.split(word)[0].strip()
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="vLLM is not installed"):
            generate_greedy("some/model", tok, prompts, backend="vllm")
    with pytest.raises(ValueError):
        generate_greedy(model, tok, prompts, backend="tgi")


def test_cli_end_to_end_and_refuses_existing_results(tmp_path, capsys):
    _check_assets()
    out = tmp_path / "eval"
    console = shutil.which("llmpost", path=str(Path(sys.executable).parent))
    assert console, "the llmpost console script (pyproject [project.scripts]) is not installed"
    cmd = [console, "eval", "tofu", "--model_name_or_path", str(MODEL),
           "--data_dir", str(DATA), "--output_dir", str(out), "--max_examples", "2", "--max_new_tokens", "8",
           "--batch_size", "4", "--asst_end_tag", "\\n\\n", "--trust_remote_code", "false"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert (out / EVAL_FILE).is_file() and "model_utility" in summary
    assert "forget_truth_ratio" in run.stdout and "forget_quality" in run.stdout
    before = (out / EVAL_FILE).read_bytes()
    assert cli_main(cmd[1:]) == 2  # same command again, in-process (saves a second interpreter start)
    err = capsys.readouterr().err
    assert "already holds TOFU results" in err and "--overwrite_output_dir" in err
    assert (out / EVAL_FILE).read_bytes() == before


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model_name_or_path", "/no/such/model"], "--model_name_or_path '/no/such/model' does not exist"),
        (["--forget_split", "forget07"], "forget07_perturbed"),
        (["--retain_logs_path", "/no/such/TOFU_EVAL.json"], "/no/such/TOFU_EVAL.json"),
        (["--batch_size", "0"], "--batch_size must be >= 1"),
    ],
)
def test_cli_bad_input_names_it_and_writes_nothing(tmp_path, capsys, flags, message):
    _check_assets()
    out = tmp_path / "eval"
    base = {"--model_name_or_path": str(MODEL), "--data_dir": str(DATA), "--output_dir": str(out)}
    base.update(dict(zip(flags[::2], flags[1::2])))
    assert cli_main(["eval", "tofu", *[x for kv in base.items() for x in kv]]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_parses_escapes_and_evaluates_a_peft_adapter(model_and_tokenizer, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from llmpost.cli import build_parser

    flags = ["--asst_end_tag", "\\n\\n", "--stopwords", "\\n", "Q:", "--apply_chat_template"]
    ns = build_parser().parse_args(["eval", "tofu", "--model_name_or_path", "m", "--output_dir", "o", *flags])
    assert ns.asst_end_tag == "\n\n" and ns.stopwords == ["\n", "Q:"] and ns.apply_chat_template is True
    assert ns.trust_remote_code is False and ns.user_start_tag == "Question: "
    model, tok = model_and_tokenizer
    adapter = tmp_path / "adapter"
    get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    tok.save_pretrained(adapter)
    out = tmp_path / "eval"
    args = ["eval", "tofu", "--model_name_or_path", str(adapter), "--data_dir", str(DATA), "--output_dir", str(out),
            "--max_examples", "1", "--compute_generation", "false", "--device", "cpu"]  # fmt: skip
    assert cli_main(args) == 0
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert "forget_truth_ratio" in summary and "model_utility" not in summary
    assert "forget_truth_ratio" in capsys.readouterr().out


def test_cli_missing_data_dir_and_bad_flags(tmp_path, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    args = ["eval", "tofu", "--model_name_or_path", str(MODEL), "--output_dir", str(tmp_path / "o")]
    assert cli_main([*args, "--data_dir", str(empty)]) == 2
    assert f"no file {empty}/forget10_perturbed.jsonl" in capsys.readouterr().err
    for bad in (["--bogus", "1"], ["--compute_generation", "maybe"], []):
        with pytest.raises(SystemExit) as e:
            cli_main([*args, *bad] if bad else ["eval", "tofu", "--output_dir", "x"])
        assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--bogus" in err and "maybe" in err and "--model_name_or_path" in err
    assert not (tmp_path / "o").exists()


DIST_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from llmpost.benchmarks.tofu.evaluate import TofuEvalSettings, evaluate_tofu
    model_path, data_dir, out = sys.argv[1:4]
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    settings = TofuEvalSettings(data_dir=data_dir, max_examples=3, batch_size=2, max_new_tokens=6)
    summary = evaluate_tofu(model, tok, settings, output_dir=out)
    json.dump(summary, open(f"{out}/rank{dist.get_rank()}.json", "w"))
    dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_reproduce_one(model_and_tokenizer, tmp_path):
    """Examples are split across two gloo ranks (3 rows: uneven, padded) and gathered; rank 0 writes the files."""
    model, tok = model_and_tokenizer
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun not found next to the interpreter"
    script = tmp_path / "dist_eval.py"
    script.write_text(DIST_SCRIPT)
    out = tmp_path / "dist"
    out.mkdir()
    run = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), str(script), str(MODEL), str(DATA),
         str(out)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    settings = TofuEvalSettings(data_dir=str(DATA), max_examples=3, batch_size=2, max_new_tokens=6)
    single = compute_tofu_metrics(model, tok, settings)
    dist_logs = json.loads((out / EVAL_FILE).read_text())
    assert set(dist_logs) == set(single)
    ps, pd = _probs(single), _probs(dist_logs)
    assert ps.keys() == pd.keys()
    assert all(ps[k] == pytest.approx(pd[k], rel=1e-5, abs=1e-7) for k in ps)
    gen = lambda logs: [v["generation"] for v in logs["forget_Q_A_ROUGE"]["value_by_index"].values()]  # noqa: E731
    assert len(gen(dist_logs)) == 3 and gen(dist_logs) == gen(single)
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1 == json.loads((out / SUMMARY_FILE).read_text())
