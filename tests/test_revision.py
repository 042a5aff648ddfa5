"""Self-revision (llmpost.generation.revision.self_revise, SRPO arXiv 2406.01660) on the tiny real Llama: k = 0 is plain
greedy generation; each round's prompts hold the previous round's drafts; order; batching as one call per round;
argument validation."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_MODEL
from llmpost.data.templates import PreferenceTemplates
from llmpost.generation import generate_greedy
from llmpost.generation import revision as R

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

PROMPTS = ["Lily was sad.", "Tom and his mom went to the park", "One day, a little girl named Sue found a shiny"]
TEMPLATES = PreferenceTemplates()
GEN = {"max_new_tokens": 12, "batch_size": 8}


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32).eval()


@pytest.fixture
def recorder(monkeypatch):
    """Wraps the generate_greedy that self_revise calls; records each call's token-id prompts and outputs."""
    calls = []

    def wrapped(model, tokenizer, prompts, **kw):
        out = generate_greedy(model, tokenizer, prompts, **kw)
        calls.append({"prompts": [list(p) for p in prompts], "outputs": out, "kwargs": kw})
        return out

    monkeypatch.setattr(R, "generate_greedy", wrapped)
    return calls


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def test_k0_is_greedy_generation(model, tokenizer):
    drafts = R.self_revise(model, tokenizer, PROMPTS, k=0, templates=TEMPLATES, **GEN)
    direct = generate_greedy(model, tokenizer, [_ids(tokenizer, TEMPLATES.generation_prompt(p)) for p in PROMPTS],
                             **GEN)  # fmt: skip
    assert drafts == [[t] for t in direct]
    assert all(t for t in direct)  # the tiny model writes something: the comparison is not vacuous
    assert _ids(tokenizer, "x")[0] == tokenizer.bos_token_id  # prompts carry the BOS, as elsewhere in the package


def test_each_round_revises_the_previous_draft(model, tokenizer, recorder):
    drafts = R.self_revise(model, tokenizer, PROMPTS, k=2, templates=TEMPLATES, **GEN)
    assert len(drafts) == len(PROMPTS) and all(len(d) == 3 for d in drafts)
    assert len(recorder) == 3  # one batched call per round, over all prompts
    assert all(len(c["prompts"]) == len(PROMPTS) for c in recorder)
    assert all(c["kwargs"]["max_new_tokens"] == 12 and c["kwargs"]["batch_size"] == 8 for c in recorder)
    for i, prompt in enumerate(PROMPTS):
        assert recorder[0]["prompts"][i] == _ids(tokenizer, TEMPLATES.generation_prompt(prompt))
        for j in (1, 2):
            previous = drafts[i][j - 1]
            assert previous == recorder[j - 1]["outputs"][i]
            assert recorder[j]["prompts"][i] == _ids(tokenizer, TEMPLATES.revision_prompt(prompt, previous))
            decoded = tokenizer.decode(recorder[j]["prompts"][i], skip_special_tokens=True)
            assert previous and previous in decoded and "Draft answer:" in decoded and prompt in decoded
        assert [recorder[j]["outputs"][i] for j in range(3)] == drafts[i]


def test_order_follows_the_input(model, tokenizer):
    forward = R.self_revise(model, tokenizer, PROMPTS, k=1, templates=TEMPLATES, **GEN)
    backward = R.self_revise(model, tokenizer, PROMPTS[::-1], k=1, templates=TEMPLATES, **GEN)
    assert backward == forward[::-1]
    single = R.self_revise(model, tokenizer, PROMPTS[1:2], k=1, templates=TEMPLATES, **GEN)
    assert single == forward[1:2]
    assert R.self_revise(model, tokenizer, [], k=3, templates=TEMPLATES) == []


def test_empty_draft_enters_the_revision_prompt(model, tokenizer, monkeypatch):
    seen = []

    def fake(model, tokenizer, prompts, **kw):
        seen.append([tokenizer.decode(p, skip_special_tokens=True) for p in prompts])
        return [""] * len(prompts)

    monkeypatch.setattr(R, "generate_greedy", fake)
    assert R.self_revise(model, tokenizer, ["Lily was sad."], k=1, templates=TEMPLATES) == [["", ""]]
    assert seen[1] == [tokenizer.decode(_ids(tokenizer, TEMPLATES.revision_prompt("Lily was sad.", "")),
                                        skip_special_tokens=True)]  # fmt: skip


def test_max_prompt_length_keeps_first_token_and_end(model, tokenizer, recorder):
    R.self_revise(model, tokenizer, PROMPTS, k=1, templates=TEMPLATES, max_prompt_length=9, **GEN)
    full = _ids(tokenizer, TEMPLATES.generation_prompt(PROMPTS[2]))
    assert len(full) > 9 and recorder[0]["prompts"][2] == full[:1] + full[-8:]  # BOS + the end ("...Answer:")
    assert all(len(p) <= 9 for c in recorder for p in c["prompts"])
    with pytest.raises(ValueError, match="max_prompt_length"):
        R.self_revise(model, tokenizer, PROMPTS, k=1, templates=TEMPLATES, max_prompt_length=0)


@pytest.mark.parametrize("k", [-1, 1.5, True, "2"])
def test_invalid_k(model, tokenizer, k):
    with pytest.raises(ValueError, match="k"):
        R.self_revise(model, tokenizer, PROMPTS, k=k, templates=TEMPLATES)
