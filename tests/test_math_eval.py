"""MATH evaluation: grading records and the pass@k summary by hand, the predictions file and its bad input, the
``llmpost eval/report math`` commands, and the DCO recipe on the synthetic arithmetic task (pass@k rises with
training)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED, TINY_MODEL
from llmpost.benchmarks.math.data import arithmetic_problems, load_math
from llmpost.benchmarks.math.evaluate import extract_answer, grade_problems, load_predictions, summarize
from llmpost.cli import main as cli
from llmpost.utils import DataError

pytestmark = pytest.mark.usefixtures("one_thread")
MATH500 = SHARED / "data" / "math" / "math500_test.jsonl"
PROBLEMS = [{"unique_id": "a", "answer": "\\frac{1}{2}", "subject": "Algebra", "level": 1},
            {"unique_id": "b", "answer": "7", "subject": "Geometry", "level": 3}]  # fmt: skip


def test_records_and_summary_by_hand():
    completions = [["so $\\frac12$", "\\boxed{0.5}", "\\boxed{2}", ""], ["\\boxed{7}", "7", "\\boxed{8}", "\\boxed{"]]
    records = grade_problems(PROBLEMS, completions)
    assert records["a"]["correct"] == [True, True, False, False]
    assert records["b"]["correct"] == [True, True, False, False]
    assert records["a"]["extracted"] == ["\\frac12", "0.5", "2", None]
    assert records["a"]["num_correct"] == 2
    s = summarize(records)
    assert s["num_problems"] == 2 and s["num_samples"] == 4 and set(s["pass@k"]) == {"1", "2", "4"}
    # n = 4, c = 2: pass@1 = 1/2, pass@2 = 1 - C(2,2)/C(4,2) = 5/6, pass@4 = 1
    assert s["pass@k"]["1"]["mean"] == pytest.approx(0.5)
    assert s["pass@k"]["2"]["mean"] == pytest.approx(5 / 6)
    assert s["pass@k"]["4"]["mean"] == pytest.approx(1.0) and s["pass@k"]["4"]["stderr"] == 0
    assert s["accuracy_by_subject"] == {"Algebra": 0.5, "Geometry": 0.5}
    assert s["accuracy_by_level"] == {"1": 0.5, "3": 0.5}


def test_extract_answer():
    assert extract_answer("x \\boxed{\\frac{1}{2}} and $3$") == "\\frac{1}{2}"
    assert extract_answer("it is $3$, no, $4$") == "4"
    assert extract_answer("no answer") is None and extract_answer("") is None


def _write(path: Path, lines) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("line, message", [
    ({"unique_id": "zz", "completions": ["1"]}, "unknown unique_id 'zz'"),
    ({"unique_id": "a", "completions": []}, "non-empty list of strings"),
    ({"unique_id": "a", "completions": [1, 2]}, "non-empty list of strings"),
])  # fmt: skip
def test_predictions_bad_lines_name_the_line(tmp_path, line, message):
    path = _write(tmp_path / "p.jsonl", [{"unique_id": "b", "completions": ["7"]}, line])
    with pytest.raises(DataError, match=f"line 2: .*{message}" if "unique" not in message else message):
        load_predictions(path, PROBLEMS)


def test_predictions_duplicate_missing_key_and_subset(tmp_path):
    with pytest.raises(DataError, match="more than once"):
        load_predictions(_write(tmp_path / "d.jsonl", [{"unique_id": "a", "completions": ["1"]}] * 2), PROBLEMS)
    with pytest.raises(DataError, match="lacks \\[.completions.\\]"):
        load_predictions(_write(tmp_path / "k.jsonl", [{"unique_id": "a", "text": "1"}]), PROBLEMS)
    rows, comps = load_predictions(_write(tmp_path / "s.jsonl", [{"unique_id": "b", "completions": "7"}]), PROBLEMS)
    assert [r["unique_id"] for r in rows] == ["b"] and comps == [["7"]]  # a lone string is one completion


def test_load_math_errors(tmp_path):
    assert len(load_math(str(MATH500))) == 500
    with pytest.raises(DataError, match="lacks column"):
        load_math(str(_write(tmp_path / "x.jsonl", [{"problem": "p"}])))
    with pytest.raises(DataError, match="occurs more than once"):
        load_math(str(_write(tmp_path / "y.jsonl", [{"problem": "p", "answer": "1", "unique_id": "u"}] * 2)))
    with pytest.raises(DataError, match="line 2"):
        load_math(str(_write(tmp_path / "z.jsonl", [{"problem": "p", "answer": "1", "unique_id": "u"}, "{oops"])))
    with pytest.raises(ValueError, match="size must be"):
        arithmetic_problems("train", 10**6)


def test_cli_grades_a_predictions_file_and_refuses_to_clobber(tmp_path, capsys):
    rows = [json.loads(line) for line in MATH500.read_text().splitlines()[:20]]
    preds = _write(tmp_path / "p.jsonl", [{"unique_id": r["unique_id"], "completions": [r["solution"], "\\boxed{-1}"]}
                                          for r in rows])  # fmt: skip
    out = tmp_path / "eval"
    argv = ["eval", "math", "--predictions", str(preds), "--data_file", str(MATH500), "--output_dir", str(out)]
    assert cli(argv) == 0
    summary = json.loads((out / "MATH_SUMMARY.json").read_text())
    assert summary["num_problems"] == 20 and summary["pass@k"]["1"]["mean"] == pytest.approx(0.5)
    assert summary["pass@k"]["2"]["mean"] == pytest.approx(1.0)
    assert cli(argv) == 2 and "already holds MATH results" in capsys.readouterr().err  # nothing overwritten
    bad = ["eval", "math", "--data_file", str(MATH500), "--output_dir", str(tmp_path / "e2")]
    assert cli(bad) == 2 and "--model_name_or_path" in capsys.readouterr().err
    assert cli([*bad, "--model_name_or_path", str(TINY_MODEL), "--num_samples", "0"]) == 2
    assert "--num_samples must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "e2").exists()


# ----- end to end: the DCO recipe on the synthetic arithmetic task ------------------------------------------------------


def _recipe(out: Path, *extra: str) -> None:
    cmd = [sys.executable, "recipes/dco_math.py", "--config", "configs/dco_math_tiny.yaml", "--output_dir", str(out),
           "--model_name_or_path", str(TINY_MODEL), "--arithmetic_train_size", "400", "--arithmetic_test_size", "32",
           "--eval_num_samples", "16", "--disable_tqdm", "true", *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny model from scratch: untrained (0 steps) and after 3 epochs of DCO (N = 16) on 400 problems."""
    root = tmp_path_factory.mktemp("dco")
    _recipe(root / "before", "--max_steps", "1", "--learning_rate", "1e-12")
    _recipe(root / "after", "--num_train_epochs", "3")
    return root


