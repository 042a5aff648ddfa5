"""TOFU data: splits load by hub name from a local directory, prompts are open-unlearning's, labels cover the answer only."""

from __future__ import annotations

import json

import pytest

from conftest import TOFU_DIR
from llmpost.benchmarks.tofu.data import first_authors, load_split
from llmpost.data.collators import ForgetRetainCollator
from llmpost.data.templates import TemplateArgs, encode_prompt, encode_qa
from llmpost.data.unlearn import ForgetRetainDataset
from llmpost.ops import IGNORE_INDEX
from llmpost.utils import DataError


def test_splits_have_documented_sizes():
    sizes = {"full": 4000, "forget10": 400, "retain90": 3600, "forget10_perturbed": 400, "retain_perturbed": 400,
             "real_authors_perturbed": 100, "world_facts_perturbed": 117, "holdout10": 400}
    for split, n in sizes.items():
        assert len(load_split(split, str(TOFU_DIR), required_columns=("question",))) == n, split
    # forget10 is the last 400 rows of full, retain90 the first 3600 (so the author subsets below are well defined)
    full, forget = load_split("full", str(TOFU_DIR)), load_split("forget10", str(TOFU_DIR))
    assert full[3600]["question"] == forget[0]["question"]


def test_missing_split_and_column_errors_name_them(tmp_path):
    with pytest.raises(DataError, match=r"'forget11' not found.*forget10"):
        load_split("forget11", str(TOFU_DIR))
    with pytest.raises(DataError, match="does not exist"):
        load_split("forget10", str(tmp_path / "nope"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['answer'\]"):
        load_split("bad", str(tmp_path))


def test_first_authors():
    retain = load_split("retain90", str(TOFU_DIR))
    assert len(first_authors(retain, 23)) == 460
    assert first_authors(retain, None) is retain
    with pytest.raises(DataError, match="num_retain_authors"):
        first_authors(retain, 181)


def test_base_template_matches_open_unlearning(tokenizer):
    """preprocess_chat_instance: prompt = user_start + q + user_end + asst_start, tokenised alone (with BOS);
    labels are -100 over those prompt tokens, then the answer tokens, then EOS."""
    t = TemplateArgs()
    q, a = "Who wrote it?", "Jane Doe wrote it."
    prompt_ids = tokenizer("Question: Who wrote it?\nAnswer: ", add_special_tokens=True)["input_ids"]
    full_ids = tokenizer("Question: Who wrote it?\nAnswer: Jane Doe wrote it.", add_special_tokens=True)["input_ids"]
    enc = encode_qa(tokenizer, t, q, a, max_length=512)
    assert encode_prompt(tokenizer, t, q, 512) == prompt_ids
    assert enc["input_ids"] == full_ids + [tokenizer.eos_token_id]
    n = len(prompt_ids)
    assert enc["labels"] == [IGNORE_INDEX] * n + enc["input_ids"][n:]
    assert enc["input_ids"][0] == tokenizer.bos_token_id and enc["attention_mask"] == [1] * len(enc["input_ids"])


def test_custom_tags_and_chat_template(tokenizer):
    t = TemplateArgs(user_start_tag="[Q] ", user_end_tag=" ", asst_start_tag="[A] ")
    assert encode_prompt(tokenizer, t, "hi", 512) == tokenizer("[Q] hi [A] ")["input_ids"]
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    chat = TemplateArgs(apply_chat_template=True, system_prompt="Be brief.")
    enc = encode_qa(tok, chat, "Who?", "Me.", 512)
    prompt = tok("<system>Be brief.<user>Who?<assistant>", add_special_tokens=False)["input_ids"]
    assert enc["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert tok.decode([i for i in enc["labels"] if i != IGNORE_INDEX], skip_special_tokens=True).strip() == "Me."


def test_collator_pairs_and_pads(tokenizer):
    t = TemplateArgs()
    forget = [dict(encode_qa(tokenizer, t, "a?", "b" * n, 512), index=i) for i, n in enumerate((3, 9))]
    retain = [dict(encode_qa(tokenizer, t, "c?", "d" * n, 512), index=i) for i, n in enumerate((1, 5, 7))]
    ds = ForgetRetainDataset(forget, retain, seed=0)
    batch = ForgetRetainCollator(tokenizer.pad_token_id)([ds[0], ds[1]])
    assert batch["forget_input_ids"].shape == batch["forget_labels"].shape == batch["forget_attention_mask"].shape
    assert batch["forget_index"].tolist() == [0, 1]
    short = len(forget[0]["input_ids"])
    assert (batch["forget_labels"][0, short:] == IGNORE_INDEX).all() and (batch["forget_attention_mask"][0, short:] == 0).all()
    assert "retain_input_ids" in batch and batch["retain_input_ids"].shape[0] == 2


def test_malformed_jsonl_names_file_and_line(tmp_path):
    """A broken line in a local split is one DataError naming the file and the line, not a datasets traceback."""
    good = (TOFU_DIR / "forget01.jsonl").read_text().splitlines()
    (tmp_path / "forget01.jsonl").write_text("\n".join(good[:3] + ['{"question": "broken'] + good[3:]) + "\n")
    with pytest.raises(DataError, match=r"forget01\.jsonl: line 4, column \d+: not valid JSON.*broken"):
        load_split("forget01", str(tmp_path))
    (tmp_path / "forget05.jsonl").write_text(good[0] + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"forget05\.jsonl: line 2: expected a JSON object, got list"):
        load_split("forget05", str(tmp_path))


def test_malformed_json_file_names_line_and_column(tmp_path):
    from llmpost.data.files import read_json

    (tmp_path / "a.json").write_text('[\n  {"prompt": "x",\n   "gt": }\n]\n')
    with pytest.raises(DataError, match=r"a\.json: line 3, column 10: not valid JSON"):
        read_json(tmp_path / "a.json")
    with pytest.raises(DataError, match="does not exist"):
        read_json(tmp_path / "missing.json")
