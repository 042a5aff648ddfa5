"""Verifier noise on HardVerify-Math and the LLM appeal verifier: the data file's errors, the rates and intervals on a
hand-built file, ``llmpost eval/report verifier`` end to end, and the LLM verifier's plumbing on the tiny model (the
prompt text, the True/False parser, failures and time limits counting as "not overturned"). Not its accuracy: the
260K-parameter model answers nothing sensible."""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from pathlib import Path

import pytest

from conftest import SHARED, TINY_MODEL
from llmpost.benchmarks.verifier.data import load_hardverify
from llmpost.benchmarks.verifier.evaluate import (
    evaluate_verifiers,
    format_summary,
    math_verify_judge,
    rule_based_judge,
)
from llmpost.cli import main as cli
from llmpost.rewards import llm_verifier as lv
from llmpost.rewards.llm_verifier import (
    DEFAULT_VERIFIER_ID,
    TINYV_PROMPTS,
    LLMVerifier,
    VerifierPrompt,
    load_verifier_prompts,
    parse_verdict,
    select_prompt,
)
from llmpost.rewards.verifiers import VerifyStats, safe_verify
from llmpost.utils import DataError

pytestmark = pytest.mark.usefixtures("one_thread")
TINYV = SHARED / "data" / "tinyv"
HARDVERIFY = TINYV / "HardVerify-Math.json"

# Four items whose verdicts are known by hand. rule_based compares the normalised boxed answer with the gold
# (whitespace and $ dropped): it accepts 1/3 (item a) and the incorrect "$12$" of item c (equal to the gold after
# normalisation: a false positive by the item's label), and rejects 0.5 vs \frac{1}{2}, 12.0 vs 12, 1+x vs x+1.
# math-verify accepts every correct answer and also "$12$".
ITEMS = [
    {"id": "a", "split": "benchmarks", "source": "s", "question": "q1", "ground_truth": "1/3", "fn_output": "1/3",
     "tn_output": "1/2"},
    {"id": "b", "split": "benchmarks", "source": "s", "question": "q2", "ground_truth": "\\frac{1}{2}",
     "fn_output": "0.5", "tn_output": "0.25"},
    {"id": "c", "split": "big_math", "source": "s", "question": "q3", "ground_truth": "12", "fn_output": "12.0",
     "tn_output": "$12$"},
    {"id": "d", "split": "big_math", "source": "s", "question": "q4", "ground_truth": "x+1", "fn_output": "1+x",
     "tn_output": "x-1"},
]  # fmt: skip


def _write(path: Path, obj) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


# ----- the data file ---------------------------------------------------------------------------------------------------
def test_hardverify_loads_250_items():
    items = load_hardverify(HARDVERIFY)
    assert len(items) == 250 and len({it["id"] for it in items}) == 250
    assert {it["split"] for it in items} == {"benchmarks", "big_math"}
    assert sum(it["split"] == "benchmarks" for it in items) == 125
    assert all(isinstance(it[k], str) for it in items for k in ("question", "ground_truth", "fn_output", "tn_output"))


@pytest.mark.parametrize("content, message", [
    ("[{", "line 1, column 3: not valid JSON"),
    ({"a": 1}, "expected a non-empty JSON list"),
    ([], "(empty)"),
    ([ITEMS[0], 3], "row 1: expected an object"),
    ([ITEMS[0], {k: v for k, v in ITEMS[1].items() if k != "tn_output"}], "row 1: lacks field(s) ['tn_output']"),
    ([{**ITEMS[0], "fn_output": 5}], "row 0: field 'fn_output' must be a string"),
    ([{**ITEMS[0], "id": None}], "row 0: field 'id' must be an integer or a string"),
    ([ITEMS[0], ITEMS[1], {**ITEMS[2], "id": "a"}], "row 2: id 'a' repeats row 0"),
])  # fmt: skip
def test_hardverify_errors_name_file_row_and_field(tmp_path, content, message):
    path = _write(tmp_path / "hv.json", content)
    with pytest.raises(DataError) as e:
        load_hardverify(path)
    assert str(path) in str(e.value) and message in str(e.value)
    with pytest.raises(DataError, match="does not exist"):
        load_hardverify(tmp_path / "missing.json")


