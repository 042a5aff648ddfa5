"""Preference data: row validation names the source and row, local files and hub ids load, TOFU perturbed splits give
pairs (real data), and the held-out split is disjoint by prompt and deterministic."""

from __future__ import annotations

import json

import datasets
import pytest

from conftest import TOFU_DIR
from llmpost.benchmarks.preference.data import tofu_preference_pairs, tofu_sft_rows
from llmpost.data.preference import load_preference_dataset, train_heldout_split, validate_preference_rows
from llmpost.utils import DataError

GOOD = {"prompt": "Q?", "chosen": "right", "rejected": "wrong"}


def _rows(i, **bad):
    rows = [dict(GOOD) for _ in range(4)]
    rows[i].update(bad)
    return rows


@pytest.mark.parametrize("bad, match", [
    ({"chosen": "   "}, r"src\.jsonl: row 2: column 'chosen' is empty"),
    ({"prompt": "\n"}, r"src\.jsonl: row 2: column 'prompt' is empty"),
    ({"rejected": ""}, r"src\.jsonl: row 2: column 'rejected' is empty"),
    ({"rejected": " right \n"}, r"src\.jsonl: row 2: chosen and rejected are the same text"),
    ({"chosen": None}, r"src\.jsonl: row 2: column 'chosen' is missing or null"),
    ({"chosen": 3}, r"src\.jsonl: row 2: column 'chosen' must be a string, got int"),
])
def test_validation_errors_name_source_and_row(bad, match):
    validate_preference_rows([dict(GOOD)] * 3, "src.jsonl")
    sources = [_rows(2, **bad)]
    if bad.get("chosen") != 3:  # arrow cannot hold an int in a string column
        sources.append(datasets.Dataset.from_list(_rows(2, **bad)))
    for rows in sources:
        with pytest.raises(ValueError, match=match):
            validate_preference_rows(rows, "src.jsonl")


def test_validation_missing_column_and_empty():
    rows = _rows(1)
    del rows[1]["rejected"]
    with pytest.raises(ValueError, match=r"mine: row 1: missing column\(s\) \['rejected'\]"):
        validate_preference_rows(rows, "mine")
    ds = datasets.Dataset.from_dict({"prompt": ["a"], "chosen": ["b"]})
    with pytest.raises(ValueError, match=r"hub/x: row 0: missing column\(s\) \['rejected'\]"):
        validate_preference_rows(ds, "hub/x")
    with pytest.raises(ValueError, match="holds no preference rows"):
        validate_preference_rows([], "empty.jsonl")


