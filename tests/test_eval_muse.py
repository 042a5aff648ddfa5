"""MUSE-News evaluation: hand-checked metric pieces, prompt strings, both protocols' tokenisation, data errors, and
end to end on the tiny real Llama (stories260K) with the real MUSE-News files (few rows), batch-size invariance,
result files and the CLI. Missing data or model is a failure, not a skip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from llmpost.benchmarks.muse.data import (
    MuseProtocol,
    cut_knowmem_output,
    knowmem_item,
    knowmem_prompt,
    load_muse_split,
    privleak_item,
    verbmem_item,
    verbmem_reference,
)
from llmpost.benchmarks.muse.evaluate import (
    EVAL_FILE,
    SUMMARY_FILE,
    SUMMARY_KEYS,
    MuseEvalSettings,
    evaluate_muse,
    privleak_entries,
    resolve_reference_auc,
)
from llmpost.cli import main as cli_main
from llmpost.eval import metrics as M
from llmpost.eval import mia
from llmpost.utils import DataError, RetainLogError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "muse_news"
MODEL = ROOT.parent / "shared" / "models" / "stories260K"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_and_tokenizer():
    missing = [str(p) for p in (DATA / "verbmem" / "forget.json", MODEL / "config.json") if not p.exists()]
    if missing:
        pytest.fail(f"test assets missing (data is required, never skipped): {missing}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32), AutoTokenizer.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def short_data(tmp_path_factory) -> Path:
    """The real MUSE-News rows, 4 per split and cut short (the full texts run to ~5,000 tokens, seconds per forward
    pass here), in the local layout; written to a temporary directory, never into the repository."""
    out = tmp_path_factory.mktemp("muse_short")
    read = lambda rel: json.loads((DATA / rel).read_text())  # noqa: E731
    files = {
        "verbmem/forget.json": [{"prompt": r["prompt"][-300:], "gt": r["gt"][:300]}
                                for r in read("verbmem/forget.json")[:4]],
        "knowmem/forget_qa.json": read("knowmem/forget_qa.json")[:4],
        "knowmem/forget_qa_icl.json": read("knowmem/forget_qa_icl.json")[:2],
        "knowmem/retain2_qa.json": read("knowmem/retain2_qa.json")[:4],
        "knowmem/retain2_qa_icl.json": read("knowmem/retain2_qa_icl.json")[:2],
        "privleak/forget.json": [t[:500] for t in read("privleak/forget.json")[:4]],
        "privleak/holdout.json": [t[:500] for t in read("privleak/holdout.json")[:4]],
    }  # fmt: skip
    for rel, rows in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(json.dumps(rows))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Metric pieces, by hand


def test_privleak_auc_by_hand():
    # Min-K scores; MUSE's AUC = P(-s_holdout > -s_forget) + ties/2 over the 9 pairs: (f=2, h=2) ties, (f=3, h=2) wins.
    forget, holdout = [1.0, 2.0, 3.0], [2.0, 4.0, 5.0]
    e = privleak_entries(forget, holdout, 0.4772, MuseProtocol.MUSE)
    assert e["privleak_auc"]["agg_value"] == pytest.approx(1.5 / 9, abs=1e-15)
    assert e["mia_min_k"]["auc"] == pytest.approx(7.5 / 9, abs=1e-15)  # open-unlearning's convention
    assert e["privleak"]["agg_value"] == pytest.approx((1.5 / 9 - 0.4772) / 0.4772 * 100, rel=1e-12)
    assert e["mia_min_k"]["forget"]["value_by_index"]["2"] == {"score": 3.0}
    ou = privleak_entries(forget, holdout, 0.5, MuseProtocol.OPEN_UNLEARNING)
    assert ou["privleak"]["agg_value"] == pytest.approx((1.5 / 9 - 0.5) / (0.5 + 1e-10) * 100, rel=1e-12)


def test_min_k_floor_differs_between_protocols():
    lp = [-1.0, -2.0, -3.0, -4.0, -5.0]  # int(0.4 * 5) = 2 lowest: -5, -4
    assert mia.min_k_score(lp, 0.4, at_least_one=False) == pytest.approx(4.5)
    assert mia.min_k_score(lp, 0.4) == pytest.approx(4.5)
    assert math.isnan(mia.min_k_score([-1.0, -2.0], 0.4, at_least_one=False))  # MUSE: np.mean of nothing
    assert mia.min_k_score([-1.0, -2.0], 0.4) == pytest.approx(2.0)  # open-unlearning keeps at least one


def test_rouge_l_f1_without_stemmer():
    # words: [he, was, running, fast] vs [he, run, fast]: LCS 2 -> P 2/4, R 2/3, F1 4/7; stemmed, LCS 3 -> F1 6/7.
    assert M.rouge_scores("he was running fast", "he run fast", use_stemmer=False)["rougeL_f1"] == pytest.approx(4 / 7)
    assert M.rouge_scores("he was running fast", "he run fast", use_stemmer=True)["rougeL_f1"] == pytest.approx(6 / 7)


def test_knowmem_prompt_and_output_cut():
    icl = [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]
    expected = "Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\nAnswer: A2\n\nQuestion: Q3?\nAnswer: "
    assert knowmem_prompt(icl, "Q3?") == expected
    assert cut_knowmem_output("Paris\n\nQuestion: next") == "Paris"
    assert cut_knowmem_output("Paris\nQuestion: next") == "Paris"
    assert cut_knowmem_output("Paris Question: next") == "Paris "  # not stripped (ROUGE ignores it)
    assert cut_knowmem_output("a\nQuestion b\n\nc") == "a"  # "\n\n" first, then "\nQuestion"
    assert cut_knowmem_output("no stop") == "no stop"


def test_verbmem_reference_cut_counts_bos(tokenizer):
    gt = " ".join(f"word{i}" for i in range(200))
    ids = tokenizer(gt, add_special_tokens=True)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) > 128
    expected = tokenizer.decode(ids[1:128], skip_special_tokens=True, clean_up_tokenization_spaces=True)
    assert verbmem_reference(tokenizer, gt, 128) == expected  # 127 text tokens
    item = verbmem_item(tokenizer, "x " * 600, gt, MuseProtocol.MUSE, 128)
    assert item.prompt_ids[0] == tokenizer.bos_token_id and len(item.prompt_ids) > 512  # no truncation
    assert item.ground_truth == expected
    ou = verbmem_item(tokenizer, "x " * 600, gt, MuseProtocol.OPEN_UNLEARNING, 128)
    assert ou.prompt_ids == item.prompt_ids and ou.ground_truth.split()[-1] == "word199"  # the whole gt


def test_protocol_truncation(tokenizer):
    icl = json.loads((DATA / "knowmem" / "forget_qa_icl.json").read_text())
    muse = knowmem_item(tokenizer, icl, "Who?", "Someone", MuseProtocol.MUSE)
    ou = knowmem_item(tokenizer, icl, "Who?", "Someone", MuseProtocol.OPEN_UNLEARNING)
    assert len(muse.prompt_ids) > 512 and muse.ground_truth == "Someone"
    assert muse.prompt_ids[0] == tokenizer.bos_token_id and muse.input_text.endswith("Question: Who?\nAnswer: ")
    assert len(ou.prompt_ids) == 512 and ou.ground_truth == ""  # the question and answer are cut off
    text = "word " * 3000
    m = privleak_item(tokenizer, text, MuseProtocol.MUSE)
    o = privleak_item(tokenizer, text, MuseProtocol.OPEN_UNLEARNING)
    assert (m.first, m.end) == (1, len(m.input_ids)) and len(m.input_ids) > 2049
    assert len(o.input_ids) == 2049 and (o.first, o.end) == (1, 2048)


def test_reference_auc():
    assert resolve_reference_auc("muse") == (0.4772, "default of protocol muse")
    assert resolve_reference_auc("open_unlearning")[0] == 0.5
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            resolve_reference_auc("muse", bad)


def test_reference_auc_from_log(tmp_path):
    log = tmp_path / "MUSE_EVAL.json"
    log.write_text(json.dumps({"mia_min_k": {"agg_value": 0.6}}))
    assert resolve_reference_auc("muse", retain_logs_path=log)[0] == pytest.approx(0.4)
    log.write_text(json.dumps({"privleak": {}}))
    with pytest.raises(RetainLogError, match="mia_min_k"):
        resolve_reference_auc("muse", retain_logs_path=log)
    log.write_text(json.dumps({"mia_min_k": {"agg_value": 1.0}}))
    with pytest.raises(RetainLogError, match=r"not in \(0, 1\)"):
        resolve_reference_auc("muse", retain_logs_path=log)


def test_load_errors(tmp_path):
    assert load_muse_split("knowmem", "retain_qa", DATA)[0].keys() == {"question", "answer"}  # retain2_qa.json
    assert load_muse_split("privleak", "holdout", DATA)[0].keys() == {"text"}
    with pytest.raises(DataError, match=r"privleak/holdout.json.*privleak/ holds \['forget.json'\]"):
        (tmp_path / "privleak").mkdir()
        (tmp_path / "privleak" / "forget.json").write_text('["a"]')
        load_muse_split("privleak", "holdout", tmp_path)
    (tmp_path / "verbmem").mkdir()
    (tmp_path / "verbmem" / "forget.json").write_text('[{"prompt": "p", "gt": "g"}, {"prompt": "p"}]')
    with pytest.raises(DataError, match=r"verbmem/forget.json: item 1 lacks string column\(s\) \['gt'\]"):
        load_muse_split("verbmem", "forget", tmp_path)
    (tmp_path / "verbmem" / "forget.json").write_text('[{"prompt": "p",\n "gt": }]')
    with pytest.raises(DataError, match="line 2"):
        load_muse_split("verbmem", "forget", tmp_path)
    with pytest.raises(DataError, match="unknown MUSE split knowmem/holdout; known:"):
        load_muse_split("knowmem", "holdout", tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# End to end on the tiny model


def test_end_to_end_real_files(model_and_tokenizer, tmp_path):
    """Real MUSE-News files (2 rows per split; prompts of ~2,400 and texts of ~5,000 tokens, past the 512 context)."""
    model, tok = model_and_tokenizer
    settings = MuseEvalSettings(data_dir=DATA, max_examples=2, batch_size=1, verbmem_max_new_tokens=8,
                                knowmem_max_new_tokens=8)  # fmt: skip
    summary = evaluate_muse(model, tok, settings, output_dir=tmp_path)
    assert list(summary) == list(SUMMARY_KEYS)
    assert json.loads((tmp_path / SUMMARY_FILE).read_text()) == summary
    logs = json.loads((tmp_path / EVAL_FILE).read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == [EVAL_FILE, SUMMARY_FILE]  # no temporary files left
    row = logs["forget_verbmem_ROUGE"]["value_by_index"]["0"]
    assert {"rougeL_f1", "input", "ground_truth", "generation"} <= set(row)
    assert row["input"] == json.loads((DATA / "verbmem" / "forget.json").read_text())[0]["prompt"]
    assert len(logs["retain_knowmem_ROUGE"]["value_by_index"]) == 2
    assert len(logs["mia_min_k"]["holdout"]["value_by_index"]) == 2
    auc = summary["privleak_auc"]
    assert summary["privleak"] == pytest.approx((auc - 0.4772) / 0.4772 * 100)
    assert logs["privleak"]["reference_auc"] == 0.4772 and logs["privleak"]["protocol"] == "muse"


@pytest.mark.parametrize("protocol", ["muse", "open_unlearning"])
def test_batch_size_invariance(model_and_tokenizer, short_data, protocol):
    """The benchmark's generation lengths; batch 1 and batch 4 give identical per-item values and summaries."""
    model, tok = model_and_tokenizer
    runs = [evaluate_muse(model, tok, MuseEvalSettings(data_dir=short_data, batch_size=bs, protocol=protocol))
            for bs in (1, 4)]  # fmt: skip
    assert runs[0] == runs[1]
    assert all(v is not None and not math.isnan(v) for v in runs[0].values())


