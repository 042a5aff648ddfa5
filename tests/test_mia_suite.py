"""open-unlearning's membership-inference suite (LOSS, ZLib, Min-K%++, GradNorm, Reference) and exact memorization.

Tier 1: each score function against hand-computed numbers and the AUC orientation. Tier 3 on the tiny real Llama
(stories260K) and real TOFU / MUSE rows: the CLI writes the seven keys, a reference with another tokenizer is refused
before anything runs, and every per-example score and AUC equals an independent re-statement of open-unlearning's own
computation (see ``_open_unlearning_scores``). Missing data or model is a failure, not a skip.
"""

from __future__ import annotations

import json
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from llmpost.benchmarks.tofu.evaluate import EVAL_FILE, SUMMARY_FILE, TofuEvalSettings, compute_tofu_metrics
from llmpost.cli import main as cli_main
from llmpost.eval import mia
from llmpost.eval.mia_passes import ReferenceModelError, labelled_item

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tofu"
MUSE_DATA = ROOT.parent / "shared" / "data" / "muse_news"
MODEL = ROOT.parent / "shared" / "models" / "stories260K"
N = 4  # rows per split
SUITE = {"mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus", "mia_gradnorm", "mia_reference",
         "exact_memorization"}  # fmt: skip
pytestmark = pytest.mark.usefixtures("one_thread")


def _check_assets():
    missing = [str(p) for p in (DATA / "holdout10.jsonl", MODEL / "config.json", MUSE_DATA / "privleak" / "forget.json")
               if not p.exists()]  # fmt: skip
    if missing:
        pytest.fail(f"test assets missing (data is required, never skipped): {missing}")


# ----------------------------------------------------------------------------------------------------------------------
# Tier 1: the score functions by hand


def test_loss_zlib_reference_and_gradnorm_scores():
    assert mia.loss_score(1.25) == pytest.approx(1.25, abs=1e-12)
    # zlib of b"aaaa": 2-byte header + 4-byte deflate block + 4-byte Adler-32 = ... measured length, then by hand
    n = len(zlib.compress(b"aaaa"))
    assert n == 12
    assert mia.zlib_score(3.0, "aaaa") == pytest.approx(0.25, abs=1e-12)
    assert mia.zlib_score(3.0, "aaaa") == pytest.approx(3.0 / n, abs=1e-12)
    assert mia.reference_score(3.5, 1.25) == pytest.approx(2.25, abs=1e-12)
    assert mia.gradnorm_score([1.0, 2.0, 6.0]) == pytest.approx(3.0, abs=1e-12)  # mean of per-tensor norms
    with pytest.raises(ValueError):
        mia.gradnorm_score([])


def test_next_token_moments_by_hand():
    # two tokens with p = (1/4, 3/4): mu = E[log p], var = Bernoulli variance of log p = p q (log(3/4) - log(1/4))^2
    logits = torch.tensor([[0.0, math.log(3.0)]])
    mu, var = mia.next_token_moments(logits)
    assert mu.item() == pytest.approx(0.25 * math.log(0.25) + 0.75 * math.log(0.75), abs=1e-6)
    assert var.item() == pytest.approx(3 / 16 * math.log(3.0) ** 2, abs=1e-6)
    # a uniform distribution: every log p equal, variance 0
    mu, var = mia.next_token_moments(torch.zeros(3, 8))
    assert torch.allclose(mu, torch.full((3,), -math.log(8)), atol=1e-6) and var.abs().max().item() < 1e-6


def test_min_k_plus_plus_by_hand():
    lp = [-1.0, -2.0, -3.0, -4.0, -5.0]
    # z = (lp - (-1)) / 2 = 0, -.5, -1, -1.5, -2; k = 0.4 keeps floor(2) lowest: -(-2 - 1.5)/2 = 1.75
    assert mia.min_k_plus_plus_score(lp, [-1.0] * 5, [4.0] * 5, 0.4) == pytest.approx(1.75, abs=1e-12)
    # at least one token; a zero variance is clamped at 1e-6 (sqrt = 1e-3)
    assert mia.min_k_plus_plus_score([-2.0], [-1.0], [0.0], 0.4) == pytest.approx(1000.0, rel=1e-9)
    assert mia.min_k_plus_plus_score([], [], [], 0.4) == 0.0


