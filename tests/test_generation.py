"""The lean loop (llmpost.generation, impl="lean") against ``model.generate`` (impl="hf") on the tiny real Llama, greedy
(``do_sample=False``): token-identical outputs with left padding, without padding, with stop words, with per-row EOS
finishing (and early exit), through a LoRA adapter; automatic fallback to ``generate`` where the loop could differ.
Sampling (``do_sample=True``, temperature/top-k/top-p): token-identical to ``generate`` under the same seed, with left
padding and EOS finishing; ``generate_samples``'s seeding contract, order, greedy case, token counts, progress and
argument validation."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import TINY_MODEL
from llmpost import generation as G
from llmpost.generation.lean import _resolve_impl
from llmpost.generation.transformers_backend import _generate_transformers
from llmpost.models import pad_token_id

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
    lean = _generate_transformers(model, tok, prompts, *args, impl="lean")
    hf = _generate_transformers(model, tok, prompts, *args, impl="hf")
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
    pad = pad_token_id(tokenizer)
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
    assert _resolve_impl(m, "auto") == G.GenerationImpl.HF
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
    from llmpost.benchmarks.tofu.scoring import _equal_length_batches

    assert _equal_length_batches([5, 5, 5, 4, 4, 2], 2) == [(0, 2), (2, 3), (3, 5), (5, 6)]
    assert _equal_length_batches([3], 8) == [(0, 1)] and _equal_length_batches([], 8) == []


# ---- sampling (generate_samples, the lean loop with sampling) -------------------------------------------------------

SAMPLINGS = [G.Sampling(), G.Sampling(temperature=0.7, top_k=5, top_p=0.9), G.Sampling(temperature=1.3, top_p=0.8)]


def _hf_sample(model, tok, input_ids, mask, s: G.Sampling, max_new_tokens, eos):
    return model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=s.temperature,
                          top_p=s.top_p, top_k=s.top_k, max_new_tokens=max_new_tokens, max_length=None,
                          pad_token_id=pad_token_id(tok), eos_token_id=eos)[:, input_ids.shape[1]:]  # fmt: skip


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["plain", "topk-topp", "topp"])
def test_lean_sampling_matches_generate(model, tokenizer, prompts, sampling):
    pad, eos = pad_token_id(tokenizer), [tokenizer.eos_token_id]
    input_ids, mask = G.transformers_backend._left_pad(prompts, [1, 4, 0, 2], pad, model.device)  # left padding
    assert (mask == 0).any()
    torch.manual_seed(11)
    lean = G.lean._lean_decode(model, input_ids, mask, 30, pad, eos, None, sampling)
    torch.manual_seed(11)
    assert torch.equal(lean, _hf_sample(model, tokenizer, input_ids, mask, sampling, 30, eos))
    torch.manual_seed(12)
    assert not torch.equal(lean, G.lean._lean_decode(model, input_ids, mask, 30, pad, eos, None, sampling))
    # Through the batching layer (two batches, each reseeded): impl="lean" and impl="hf" (generate) agree.
    run = {impl: _generate_transformers(model, tokenizer, prompts, 30, 2, None, impl, sampling=sampling, seed=5)
           for impl in ("lean", "hf")}  # fmt: skip
    assert run["lean"] == run["hf"]


def test_lean_sampling_matches_generate_with_eos_finishing(model, tokenizer, prompts):
    m = copy.deepcopy(model)
    period = tokenizer.convert_tokens_to_ids(".")  # a token every story emits soon: rows finish at different steps
    m.generation_config.eos_token_id = [tokenizer.eos_token_id, period]
    s = G.Sampling(temperature=0.9, top_k=20, top_p=0.95)
    lean = _generate_transformers(m, tokenizer, prompts, 60, 5, None, "lean", sampling=s, seed=1)
    assert lean == _generate_transformers(m, tokenizer, prompts, 60, 5, None, "hf", sampling=s, seed=1)
    pad = pad_token_id(tokenizer)
    assert max(len(r) for r in lean) < 60  # every row finished: the loop stopped early
    assert len({r.index(period) for r in lean}) > 1  # ... at different steps
    for row in lean:
        end = row.index(period) + 1
        assert all(t == pad for t in row[end:])  # finished rows are padded, as generate() does
    settings = G.SampleSettings(n=1, sampling=s, max_new_tokens=60, batch_size=5, seed=1)
    _, count = G.generate_samples(m, tokenizer, prompts, settings, return_token_counts=True)
    assert count == sum(r.index(period) + 1 for r in lean)


def test_generate_samples_seeding_order_and_rng(model, tokenizer, prompts):
    kw = dict(n=3, max_new_tokens=20, batch_size=3)
    state = torch.get_rng_state()
    a = G.generate_samples(model, tokenizer, prompts, G.SampleSettings(seed=7, **kw))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    torch.manual_seed(123)  # ... and does not matter
    assert G.generate_samples(model, tokenizer, prompts, G.SampleSettings(seed=7, **kw)) == a
    b = G.generate_samples(model, tokenizer, prompts, G.SampleSettings(seed=8, **kw))
    assert len(a) == len(prompts) and all(len(s) == 3 for s in a) and a != b
    assert all(len(set(s)) == 3 for s in a)  # a prompt's samples differ
    # batch_size == n: each batch is one prompt's n rows, longest prompt first, batch b seeded with seed + b.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for b_index, i in enumerate(order[:2]):
        assert G.generate_samples(model, tokenizer, [prompts[i]], G.SampleSettings(seed=7 + b_index, **kw)) == [a[i]]


def test_generate_samples_greedy_counts_stopwords_and_progress(model, tokenizer, prompts, monkeypatch):
    greedy = G.generate_greedy(model, tokenizer, prompts, max_new_tokens=15)
    greedy_settings = G.SampleSettings(n=2, sampling=G.Sampling(temperature=0), max_new_tokens=15)
    out, count = G.generate_samples(model, tokenizer, prompts, greedy_settings, return_token_counts=True)
    assert out == [[g, g] for g in greedy] and count == 15 * len(prompts)  # greedy computed once per prompt
    settings = G.SampleSettings(n=2, max_new_tokens=15)
    sampled, count = G.generate_samples(model, tokenizer, prompts, settings, return_token_counts=True)
    assert count == 2 * 15 * len(prompts)  # the untuned model never emits EOS
    word = sampled[0][0].split()[1]
    cut = G.generate_samples(model, tokenizer, prompts, G.SampleSettings(n=2, max_new_tokens=15, stopwords=[word]))
    assert cut[0][0] == sampled[0][0].split(word)[0].strip() and all(word not in t for s in cut for t in s)
    ticks = []

    class Bar:  # records the progress bar's total, unit and updates
        def __init__(self, total, desc, unit):
            ticks.append((total, unit))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, k):
            ticks.append(k)

        def set_postfix_str(self, text, refresh=True):
            ticks.append(text)

    monkeypatch.setattr(G.transformers_backend, "_progress", Bar)
    G.generate_samples(model, tokenizer, prompts, G.SampleSettings(n=3, max_new_tokens=2, batch_size=4))
    # one tick per decoding step (2 per batch of rows), the rows done after each batch
    assert ticks == [(8, "step"), 1, 1, "4/15 samples", 1, 1, "8/15 samples", 1, 1, "12/15 samples", 1, 1,
                     "15/15 samples"]  # fmt: skip
    ticks.clear()
    G.generate_greedy(model, tokenizer, prompts[:2], max_new_tokens=3, batch_size=2, impl="hf")
    assert ticks == [(3, "step"), 1, 1, 1, "2/2 prompts"]  # generate() ticks through a stopping criterion
    ticks.clear()
    eos = tokenizer.eos_token_id
    G.generate_greedy(model, tokenizer, prompts[:1], max_new_tokens=3, stopwords=[tokenizer.decode(prompts[0][1:3])])
    assert ticks[0] == (3, "step") and sum(t for t in ticks[1:] if isinstance(t, int)) == 3 and eos is not None


def test_greedy_batches_cut_by_length_same_tokens(model, tokenizer, monkeypatch):
    from llmpost.generation import transformers_backend as TB

    long = tokenizer(" ".join(TEXTS * 3))["input_ids"]
    prompts = [long] + [tokenizer(t)["input_ids"] for t in TEXTS] * 2
    lengths = sorted((len(p) for p in prompts), reverse=True)
    cpu = torch.device("cpu")
    assert TB._greedy_batches(lengths, 32, 20, cpu) == [(0, len(prompts))]  # 10 short rows: too few to cut
    monkeypatch.setattr(TB, "_CPU_STEP_COST_ROW_TOKENS", 100)  # a cheaper step: the long prompt goes alone
    cuts = TB._greedy_batches(lengths, 32, 20, cpu)
    assert cuts[0] == (0, 1) and cuts[-1][1] == len(prompts)
    assert all(b - a <= 4 for a, b in TB._greedy_batches(lengths, 4, 20, cpu))  # never above batch_size
    assert TB._greedy_batches(lengths, 4, 20, torch.device("meta")) == [(0, 4), (4, 8), (8, 11)]  # elsewhere: chunks
    cut = G.generate_greedy(model, tokenizer, prompts, max_new_tokens=20, batch_size=32)
    monkeypatch.setattr(TB, "_CPU_STEP_COST_ROW_TOKENS", 10**12)  # one batch of all prompts
    assert TB._greedy_batches(lengths, 32, 20, cpu) == [(0, len(prompts))]
    assert G.generate_greedy(model, tokenizer, prompts, max_new_tokens=20, batch_size=32) == cut


def test_generate_samples_validation_empty_and_missing_vllm(model, tokenizer, prompts):
    bad = dict(n=0, temperature=-0.1, top_p=0.0, top_k=-1, max_new_tokens=0, batch_size=0)
    for name, value in [*bad.items(), ("top_p", 1.5)]:
        if name in ("temperature", "top_p", "top_k"):
            settings = G.SampleSettings(sampling=G.Sampling(**{name: value}))
        else:
            settings = G.SampleSettings(**{name: value})
        with pytest.raises(ValueError, match=f": {name} must be"):
            G.generate_samples(model, tokenizer, prompts, settings)
    assert G.generate_samples(model, tokenizer, [], G.SampleSettings(n=4)) == []
    assert G.generate_samples(model, tokenizer, [], return_token_counts=True) == ([], 0)
    with pytest.raises(ValueError):
        G.generate_samples(model, tokenizer, prompts, G.SampleSettings(backend="tgi"))
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install llmpost\[vllm\]"):
            G.generate_samples("some/model", tokenizer, prompts, G.SampleSettings(n=2, backend="vllm"))