# ----------------------------------------------------------------------------------------------------------------------
# CLI


def _cli(args, capsys):
    code = cli_main(args)
    return code, capsys.readouterr()


def test_cli_eval_and_report(short_data, tmp_path, capsys):
    base = ["eval", "muse", "--model_name_or_path", str(MODEL), "--data_dir", str(short_data), "--max_examples", "2",
            "--verbmem_max_new_tokens", "8", "--knowmem_max_new_tokens", "8", "--device", "cpu"]  # fmt: skip
    code, _ = _cli(base + ["--output_dir", str(tmp_path / "a")], capsys)
    assert code == 0 and (tmp_path / "a" / SUMMARY_FILE).is_file()
    before = (tmp_path / "a" / SUMMARY_FILE).read_text()
    code, out = _cli(base + ["--output_dir", str(tmp_path / "a")], capsys)  # results exist, no --overwrite
    assert code == 2 and "already holds MUSE results" in out.err and len(out.err.strip().splitlines()) == 1
    assert (tmp_path / "a" / SUMMARY_FILE).read_text() == before
    code, out = _cli(["report", "muse", "--run", f"base={tmp_path / 'a'}", "--run", f"again={tmp_path / 'a'}"], capsys)
    assert code == 0 and "again" in out.out and all(k in out.out for k in SUMMARY_KEYS)
    code, out = _cli(["report", "muse", "--run", f"x={tmp_path / 'none'}"], capsys)
    assert code == 2 and "no MUSE_SUMMARY.json" in out.err