def test_exact_memorization_by_hand():
    assert mia.exact_memorization_score([1, 2, 3], [1, 0, 3]) == pytest.approx(2 / 3, abs=1e-12)
    assert mia.exact_memorization_score([], []) is None
    entry = mia.exact_memorization([0.5, None, 1.0])
    assert entry["agg_value"] == pytest.approx(0.75, abs=1e-12)
    assert entry["value_by_index"] == {"0": {"score": 0.5}, "1": {"score": None}, "2": {"score": 1.0}}
    with pytest.raises(ValueError):
        mia.exact_memorization_score([1, 2], [1])


def test_auc_orientation():
    # loss-like scores: forget examples with the lower losses (seen) give AUC 1; swapped, 0; equal, 0.5
    entry = mia.mia([0.1, 0.2], [0.9, 1.0, 1.1])
    assert entry["auc"] == entry["agg_value"] == pytest.approx(1.0, abs=1e-12)
    assert set(entry) == {"forget", "holdout", "auc", "agg_value"}
    assert entry["forget"]["value_by_index"]["1"] == {"score": 0.2}
    assert mia.mia([0.9, 1.0], [0.1, 0.2])["auc"] == pytest.approx(0.0, abs=1e-12)
    assert mia.mia([0.5, 0.5], [0.5])["auc"] == pytest.approx(0.5, abs=1e-12)
    # Min-K%++ keeps the orientation: tokens far below their position's mean (unlikely) give the higher score
    seen = mia.min_k_plus_plus_score([-0.1, -0.2], [-1.0, -1.0], [1.0, 1.0])
    unseen = mia.min_k_plus_plus_score([-3.0, -4.0], [-1.0, -1.0], [1.0, 1.0])
    assert mia.mia([seen], [unseen])["auc"] == pytest.approx(1.0, abs=1e-12)


def test_labelled_item_token_sets():
    class Tok:
        def decode(self, ids, skip_special_tokens=False):
            return " ".join(str(i) for i in ids if not (skip_special_tokens and i == 2))

    it = labelled_item(Tok(), [1, 7, 8, 9, 10, 2], [-100, -100, 8, 9, 10, 2])
    assert (it.first, it.end, it.loss_end) == (2, 5, 6)  # loss over 8 9 10 EOS; token statistics without the EOS
    assert it.text == "8 9 10"


# ----------------------------------------------------------------------------------------------------------------------
# Tier 3: the tiny model


@pytest.fixture(scope="module")
def model_and_tokenizer():
    _check_assets()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32), AutoTokenizer.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def reference_dir(model_and_tokenizer, tmp_path_factory) -> Path:
    """stories260K with perturbed weights and the same tokenizer (a stand-in for a retain model)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("reference")
    ref = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for q in ref.parameters():
            q.add_(0.05 * torch.randn(q.shape, generator=gen))
    ref.save_pretrained(out)
    model_and_tokenizer[1].save_pretrained(out)
    return out


@pytest.fixture()
def other_tokenizer_dir(tmp_path) -> Path:
    """stories260K's weights with a tokenizer that has one more token."""
    from transformers import AutoTokenizer

    out = tmp_path / "other_tok"
    shutil.copytree(MODEL, out)
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        (out / name).unlink(missing_ok=True)
    tok = AutoTokenizer.from_pretrained(MODEL)
    tok.add_tokens(["zzqxword"])
    tok.save_pretrained(out)
    return out