# ----- rates by hand -----------------------------------------------------------------------------------------------------
def test_summary_keys_and_rates_by_hand(tmp_path):
    judges = {"rule_based": rule_based_judge(), "math_verify": math_verify_judge(timeout=10.0, workers=1)}
    summary = evaluate_verifiers(load_hardverify(_write(tmp_path / "hv.json", ITEMS)), judges, tmp_path / "out")
    assert summary["num_items"] == 4 and summary["num_items_by_split"] == {"benchmarks": 2, "big_math": 2}
    rb, mv = summary["verifiers"]["rule_based"], summary["verifiers"]["math_verify"]
    assert set(rb) == {"false_negative_rate", "false_positive_rate", "by_split", "description", "stats"}
    assert set(rb["false_negative_rate"]) == {"agg_value", "ci_low", "ci_high", "count", "num_items"}
    assert rb["stats"] == {"calls": 8, "empty": 0, "errors": 0}
    # rule_based rejects the correct answers of b, c, d and accepts the incorrect one of c
    assert (rb["false_negative_rate"]["count"], rb["false_positive_rate"]["count"]) == (3, 1)
    assert rb["false_negative_rate"]["agg_value"] == pytest.approx(0.75)
    assert rb["false_positive_rate"]["agg_value"] == pytest.approx(0.25)
    assert rb["by_split"]["benchmarks"]["false_negative_rate"]["agg_value"] == pytest.approx(0.5)
    assert rb["by_split"]["benchmarks"]["false_positive_rate"]["agg_value"] == 0.0
    assert rb["by_split"]["big_math"]["false_positive_rate"]["agg_value"] == pytest.approx(0.5)
    big_fn = rb["by_split"]["big_math"]["false_negative_rate"]  # constant indicators: a degenerate interval
    assert (big_fn["agg_value"], big_fn["ci_low"], big_fn["ci_high"]) == (1.0, 1.0, 1.0)
    for rate in (rb["false_negative_rate"], rb["false_positive_rate"]):  # 4 items: a wide interval around the rate
        assert 0.0 <= rate["ci_low"] < rate["agg_value"] < rate["ci_high"] <= 1.0
    assert mv["false_negative_rate"]["agg_value"] == 0.0
    assert mv["false_positive_rate"]["agg_value"] == pytest.approx(0.25)
    records = json.loads((tmp_path / "out" / "VERIFIER_EVAL.json").read_text())
    assert records["c"]["verdicts"] == {"rule_based": {"fn_output": 0, "tn_output": 1},
                                        "math_verify": {"fn_output": 1, "tn_output": 1}}  # fmt: skip
    assert json.loads((tmp_path / "out" / "VERIFIER_SUMMARY.json").read_text())["verifiers"]["rule_based"] == rb
    table = format_summary(summary)
    assert "| rule_based | all | 0.750 [" in table and "(3/4)" in table and "| math_verify | big_math |" in table