def test_recipe_shows_pass_at_k_rising_with_training(trained):
    before = json.loads((trained / "before" / "eval" / "MATH_SUMMARY.json").read_text())
    after = json.loads((trained / "after" / "eval" / "MATH_SUMMARY.json").read_text())
    assert after["num_problems"] == 32 and after["num_samples"] == 16
    curve = [after["pass@k"][k]["mean"] for k in ("1", "2", "4", "8", "16")]
    assert curve == sorted(curve)  # pass@k grows with k
    assert before["pass@k"]["16"]["mean"] == 0  # the untrained model never writes the sum
    assert after["pass@k"]["16"]["mean"] >= 0.15  # measured 0.3-0.5 here
    records = json.loads((trained / "after" / "eval" / "MATH_EVAL.json").read_text())
    assert all(len(r["samples"]) == 16 and r["answer"] for r in records.values())


def test_eval_and_report_commands_on_the_trained_model(trained, tmp_path):
    data = tmp_path / "arith"
    subprocess.run([sys.executable, "scripts/make_arithmetic.py", "--out_dir", str(data), "--test_size", "32"],
                   cwd=ROOT, check=True, capture_output=True)  # fmt: skip
    out = tmp_path / "eval"
    argv = ["eval", "math", "--model_name_or_path", str(trained / "after"), "--data_file", str(data / "test.jsonl"),
            "--num_samples", "16", "--max_new_tokens", "8", "--output_dir", str(out), "--batch_size", "512",
            "--user_start_tag", "Please give the answer to the following question directly! No need to write any "
            "steps.\\nQuestion: ", "--user_end_tag", "\\n", "--asst_start_tag", "Answer: "]  # fmt: skip
    assert cli(argv) == 0
    mine = json.loads((out / "MATH_SUMMARY.json").read_text())
    recipe = json.loads((trained / "after" / "eval" / "MATH_SUMMARY.json").read_text())
    # same problems, prompt, seed and batching as the recipe's evaluation: the same samples, the same numbers
    assert mine["pass@k"] == recipe["pass@k"]
    png = tmp_path / "passk.png"
    assert cli(["report", "math", "--run", f"before={trained / 'before' / 'eval'}", "--run", f"after={out}",
                "--plot", str(png), "--output", str(tmp_path / "t.md")]) == 0  # fmt: skip
    table = (tmp_path / "t.md").read_text()
    assert "| after |" in table and "pass@16" in table and png.stat().st_size > 10_000
    assert math.isclose(mine["accuracy"], mine["pass@k"]["1"]["mean"])