def test_cli_writes_the_seven_keys(reference_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code = cli_main(["eval", "tofu", "--model_name_or_path", str(MODEL), "--data_dir", str(DATA), "--output_dir",
                     str(out), "--max_examples", str(N), "--batch_size", "8", "--max_new_tokens", "4",
                     "--mia_reference_model_path", str(reference_dir)])  # fmt: skip
    assert code == 0
    logs = json.loads((out / EVAL_FILE).read_text())
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert SUITE <= set(logs) and SUITE <= set(summary)
    assert list(logs) == sorted(logs)
    for key in SUITE - {"exact_memorization"}:
        entry = logs[key]
        assert set(entry) == {"forget", "holdout", "auc", "agg_value"}, key
        assert entry["auc"] == entry["agg_value"] == summary[key] and 0 <= entry["auc"] <= 1, key
        for part in ("forget", "holdout"):
            scores = [v["score"] for v in entry[part]["value_by_index"].values()]
            assert len(scores) == N and all(math.isfinite(s) for s in scores), (key, part)
            assert entry[part]["agg_value"] == pytest.approx(np.mean(scores), rel=1e-12)
    em = logs["exact_memorization"]
    assert list(em["value_by_index"]) == [str(i) for i in range(N)]
    assert em["agg_value"] == summary["exact_memorization"] and 0 <= em["agg_value"] <= 1
    assert "mia_reference" in capsys.readouterr().out


def test_reference_with_another_tokenizer_is_refused(model_and_tokenizer, other_tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code = cli_main(["eval", "tofu", "--model_name_or_path", str(MODEL), "--data_dir", str(DATA), "--output_dir",
                     str(out), "--max_examples", "2", "--mia_reference_model_path", str(other_tokenizer_dir)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--mia_reference_model_path" in err and "tokenizer differs" in err
    assert not out.exists()
    # the settings path (recipes) refuses it before any pass as well
    model, tok = model_and_tokenizer
    settings = TofuEvalSettings(data_dir=str(DATA), max_examples=2, mia_reference_model_path=str(other_tokenizer_dir))
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ReferenceModelError, match="mia_reference_model_path"):
            compute_tofu_metrics(model, tok, settings)
    finally:
        handle.remove()
    assert calls == []


# ----------------------------------------------------------------------------------------------------------------------
# Against open-unlearning
#
# open-unlearning cannot be installed beside llmpost (pinned old transformers, hydra), so this re-states its computation
# literally, on the same rows, from its sources (locuslab/open-unlearning): the QADataset tokenisation of
# src/data/utils.py preprocess_chat_instance (base-model template: prompt + answer tokenised together with
# add_special_tokens, max_length 512, EOS appended, labels -100 over the prompt), the right-padding collator with
# attention_mask = input_ids != pad, one batch of the config's batch size (32; GradNorm 1), and the reductions of
# src/evals/metrics/utils.py (evaluate_probability: CrossEntropyLoss(ignore_index=-100) summed / labelled count;
# tokenwise_logprobs / tokenwise_vocab_logprobs: the labelled positions without the last) and of
# src/evals/metrics/mia/{loss,zlib,min_k_plus_plus,gradnorm,reference}.py and memorization.py (exact_memorization),
# with roc_auc_score(labels forget 0 / holdout 1, scores) written as its pairwise definition (sklearn is not installed).
# llmpost's numbers come from its own code paths (encode_qa, llmpost.eval.mia_passes, entries), so agreement within
# float32 tolerance checks the tokenisation, the token sets, the reductions and the signs against open-unlearning.


def _ou_batch(tok, rows, pad_id):
    items = []
    for r in rows:
        wrapped = "Question: " + r["question"] + "\n" + "Answer: "
        chat_ids = tok(wrapped + r["answer"], add_special_tokens=True, max_length=512, truncation=True)["input_ids"]
        prompt_ids = tok(wrapped, add_special_tokens=True, max_length=512, truncation=True)["input_ids"]
        if chat_ids[-1] != tok.eos_token_id:
            chat_ids += [tok.eos_token_id]
        labels = [-100] * len(prompt_ids) + chat_ids[len(prompt_ids) :]
        items.append((torch.tensor(chat_ids), torch.tensor(labels)))
    input_ids = torch.nn.utils.rnn.pad_sequence([i for i, _ in items], batch_first=True, padding_value=pad_id)
    labels = torch.nn.utils.rnn.pad_sequence([lab for _, lab in items], batch_first=True, padding_value=-100)
    return {"input_ids": input_ids, "attention_mask": input_ids.ne(pad_id), "labels": labels}


def _ou_evaluate_probability(model, batch):
    with torch.no_grad():
        logits = model(**batch).logits
    shifted = batch["labels"][..., 1:]
    losses = torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(logits[..., :-1, :].transpose(-1, -2),
                                                                           shifted).sum(-1)  # fmt: skip
    return (losses / (batch["labels"] != -100).sum(-1)).tolist()


def _ou_tokenwise(model, batch, grad=False):
    """(token log-probs, full-vocab log-probs, labels) per row, as tokenwise_logprobs / tokenwise_vocab_logprobs."""
    with torch.set_grad_enabled(grad):
        logits = model(**batch).logits
    log_probs = torch.log_softmax(logits, dim=-1)[:, :-1, :]
    target = torch.gather(log_probs, 2, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    out = []
    for i in range(logits.shape[0]):
        idx = (batch["labels"][i] != -100).nonzero(as_tuple=True)[0][:-1]
        s, e = idx[0].item(), idx[-1].item()
        out.append((target[i, s - 1 : e], log_probs[i, s - 1 : e], batch["labels"][i][idx]))
    return out


def _ou_auc(forget, holdout):
    pairs = [(h > f) + 0.5 * (h == f) for f in forget for h in holdout]
    return sum(pairs) / len(pairs)


def _open_unlearning_scores(model, ref_model, tok, rows):
    pad_id = tok.eos_token_id  # open-unlearning's tokenizer loading sets pad = eos when the tokenizer has none
    batch = _ou_batch(tok, rows, pad_id)
    avg_losses = _ou_evaluate_probability(model, batch)
    ref_losses = _ou_evaluate_probability(ref_model, batch)
    texts = [tok.decode(lab[lab != -100].tolist(), skip_special_tokens=True) for lab in batch["labels"]]
    scores = {"mia_loss": avg_losses,
              "mia_zlib": [loss / len(zlib.compress(t.encode("utf-8"))) for loss, t in zip(avg_losses, texts)],
              "mia_reference": [t - r for t, r in zip(avg_losses, ref_losses)],
              "mia_min_k_plus_plus": [], "mia_gradnorm": [], "exact_memorization": []}  # fmt: skip
    with torch.no_grad():
        for target, all_probs, labels in _ou_tokenwise(model, batch):
            mu = (torch.exp(all_probs) * all_probs).sum(-1)
            sigma = torch.clamp((torch.exp(all_probs) * torch.square(all_probs)).sum(-1) - torch.square(mu), min=1e-6)
            z = (target.float().numpy() - mu.float().numpy()) / torch.sqrt(sigma).numpy()
            scores["mia_min_k_plus_plus"].append(-np.mean(sorted(z)[: max(1, int(len(z) * 0.4))]))
            scores["exact_memorization"].append(((all_probs.argmax(-1) == labels).sum() / len(labels)).item())
    for r in range(len(rows)):  # GradNorm: batch size 1, p = 2
        one = _ou_batch(tok, rows[r : r + 1], pad_id)
        (target, _, _), = _ou_tokenwise(model, one, grad=True)
        model.zero_grad()
        (-torch.mean(target)).backward()
        norms = [q.grad.detach().norm(p=2) for q in model.parameters() if q.grad is not None]
        scores["mia_gradnorm"].append(torch.stack(norms).mean().item())
    model.zero_grad(set_to_none=True)
    return scores


def test_scores_equal_open_unlearning(model_and_tokenizer, reference_dir):
    from transformers import AutoModelForCausalLM

    model, tok = model_and_tokenizer
    settings = TofuEvalSettings(data_dir=str(DATA), max_examples=N, batch_size=3, compute_generation=False,
                                mia_reference_model_path=str(reference_dir))  # fmt: skip
    logs = compute_tofu_metrics(model, tok, settings)
    read = lambda name: [json.loads(line) for line in (DATA / f"{name}.jsonl").read_text().splitlines()[:N]]  # noqa: E731
    forget, holdout = read("forget10_perturbed"), read("holdout10")
    ref = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32).eval()
    model.eval()
    by_part = {p: _open_unlearning_scores(model, ref, tok, rows) for p, rows in (("forget", forget), ("holdout", holdout))}
    ou = {key: {p: by_part[p][key] for p in by_part} for key in by_part["forget"]}
    assert all(q.grad is None for q in model.parameters())  # llmpost left no gradients behind
    for key in ("mia_loss", "mia_zlib", "mia_min_k_plus_plus", "mia_gradnorm", "mia_reference"):
        for part in ("forget", "holdout"):
            ours = [v["score"] for v in logs[key][part]["value_by_index"].values()]
            assert ours == pytest.approx(ou[key][part], rel=1e-4, abs=1e-6), (key, part)
        assert logs[key]["auc"] == pytest.approx(_ou_auc(ou[key]["forget"], ou[key]["holdout"]), abs=1e-12), key
    em = [v["score"] for v in logs["exact_memorization"]["value_by_index"].values()]
    assert em == pytest.approx(ou["exact_memorization"]["forget"], rel=1e-6)  # open-unlearning divides in float32
    assert logs["exact_memorization"]["agg_value"] == pytest.approx(np.mean(ou["exact_memorization"]["forget"]))
    # the reference attack is not trivial here (the reference differs), and the LOSS AUC is over the same losses
    assert any(abs(s) > 1e-3 for s in ou["mia_reference"]["forget"])
    assert logs["forget_Q_A_Prob"]["value_by_index"]["0"]["avg_loss"] == pytest.approx(ou["mia_loss"]["forget"][0],
                                                                                       rel=1e-5)  # fmt: skip


def test_muse_suite_on_privleak_texts(model_and_tokenizer, tmp_path):
    """MUSE: the suite runs on the privleak forget vs holdout texts (cut short here), LOSS over every token after the
    BOS, and is left out with mia_attacks=False."""
    from llmpost.benchmarks.muse.evaluate import MuseEvalSettings, compute_muse_metrics

    model, tok = model_and_tokenizer
    data = tmp_path / "muse"
    for rel in ("verbmem/forget.json", "knowmem/forget_qa.json", "knowmem/forget_qa_icl.json",
                "knowmem/retain2_qa.json", "knowmem/retain2_qa_icl.json", "privleak/forget.json",
                "privleak/holdout.json"):  # fmt: skip
        rows = json.loads((MUSE_DATA / rel).read_text())[:2]
        rows = [r[:300] if isinstance(r, str) else {k: v[-200:] for k, v in r.items()} for r in rows]
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_text(json.dumps(rows))
    settings = MuseEvalSettings(data_dir=data, batch_size=2, verbmem_max_new_tokens=2, knowmem_max_new_tokens=2)
    logs = compute_muse_metrics(model, tok, settings)
    for key in ("mia_loss", "mia_zlib", "mia_min_k_plus_plus", "mia_gradnorm"):
        assert set(logs[key]) == {"forget", "holdout", "auc", "agg_value"} and 0 <= logs[key]["auc"] <= 1, key
    text = json.loads((data / "privleak" / "forget.json").read_text())[0]
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])
    assert logs["mia_loss"]["forget"]["value_by_index"]["0"]["score"] == pytest.approx(-logp.mean().item(), rel=1e-5)
    off = compute_muse_metrics(model, tok, MuseEvalSettings(data_dir=data, batch_size=2, verbmem_max_new_tokens=2,
                                                            knowmem_max_new_tokens=2, mia_attacks=False))  # fmt: skip
    assert not {k for k in off if k.startswith("mia_") and k != "mia_min_k"}
    assert off["mia_min_k"] == logs["mia_min_k"]


def test_gradnorm_of_a_frozen_model_restores_its_flags(model_and_tokenizer):
    """A model loaded for inference (every parameter frozen) gets the same GradNorm scores as a trainable one, and
    keeps its requires_grad flags and (absent) gradients."""
    from llmpost.data.templates import TemplateArgs, encode_qa
    from llmpost.eval.mia_passes import grad_norms

    model, tok = model_and_tokenizer
    rows = [json.loads(line) for line in (DATA / "holdout10.jsonl").read_text().splitlines()[:2]]
    items = [labelled_item(tok, **{k: v for k, v in encode_qa(tok, TemplateArgs(), r["question"], r["answer"], 512).items()
                                   if k in ("input_ids", "labels")}) for r in rows]  # fmt: skip
    trainable = grad_norms(model, items)
    for q in model.parameters():
        q.requires_grad_(False)
    try:
        frozen = grad_norms(model, items)
        assert all(not q.requires_grad and q.grad is None for q in model.parameters())
    finally:
        for q in model.parameters():
            q.requires_grad_(True)
    assert frozen == pytest.approx(trainable, rel=1e-6) and all(s > 0 for s in frozen)