def test_load_local_files(tmp_path):
    rows = [dict(GOOD, prompt=f"Q{i}?") for i in range(3)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "p.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    for name in ("p.jsonl", "p.json", "p.parquet"):
        ds = load_preference_dataset(tmp_path / name)
        assert isinstance(ds, datasets.Dataset) and ds.to_list() == rows, name


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match=r"preference data file '.*nope\.jsonl' does not exist"):
        load_preference_dataset(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="does not exist"):
        load_preference_dataset("./missing.parquet")
    bad = [dict(GOOD), dict(GOOD, chosen=" wrong")]
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad))
    with pytest.raises(DataError, match=r"bad\.jsonl: row 1: chosen and rejected are the same"):
        load_preference_dataset(tmp_path / "bad.jsonl")
    (tmp_path / "p.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError, match="unsupported preference data file type '.csv'"):
        load_preference_dataset(tmp_path / "p.csv")
    (tmp_path / "obj.json").write_text(json.dumps({"prompt": "a"}))
    with pytest.raises(DataError, match="expected a JSON list of objects"):
        load_preference_dataset(tmp_path / "obj.json")
    with pytest.raises(DataError, match="is not a file"):
        load_preference_dataset(tmp_path)


def test_hub_id_goes_to_load_dataset_and_its_error_is_named(monkeypatch):
    calls = []

    def fake_load(path, name=None, split=None):
        calls.append((path, name, split))
        if path == "org/missing":
            raise ConnectionError("offline")
        return datasets.Dataset.from_list([dict(GOOD)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert len(load_preference_dataset("org/prefs", split="test")) == 1
    assert calls == [("org/prefs", None, "test")]
    with pytest.raises(DataError, match=r"could not load hub dataset 'org/missing' \(split 'train'\).*offline"):
        load_preference_dataset("org/missing")


def _perturbed(split):
    return [json.loads(line) for line in (TOFU_DIR / f"{split}.jsonl").read_text().splitlines() if line.strip()]


def test_tofu_pairs_from_real_data():
    raw = _perturbed("forget10_perturbed")
    one = tofu_preference_pairs(TOFU_DIR / "forget10_perturbed.jsonl")
    every = tofu_preference_pairs(TOFU_DIR / "forget10_perturbed.jsonl", pairing="all")
    assert one.column_names == every.column_names == ["prompt", "chosen", "rejected"]
    assert len(raw) == len(one) == 400 and len(every) == 400 * 5
    assert one["prompt"] == [r["question"] for r in raw] and one["chosen"] == [r["answer"] for r in raw]
    for row, src in zip(one, raw):
        assert row["rejected"] in src["perturbed_answer"] and row["rejected"].strip() != row["chosen"].strip()
    assert every["rejected"] == [p for r in raw for p in r["perturbed_answer"]]
    assert all(c.strip() != r.strip() for c, r in zip(every["chosen"], every["rejected"]))
    # deterministic in the seed; another seed draws other answers; the draw uses all five answers
    assert tofu_preference_pairs(TOFU_DIR / "forget10_perturbed.jsonl")["rejected"] == one["rejected"]
    other = tofu_preference_pairs(TOFU_DIR / "forget10_perturbed.jsonl", seed=1)
    assert sum(a != b for a, b in zip(one["rejected"], other["rejected"])) > 200
    positions = {src["perturbed_answer"].index(r) for r, src in zip(one["rejected"], raw)}
    assert positions == set(range(5))
    # a question gets the same rejected answer in forget01 as in forget10 (forget01 is a subset of forget10)
    small = tofu_preference_pairs(TOFU_DIR / "forget01_perturbed.jsonl")
    by_prompt = dict(zip(one["prompt"], one["rejected"]))
    assert len(small) == 40 and all(by_prompt[p] == r for p, r in zip(small["prompt"], small["rejected"]))
    # paraphrased answers as chosen; real_authors has 3 perturbed answers per question
    para = tofu_preference_pairs(TOFU_DIR / "retain_perturbed.jsonl", chosen_key="paraphrased_answer")
    assert para["chosen"] == [r["paraphrased_answer"] for r in _perturbed("retain_perturbed")]
    assert len(tofu_preference_pairs(TOFU_DIR / "real_authors_perturbed.jsonl", pairing="all")) == 300


def test_tofu_errors_name_file_and_line(tmp_path):
    path = tmp_path / "x_perturbed.jsonl"
    good = {"question": "q", "answer": "a", "perturbed_answer": ["b", "c"]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"question": "q2", "answer": "a"}) + "\n")
    with pytest.raises(DataError, match=r"x_perturbed\.jsonl: line 2: column 'perturbed_answer' must be a non-empty list"):
        tofu_preference_pairs(path)
    path.write_text(json.dumps(dict(good, perturbed_answer=["a ", "a"])) + "\n")
    with pytest.raises(DataError, match=r"line 1: every perturbed answer equals the chosen answer"):
        tofu_preference_pairs(path)
    path.write_text(json.dumps(dict(good, answer="  ")) + "\n")
    with pytest.raises(DataError, match=r"line 1: column 'answer' is empty"):
        tofu_preference_pairs(path)
    with pytest.raises(ValueError, match=r"pairing: 'some' is not one of \['one', 'all'\]"):
        tofu_preference_pairs(TOFU_DIR / "forget01_perturbed.jsonl", pairing="some")
    # a perturbed answer equal to the true one is skipped
    path.write_text(json.dumps(dict(good, perturbed_answer=["a", "b"])) + "\n")
    assert tofu_preference_pairs(path, pairing="all")["rejected"] == ["b"]


def test_tofu_sft_rows():
    rows = tofu_sft_rows(TOFU_DIR / "forget10.jsonl")
    raw = [json.loads(line) for line in (TOFU_DIR / "forget10.jsonl").read_text().splitlines()]
    assert rows.column_names == ["prompt", "completion"] and len(rows) == 400
    assert rows["prompt"] == [r["question"] for r in raw] and rows["completion"] == [r["answer"] for r in raw]
    assert tofu_sft_rows(TOFU_DIR / "forget10_perturbed.jsonl")["completion"][0] == raw[0]["answer"]


def test_heldout_split_is_disjoint_by_prompt_and_deterministic():
    pairs = tofu_preference_pairs(TOFU_DIR / "forget10_perturbed.jsonl", pairing="all")  # 5 rows per prompt
    train, held = train_heldout_split(pairs, 0.1, seed=0)
    assert not set(train["prompt"]) & set(held["prompt"])
    assert len(set(held["prompt"])) == 40 and len(held) == 200 and len(train) == 1800
    again_train, again_held = train_heldout_split(pairs, 0.1, seed=0)
    assert again_held.to_list() == held.to_list() and again_train.to_list() == train.to_list()
    # rows keep their order; the held-out prompts do not depend on the row order; another seed holds out others
    held_prompts = set(held["prompt"])
    assert train["prompt"] == [p for p in pairs["prompt"] if p not in held_prompts]
    _, shuffled_held = train_heldout_split(pairs.shuffle(seed=3), 0.1, seed=0)
    assert set(shuffled_held["prompt"]) == set(held["prompt"])
    _, other = train_heldout_split(pairs, 0.1, seed=1)
    assert set(other["prompt"]) != set(held["prompt"])
    # edge cases
    assert len(train_heldout_split(pairs, 0.0)[1]) == 0
    tiny = datasets.Dataset.from_list([dict(GOOD, prompt=p) for p in "abc"])
    assert len(train_heldout_split(tiny, 0.01)[1]) == 1  # a positive fraction holds out at least one prompt
    with pytest.raises(ValueError, match="heldout_fraction"):
        train_heldout_split(pairs, 1.0)
    with pytest.raises(ValueError, match="leaves no training group"):
        train_heldout_split(tiny.select([0]), 0.5)
    with pytest.raises(ValueError, match="column 'question' not in dataset columns"):
        train_heldout_split(pairs, 0.1, group_column="question")