def test_prompts_base_and_chat_template(tokenizer):
    import copy

    from llmpost.benchmarks.math.data import MathTemplateArgs, math_prompts, target_text, tokenize_math

    rows = arithmetic_problems("test", 2)
    base = tokenizer.decode(math_prompts(rows, tokenizer, MathTemplateArgs(), 128)[0], skip_special_tokens=True)
    assert base == "Problem: What is 21 + 28?\nGive the final answer in \\boxed{}.\nSolution: "
    chat_tok = copy.deepcopy(tokenizer)
    chat_tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                              "{% if add_generation_prompt %}<assistant>{% endif %}")  # fmt: skip
    chat = MathTemplateArgs(apply_chat_template=True, system_prompt="Be brief.")
    text = chat_tok.decode(math_prompts(rows, chat_tok, chat, 128)[0], skip_special_tokens=True)
    assert text == "<system>Be brief.\n<user>What is 21 + 28?\n<assistant>"
    assert [target_text(rows[0], t) for t in ("solution", "direct", "boxed")] == ["\\boxed{49}", "$49$", "\\boxed{49}"]
    import datasets

    tokenized = tokenize_math(datasets.Dataset.from_list(rows), tokenizer, MathTemplateArgs(), "direct", 128)
    labels = [t for t in tokenized[0]["labels"] if t != -100]
    assert tokenizer.decode(labels, skip_special_tokens=True).strip() == "$49$" and labels[-1] == tokenizer.eos_token_id


E1 = ("{problem}\nLet's think step by step and enclose the reasoning process within <think> and </think> tags.\n"
      "The final result in the answer MUST BE within \\boxed{}.")  # arXiv 2510.00915, E.1 (configs/grpo_noisy_math.yaml)


def test_problem_template_e1_and_prompt_length_filter(tokenizer):
    import copy

    import datasets

    from llmpost.benchmarks.math.data import (
        MathArguments,
        MathTemplateArgs,
        drop_long_prompts,
        grpo_prompts,
        math_prompts,
    )

    rows = arithmetic_problems("test", 3)
    chat_tok = copy.deepcopy(tokenizer)
    chat_tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                              "{% if add_generation_prompt %}<assistant>{% endif %}")  # fmt: skip
    chat = MathTemplateArgs(apply_chat_template=True, problem_template=E1)  # one user turn, no system prompt (E.1)
    expected = ("<user>What is 21 + 28?\nLet's think step by step and enclose the reasoning process within <think> "
                "and </think> tags.\nThe final result in the answer MUST BE within \\boxed{}.\n<assistant>")
    assert chat_tok.decode(math_prompts(rows, chat_tok, chat, 512)[0], skip_special_tokens=True) == expected
    train = grpo_prompts(datasets.Dataset.from_list(rows), chat)  # GRPO (TRL applies the chat template itself)
    assert train[0]["prompt"] == [{"role": "user", "content": E1.replace("{problem}", "What is 21 + 28?")}]
    lengths = [len(ids) for ids in math_prompts(rows, chat_tok, chat, 512)]
    kept = drop_long_prompts(train, chat_tok, chat, max(lengths) - 1)  # drops exactly the longest prompt(s)
    assert len(kept) == sum(n <= max(lengths) - 1 for n in lengths) < len(rows)
    assert len(drop_long_prompts(train, chat_tok, chat, max(lengths))) == len(rows)
    with pytest.raises(Exception, match="every training prompt is longer"):
        drop_long_prompts(train, chat_tok, chat, 1)
    base = MathTemplateArgs(problem_template="Q: {problem} (think)")
    assert grpo_prompts(datasets.Dataset.from_list(rows), base)[0]["prompt"] == \
        "Problem: Q: What is 21 + 28? (think)\nGive the final answer in \\boxed{}.\nSolution: "
    with pytest.raises(ValueError, match="problem_template"):
        MathTemplateArgs(problem_template="no placeholder")
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        MathArguments(max_prompt_tokens=0)