def test_cli_errors_exit_2(short_data, tmp_path, capsys):
    base = ["eval", "muse", "--model_name_or_path", str(MODEL)]
    args = ["--data_dir", str(short_data), "--reference_auc", "1.5", "--output_dir", str(tmp_path / "r")]
    code, out = _cli(base + args, capsys)
    assert code == 2 and "--reference_auc must be strictly between 0 and 1" in out.err
    broken = tmp_path / "broken"
    broken.mkdir()
    for rel in ("verbmem", "knowmem", "privleak"):
        (broken / rel).symlink_to(short_data / rel)
    (broken / "privleak").unlink()
    (broken / "privleak").mkdir()
    (broken / "privleak" / "forget.json").write_text('["a"]')
    code, out = _cli(base + ["--data_dir", str(broken), "--output_dir", str(tmp_path / "m")], capsys)
    assert code == 2 and "privleak/holdout.json" in out.err and len(out.err.strip().splitlines()) == 1
    (broken / "privleak" / "holdout.json").write_text('[{"txt": "a"}]')
    code, out = _cli(base + ["--data_dir", str(broken), "--output_dir", str(tmp_path / "m")], capsys)
    assert code == 2 and "item 0 is not a string" in out.err
    assert not (tmp_path / "r").exists() and not (tmp_path / "m").exists()