# ----- the command -------------------------------------------------------------------------------------------------------
def test_cli_end_to_end_rule_based_and_report(tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "verifier", "--data_file", str(HARDVERIFY), "--verifiers", "rule_based", "--max_examples", "6",
            "--output_dir", str(out)]  # fmt: skip
    assert cli(argv) == 0
    assert "| rule_based | all |" in capsys.readouterr().out
    summary = json.loads((out / "VERIFIER_SUMMARY.json").read_text())
    records = json.loads((out / "VERIFIER_EVAL.json").read_text())
    assert list(summary["verifiers"]) == ["rule_based"] and summary["num_items"] == 6 and len(records) == 6
    fn = summary["verifiers"]["rule_based"]["false_negative_rate"]
    assert fn["count"] == sum(1 - r["verdicts"]["rule_based"]["fn_output"] for r in records.values())
    assert records["0"]["fn_output"] == "f(x)=2x"  # the file's first item, its id as a string
    assert cli(argv) == 2 and "already holds verifier results" in capsys.readouterr().err  # nothing overwritten
    assert cli(["report", "verifier", "--run", f"cpu={out}"]) == 0
    assert "| cpu | rule_based | all |" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--verifiers", "exact"], "--verifiers: ['exact'] not among"),
    (["--verifiers"], "nothing to measure"),
    (["--llm_timeout", "0"], "--llm_timeout must be > 0"),
    (["--llm_verifier_model", "/no/such/model"], "does not exist"),
])  # fmt: skip
def test_cli_bad_input_stops_before_writing(tmp_path, capsys, extra, message):
    out = tmp_path / "eval"
    assert cli(["eval", "verifier", "--data_file", str(HARDVERIFY), "--output_dir", str(out), *extra]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_cli_bad_data_file_names_it(tmp_path, capsys):
    bad = _write(tmp_path / "hv.json", [{**ITEMS[0], "question": 1}])
    assert cli(["eval", "verifier", "--data_file", str(bad), "--output_dir", str(tmp_path / "o")]) == 2
    assert f"{bad}: row 0: field 'question' must be a string" in capsys.readouterr().err


# ----- the LLM verifier: prompt, parser, failures --------------------------------------------------------------------------
def test_builtin_template_is_tinyvs_and_the_file_loads():
    prompts = load_verifier_prompts(TINYV / "tinyv_config.json")
    assert set(prompts) >= {DEFAULT_VERIFIER_ID, "zhangchenxu/TinyV-Qwen3-1.7B-Think"}
    assert prompts[DEFAULT_VERIFIER_ID] == TINYV_PROMPTS[DEFAULT_VERIFIER_ID]
    assert prompts["zhangchenxu/TinyV-1.5B-Think"].is_think_model
    assert prompts["zhangchenxu/TinyV-1.5B-Think"].max_completion_tokens == 512
    assert select_prompt("/models/TinyV-1.5B-Think", prompts)[0] == "zhangchenxu/TinyV-1.5B-Think"  # a local copy
    assert select_prompt(str(TINY_MODEL))[0] == DEFAULT_VERIFIER_ID  # no entry: the default template
    with pytest.raises(ValueError, match="is not one of"):
        select_prompt("x", prompts, key="nope")


@pytest.mark.parametrize("entry, message", [
    ({"template": "{{QUESTION}} {{MODEL_ANSWER}}"}, "lacks the placeholder(s) ['{{GROUND_TRUTH_ANSWER}}']"),
    ({"template": "{{QUESTION}}{{GROUND_TRUTH_ANSWER}}{{MODEL_ANSWER}}", "temperature": 0.7}, "only greedy"),
    ({"template": "{{QUESTION}}{{GROUND_TRUTH_ANSWER}}{{MODEL_ANSWER}}", "max_completion_tokens": 0}, ">= 1"),
])  # fmt: skip
def test_prompt_file_errors_name_file_and_key(tmp_path, entry, message):
    path = _write(tmp_path / "c.json", {"m/x": entry})
    with pytest.raises(DataError) as e:
        load_verifier_prompts(path)
    assert f"{path}: entry 'm/x'" in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("text, verdict", [
    ("True", True), ("  true\n", True), ("TRUE.", True), ('"True"', True), ("**True**", True), ("True, because", True),
    ("False", False), (" false", False),
    ("", None), ("Truly", None), ("It is True", None), ("not true", None), ("Yes", None), (None, None),
])  # fmt: skip
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) is verdict


