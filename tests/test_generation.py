"""The lean greedy loop (llmpost.generation, impl="lean") against ``model.generate(do_sample=False)`` (impl="hf") on the
tiny real Llama: token-identical outputs with left padding, without padding, with stop words, with per-row EOS
finishing (and early exit), through a LoRA adapter; automatic fallback to ``generate`` where the loop could differ."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import TINY_MODEL
from llmpost import generation as G

TEXTS = ["Once upon a time", "The dog ran to the big red ball and", "Lily was sad.", "Tom and his mom went to the park",
         "One day, a little girl named Sue found a shiny"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(t)["input_ids"] for t in TEXTS]


def _both(model, tok, prompts, **kw):
    kw = {"max_new_tokens": 40, "batch_size": 8, "stopwords": None, **kw}
    args = (kw["max_new_tokens"], kw["batch_size"], kw["stopwords"])
    lean = G._generate_transformers(model, tok, prompts, *args, impl="lean")
    hf = G._generate_transformers(model, tok, prompts, *args, impl="hf")
    return lean, hf


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_lean_matches_generate_with_left_padding(model, tokenizer, prompts, batch_size):
    assert G.lean_supported(model)
    lean, hf = _both(model, tokenizer, prompts, batch_size=batch_size)
    assert lean == hf
    assert all(len(ids) == 40 for ids in lean)  # the untuned model never emits EOS: every row runs to the limit
    assert len({tuple(ids) for ids in lean}) == len(prompts)
    texts = {impl: G.generate_greedy(model, tokenizer, prompts, max_new_tokens=40, batch_size=batch_size, impl=impl)
             for impl in ("lean", "hf", "auto")}  # fmt: skip
    assert texts["lean"] == texts["hf"] == texts["auto"]


def test_lean_matches_generate_without_padding(model, tokenizer, prompts):
    same = [prompts[1], prompts[1][:-1] + [prompts[0][-1]]]  # equal lengths: generate drops the all-ones mask
    lean, hf = _both(model, tokenizer, same, batch_size=2)
    assert lean == hf


def test_lean_matches_generate_with_stopwords(model, tokenizer, prompts):
    full = G.generate_greedy(model, tokenizer, prompts, max_new_tokens=40)
    words = [full[0].split()[3], "\n"]  # a word one row produces early; a newline
    lean, hf = _both(model, tokenizer, prompts, batch_size=5, stopwords=words)
    assert lean == hf
    plain, _ = _both(model, tokenizer, prompts, batch_size=5)
    assert lean[0] != plain[0] and lean[0][:3] == plain[0][:3]  # row 0 stopped (then padded), after its 4th word
    texts = [G.generate_greedy(model, tokenizer, prompts, max_new_tokens=40, batch_size=5, stopwords=words, impl=impl)
             for impl in ("lean", "hf")]  # fmt: skip
    assert texts[0] == texts[1]
    assert texts[0][0] == full[0].split(words[0])[0].strip()


def test_lean_matches_generate_with_eos_finishing_and_early_exit(model, tokenizer, prompts):
    lean, _ = _both(model, tokenizer, prompts, max_new_tokens=30)
    m = copy.deepcopy(model)
    # Make tokens the model really produces "EOS": row 0's 4th token and row 1's 10th token end those rows early.
    eos = [tokenizer.eos_token_id, lean[0][3], lean[1][9]]
    m.generation_config.eos_token_id = eos
    lean_eos, hf_eos = _both(m, tokenizer, prompts, max_new_tokens=30, batch_size=5)
    assert lean_eos == hf_eos
    pad = G.pad_token_id(tokenizer)
    first_stop = lean[0].index(lean[0][3])
    assert lean_eos[0][: first_stop + 1] == lean[0][: first_stop + 1]
    assert all(t == pad for t in lean_eos[0][first_stop + 1 :])  # finished rows are padded, as generate() does
    # Every row finishing stops the loop early: both rows alone, in one batch.
    lean2, hf2 = _both(m, tokenizer, prompts[:2], max_new_tokens=30, batch_size=2)
    assert lean2 == hf2 and max(len(ids) for ids in lean2) < 30


def test_lean_through_a_lora_adapter(model, tokenizer, prompts):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a non-identity adapter, so the outputs differ from the base model's
    peft_model.eval()
    assert G.lean_supported(peft_model)
    lean, hf = _both(peft_model, tokenizer, prompts, max_new_tokens=25, batch_size=5)
    base, _ = _both(model, tokenizer, prompts, max_new_tokens=25, batch_size=5)
    assert lean == hf and lean != base


def test_auto_falls_back_to_generate_when_the_loop_could_differ(model, tokenizer, prompts):
    m = copy.deepcopy(model)
    m.generation_config.repetition_penalty = 1.3  # a logits processor generate() would apply
    assert not G.lean_supported(m)
    assert G._resolve_impl(m, "auto") == G.GenerationImpl.HF
    with pytest.raises(ValueError, match="impl='lean'"):
        G.generate_greedy(m, tokenizer, prompts, max_new_tokens=5, impl="lean")
    auto = G.generate_greedy(m, tokenizer, prompts, max_new_tokens=20, impl="auto")
    assert auto == G.generate_greedy(m, tokenizer, prompts, max_new_tokens=20, impl="hf")
    with pytest.raises(ValueError):
        G.generate_greedy(model, tokenizer, prompts, impl="beam")


def test_auto_generation_batch_size(model):
    assert G.auto_generation_batch_size(model, 1017, 160, 200, floor=32) == 1017  # tiny model: everything at once
    assert G.auto_generation_batch_size(model, 5000, 160, 200, floor=32) == 1024  # capped
    assert G.auto_generation_batch_size(model, 10, 160, 200, floor=32) == 10
    big = copy.deepcopy(model.config)
    big.update(dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                    head_dim=128, intermediate_size=11008))  # fmt: skip

    class Fake(torch.nn.Module):  # a 7B-shaped config on a float32 parameter: the budget gives the floor
        config = big

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    assert G.auto_generation_batch_size(Fake(), 1017, 160, 200, floor=32) == 32


def test_equal_length_scoring_batches():
    from llmpost.eval.tofu import _equal_length_batches

    assert _equal_length_batches([5, 5, 5, 4, 4, 2], 2) == [(0, 2), (2, 3), (3, 5), (5, 6)]
    assert _equal_length_batches([3], 8) == [(0, 1)] and _equal_length_batches([], 8) == []