def test_parse_verdict_think_model_reads_after_the_reasoning():
    assert parse_verdict("<think>false start</think>\n True", is_think_model=True) is True
    assert parse_verdict("reasoning... Answer: False", is_think_model=True) is False
    assert parse_verdict("True", is_think_model=True) is None  # no end of reasoning: invalid


@pytest.fixture(scope="module")
def verifier_parts():
    from llmpost.models import load_saved_model, load_tokenizer

    return load_saved_model(str(TINY_MODEL)).eval(), load_tokenizer(str(TINY_MODEL))


def test_prompt_is_built_exactly(verifier_parts):
    model, tok = verifier_parts
    v = LLMVerifier(model, tok)
    assert not v.use_chat_template  # stories260K has no chat template: the plain text
    expected = TINYV_PROMPTS[DEFAULT_VERIFIER_ID].template.replace("{{QUESTION}}", "What is 1/2 + 1/2?").replace(
        "{{GROUND_TRUTH_ANSWER}}", "1").replace("{{MODEL_ANSWER}}", "1.0")  # TinyV's own construction (tinyv.py)
    assert v.prompt_text("What is 1/2 + 1/2?", "1", "so \\boxed{1.0}") == expected  # the boxed answer is sent
    assert v.prompt_text("What is 1/2 + 1/2?", "1", " 1.0 ") == expected
    assert expected.startswith("You are an AI tasked with identifying false negatives") and "{{" not in expected
    # a placeholder inside a question is left alone (one-pass replacement)
    assert "<model_answer>2</model_answer>" in v.prompt_text("{{MODEL_ANSWER}}?", "1", "2")
    chat_tok = copy.deepcopy(tok)
    chat_tok.chat_template = ("{% for m in messages %}<|user|>{{ m['content'] }}{% endfor %}"
                              "{% if add_generation_prompt %}<|assistant|>{% endif %}")  # fmt: skip
    chat = LLMVerifier(model, chat_tok)
    assert chat.use_chat_template
    assert chat.prompt_text("What is 1/2 + 1/2?", "1", "1.0") == f"<|user|>{expected}<|assistant|>"
    assert len(LLMVerifier(model, tok, max_answer_chars=3).answer_text("abcdef")) == 3  # the answer's tail


def test_verify_batch_with_the_tiny_model(verifier_parts):
    """Two real items through the generation layer: 0/1 verdicts, the raw answers kept, every answer counted."""
    model, tok = verifier_parts
    items = load_hardverify(HARDVERIFY)[:2]
    v = LLMVerifier(model, tok, batch_size=2, timeout=120.0)
    verdicts = v.verify_batch([it["question"] for it in items], [it["ground_truth"] for it in items],
                              [it["fn_output"] for it in items])  # fmt: skip
    assert len(verdicts) == 2 and set(verdicts) <= {0, 1}
    assert all(isinstance(r, str) for r in v.last_responses)
    s = v.stats
    assert (s.calls, s.errors, s.timeouts, s.empty) == (2, 0, 0, 0) and s.overturned == sum(verdicts)
    assert s.invalid == sum(parse_verdict(r) is None for r in v.last_responses)
    appeal = v.as_verifier({items[0]["ground_truth"]: items[0]["question"]})  # the appeals path's (completion, gold)
    assert safe_verify(appeal, items[0]["fn_output"], items[0]["ground_truth"], VerifyStats()) in (0, 1)
    assert v.stats.calls == 3


def _fake_generation(monkeypatch, fn):
    monkeypatch.setattr(lv, "generate_greedy", fn)


def test_true_false_and_anything_else(verifier_parts, monkeypatch):
    model, tok = verifier_parts
    _fake_generation(monkeypatch, lambda m, t, prompts, **kw: ["True", "Maybe", " false", "true!"][: len(prompts)])
    v = LLMVerifier(model, tok, batch_size=4)
    assert v.verify_batch(["q"] * 5, ["1"] * 5, ["1.0", "x", "y", "z", "  "]) == [1, 0, 0, 1, 0]
    assert (v.stats.calls, v.stats.empty, v.stats.invalid, v.stats.overturned) == (5, 1, 1, 2)
    assert v.last_responses == ["True", "Maybe", " false", "true!", None]


def test_a_raising_verifier_is_not_overturned(verifier_parts, monkeypatch, caplog):
    model, tok = verifier_parts
    calls = []

    def boom(m, t, prompts, **kw):
        calls.append(len(prompts))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        return ["True"] * len(prompts)

    _fake_generation(monkeypatch, boom)
    v = LLMVerifier(model, tok, batch_size=2)
    with caplog.at_level(logging.WARNING, logger=lv.__name__):
        assert v.verify_batch(["q"] * 3, ["1"] * 3, ["a", "b", "c"]) == [0, 0, 1]  # the next batch still runs
    assert v.stats.errors == 2 and "CUDA out of memory" in caplog.text
    assert calls == [2, 1]


def test_a_verifier_past_its_time_limit_is_not_overturned(verifier_parts, monkeypatch, caplog):
    model, tok = verifier_parts
    release = threading.Event()

    def slow(m, t, prompts, **kw):
        release.wait(30)
        return ["True"] * len(prompts)

    _fake_generation(monkeypatch, slow)
    v = LLMVerifier(model, tok, timeout=0.3)
    try:
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger=lv.__name__):
            assert v.verify_batch(["q", "q"], ["1", "1"], ["a", "b"]) == [0, 0]
            assert v.verify_batch(["q"], ["1"], ["a"]) == [0]  # the stuck call still holds the model: a timeout too
        assert time.monotonic() - start < 5.0
        assert v.stats.timeouts == 3 and v.stats.errors == 0 and "time limit" in caplog.text
    finally:
        release.set()
    # the stuck generation finishes, its late answers are dropped, and the next call works
    _fake_generation(monkeypatch, lambda m, t, prompts, **kw: ["True"] * len(prompts))
    v.timeout = 30.0
    assert v.verify_batch(["q"], ["1"], ["a"]) == [1] and v.stats.overturned == 1


def test_bad_arguments(verifier_parts):
    model, tok = verifier_parts
    with pytest.raises(ValueError, match="backend"):
        LLMVerifier(model, tok, backend="openai")
    with pytest.raises(ValueError, match="timeout"):
        LLMVerifier(model, tok, timeout=0)
    with pytest.raises(ValueError, match="differ in length"):
        LLMVerifier(model, tok).verify_batch(["q"], ["1", "2"], ["a"])
    assert VerifierPrompt("{{QUESTION}}|{{GROUND_TRUTH_ANSWER}}|{{MODEL_ANSWER}}").render("q", "g", "a") == "q|g|a"


def test_cli_with_the_llm_verifier_on_two_items(tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli(["eval", "verifier", "--data_file", str(HARDVERIFY), "--max_examples", "2", "--verifiers",
                "rule_based", "--llm_verifier_model", str(TINY_MODEL), "--llm_backend", "transformers",
                "--output_dir", str(out)]) == 0  # fmt: skip
    summary = json.loads((out / "VERIFIER_SUMMARY.json").read_text())
    assert list(summary["verifiers"]) == ["rule_based", "llm"]
    llm = summary["verifiers"]["llm"]
    assert llm["stats"]["calls"] == 4 and llm["stats"]["errors"] == llm["stats"]["timeouts"] == 0
    assert 0.0 <= llm["false_negative_rate"]["agg_value"] <= 1.0
    assert summary["settings"]["llm"]["backend"] == "transformers" and summary["settings"]["llm"]["max_new_tokens"] == 8
    records = json.loads((out / "VERIFIER_EVAL.json").read_text())
    assert set(records["0"]["responses"]["llm"]) == {"fn_output", "tn_output"}
    assert "| llm | all |" in capsys.readouterr().out
