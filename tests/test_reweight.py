"""Loss-based sample reweighting (arXiv 2502.06733): ``sample_weights`` against hand-derived values for every
strategy, edge cases (all-equal losses, one sample, huge r), bad input, and the trainer's loss equal to the weighted
mean of hand-computed per-sample losses, per row and per packed document."""

from __future__ import annotations

import math

import pytest
import torch

from llmpost.losses.reweight import (
    ReweightStrategy,
    normalize_losses,
    reweighted_loss,
    sample_weights,
    strategy_scores,
    weight_stats,
)

E = math.e
L3 = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)


def _norm(xs):
    s = sum(xs)
    return torch.tensor([x / s for x in xs], dtype=torch.float64)


def test_normalisation_maps_min_max_to_minus_plus_delta():
    torch.testing.assert_close(normalize_losses(L3), torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(normalize_losses(torch.tensor([5.0, 1.0, 2.0]), delta=2.0), torch.tensor([2.0, -2.0, -1.0]))
    # all equal: the 1e-6 floor of the denominator gives -delta everywhere
    torch.testing.assert_close(normalize_losses(torch.tensor([0.7, 0.7])), torch.tensor([-1.0, -1.0]))


@pytest.mark.parametrize("strategy,scores,weights", [
    # h = [-1, 0, 1] for losses [1, 2, 3], delta = 1, r = 1
    ("linupper", [0.0, 1.0, 1.0], _norm([1, E, E])),     # min(h + 1, 1)
    ("upper", [0.0, 0.5, 1.0], _norm([1, E**0.5, E])),   # 0.5 h + 0.5 (the authors' f_func_upper)
    ("quadratic", [0.0, 1.0, 0.0], _norm([1, E, 1])),    # 1 - h^2
    ("extremes", [1.0, 0.0, 1.0], _norm([E, 1, E])),     # |h|
    ("uniform", [0.0, 0.0, 0.0], _norm([1, 1, 1])),
])  # fmt: skip
def test_every_strategy_by_hand(strategy, scores, weights):
    h = normalize_losses(L3)
    torch.testing.assert_close(strategy_scores(h, strategy), torch.tensor(scores, dtype=torch.float64))
    w = sample_weights(L3, strategy, temperature=1.0)
    torch.testing.assert_close(w, weights)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_delta_and_temperature_by_hand():
    # delta 2: h = [-2, 0, 2]; linupper min(h + 2, 2) = [0, 2, 2]; r = 0.5: softmax([0, 4, 4])
    w = sample_weights(L3, ReweightStrategy.LINUPPER, temperature=0.5, delta=2.0)
    torch.testing.assert_close(w, _norm([1, E**4, E**4]))
    # quadratic with delta 2: 1 - h^2 / 4 = [0, 1, 0]
    torch.testing.assert_close(sample_weights(L3, "quadratic", 1.0, delta=2.0), _norm([1, E, 1]))
    # upper with delta 2: 0.5 h + 1 = [0, 1, 2]; r = 0.5: softmax([0, 2, 4]) = [0.01587624, 0.11731043, 0.86681333]
    w = sample_weights(L3, "upper", temperature=0.5, delta=2.0)
    torch.testing.assert_close(w, torch.tensor([0.015876239976, 0.117310427826, 0.866813332197], dtype=torch.float64))


@pytest.mark.parametrize("strategy", list(ReweightStrategy))
def test_edge_cases_are_uniform(strategy):
    torch.testing.assert_close(sample_weights(torch.tensor([2.5, 2.5, 2.5, 2.5]), strategy, 0.1), torch.full((4,), 0.25))
    torch.testing.assert_close(sample_weights(torch.tensor([3.0]), strategy, 1.0), torch.tensor([1.0]))
    huge = sample_weights(torch.tensor([0.1, 5.0, 9.0, 2.0], dtype=torch.float64), strategy, 1e9)
    torch.testing.assert_close(huge, torch.full((4,), 0.25, dtype=torch.float64), atol=1e-8, rtol=0)


def test_weights_keep_dtype_and_ignore_gradients():
    losses = torch.tensor([1.0, 3.0], requires_grad=True)
    w = sample_weights(losses, "linupper", 1.0)
    assert w.dtype == torch.float32 and not w.requires_grad
    loss = reweighted_loss(losses, w, world_size=2)
    loss.backward()
    torch.testing.assert_close(losses.grad, 2 * w)  # the weights are constants of the gradient
    torch.testing.assert_close(loss.detach(), 2 * (w * losses.detach()).sum())


def test_stats():
    stats = weight_stats(torch.full((4,), 0.25), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert stats["reweight/ess_fraction"] == pytest.approx(1.0)
    assert stats["reweight/max_weight_x_b"] == pytest.approx(1.0) == stats["reweight/min_weight_x_b"]
    assert stats["reweight/loss_q50"] == pytest.approx(2.5)
    skewed = weight_stats(torch.tensor([0.7, 0.1, 0.1, 0.1]), torch.zeros(4))
    assert skewed["reweight/ess_fraction"] == pytest.approx(1 / (0.49 + 0.03) / 4)
    assert skewed["reweight/max_weight_x_b"] == pytest.approx(2.8)


@pytest.mark.parametrize("kwargs,match", [
    ({"strategy": "lower"}, "unknown reweighting strategy 'lower'"),
    ({"temperature": 0.0}, "temperature must be"), ({"temperature": -1.0}, "temperature must be"),
    ({"temperature": float("inf")}, "temperature must be"), ({"delta": 0.0}, "delta must be"),
    ({"losses": torch.tensor([1.0, float("nan")])}, "finite"), ({"losses": torch.tensor([])}, "non-empty"),
])  # fmt: skip
def test_bad_input(kwargs, match):
    args = {"losses": L3, "strategy": "linupper", "temperature": 1.0} | kwargs
    with pytest.raises(ValueError, match=match):
        sample_weights(**args)


# ----- the trainer ----------------------------------------------------------------------------------------------------

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from conftest import TINY_MODEL  # noqa: E402
from llmpost.data.corpus import pack_documents  # noqa: E402
from llmpost.trainers.reweight import ReweightConfig, ReweightTrainer, document_segments, sample_losses  # noqa: E402
from llmpost.utils import DataError  # noqa: E402

TEXTS = ["Once upon a time there was a little dog.", "The sun was hot and the sky was blue today.",
         "Lily liked to play in the park with her ball.", "Tom ate an apple.", "It rained all day long."] * 3


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TINY_MODEL)


def _trainer(tmp_path, tok, **kw):
    model = AutoModelForCausalLM.from_pretrained(TINY_MODEL)
    args = ReweightConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=4,
                          **{"reweight_temperature": 0.5, **kw})  # fmt: skip
    return ReweightTrainer(model, args, pack_documents(TEXTS, tok, 16), tok)


def _batch(trainer, n=4):
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


def _reference_row_losses(model, batch):
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits.float()
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return -logp.mean(-1)  # every token of a packed row is a target


def test_pack_documents(tok):
    ds = pack_documents(TEXTS[:5], tok, 16)
    ids = [t for text in TEXTS[:5] for t in [tok.bos_token_id, *tok(text, add_special_tokens=False).input_ids, tok.eos_token_id]]
    assert len(ds) == len(ids) // 16 and all(len(r) == 16 for r in ds["input_ids"])
    assert sum(ds["input_ids"], []) == ids[: len(ds) * 16] and ds["labels"] == ds["input_ids"]
    for row, pos in zip(ds["input_ids"], ds["position_ids"]):
        assert pos[0] == 0
        for j in range(1, 16):  # positions restart at every BOS (a document start), else count up
            assert pos[j] == (0 if row[j] == tok.bos_token_id else pos[j - 1] + 1)
    with pytest.raises(DataError, match="fewer than one sequence of seq_length=4096"):
        pack_documents(TEXTS[:2], tok, 4096, name="tiny corpus")


@pytest.mark.parametrize("fused", [False, True])
def test_trainer_loss_is_the_weighted_mean_of_row_losses(tmp_path, tok, fused):
    trainer = _trainer(tmp_path, tok, fused_lm_head=fused, reweight_strategy="quadratic")
    batch = _batch(trainer)
    expected_l = _reference_row_losses(trainer.model, batch)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    w = sample_weights(expected_l, "quadratic", 0.5)
    torch.testing.assert_close(trainer.last_weights, w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, (w * expected_l).sum(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(w, torch.full_like(w, 0.25))  # the check is not vacuous: the weights are not uniform
    trainer.model.eval()
    torch.testing.assert_close(trainer.compute_loss(trainer.model, batch), expected_l.mean(), rtol=1e-5, atol=1e-6)


def test_warmup_gives_uniform_weights(tmp_path, tok):
    trainer = _trainer(tmp_path, tok, reweight_warmup_steps=1)
    batch = _batch(trainer)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(trainer.last_weights, torch.full((4,), 0.25))
    torch.testing.assert_close(loss, _reference_row_losses(trainer.model, batch).mean(), rtol=1e-5, atol=1e-6)


def test_document_segments_and_losses_by_hand():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [3, 4, 0, 1, 2, 3]])  # row 2 starts mid-document (positions continue)
    torch.testing.assert_close(document_segments(pos), torch.tensor([[0, 0, 1, 1, 2], [0, 1, 1, 1, 1]]))
    logps = -torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0]])
    mask = torch.tensor([[True, True, False, True, False], [True, False, True, True, True]])
    # row 0: segment 0 -> (1 + 2) / 2, segment 1 -> 4 / 1 (3 masked), segment 2 -> empty (dropped); row 1: 6, (8+9+10)/3
    torch.testing.assert_close(sample_losses(logps, mask, document_segments(pos)), torch.tensor([1.5, 4.0, 6.0, 9.0]))
    torch.testing.assert_close(sample_losses(logps, mask), torch.tensor([7 / 3, 33 / 4]))


def test_document_unit_keeps_packed_documents_apart(tmp_path, tok):
    """Each packed document's loss equals that of the document run alone: attention does not cross documents, and a
    document's first token is not predicted from the previous one."""
    trainer = _trainer(tmp_path, tok, reweight_unit="document", fused_lm_head=False)
    docs = [[tok.bos_token_id, *tok(t, add_special_tokens=False).input_ids, tok.eos_token_id] for t in TEXTS[:3]]
    ids = sum(docs, [])
    pos = [p for d in docs for p in range(len(d))]
    batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([ids]), "position_ids": torch.tensor([pos])}
    trainer.model.train()
    trainer.compute_loss(trainer.model, batch)
    packed = trainer._forward(trainer.model, batch).detach()
    alone = torch.cat([_reference_row_losses(trainer.model, {"input_ids": torch.tensor([d])}) for d in docs])
    torch.testing.assert_close(packed, alone, rtol=1e-4, atol=1e-5)
    assert trainer.last_weights.numel() == 3


@pytest.mark.parametrize("key,value", [("reweight_strategy", "lower"), ("reweight_temperature", 0.0),
                                       ("reweight_delta", -1.0), ("reweight_warmup_steps", -1), ("reweight_unit", "page")])
def test_config_errors_name_the_key(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        ReweightConfig(output_dir=str(tmp_path), use_cpu=True, **{key: value})


# ----- the recipe -----------------------------------------------------------------------------------------------------

import importlib.util  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

from conftest import ROOT  # noqa: E402
from llmpost.config import ConfigError  # noqa: E402

_spec = importlib.util.spec_from_file_location("reweight_pretrain", ROOT / "recipes" / "reweight_pretrain.py")
recipe = importlib.util.module_from_spec(_spec)
sys.modules["reweight_pretrain"] = recipe
_spec.loader.exec_module(recipe)


def _corpus(tmp_path, rows, name="corpus.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _argv(tmp_path, corpus, *extra):
    return ["--model_name_or_path", str(TINY_MODEL), "--model_config", str(TINY_MODEL / "config.json"),
            "--corpus_files", corpus, "--seq_length", "16", "--validation_fraction", "0.2", "--output_dir",
            str(tmp_path / "out"), "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
            "--max_steps", "4", "--logging_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2",
            "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true",
            "--reweight_warmup_steps", "1", *extra]  # fmt: skip


def test_recipe_trains_logs_weights_and_validation_loss(tmp_path):
    trainer = recipe.main(_argv(tmp_path, _corpus(tmp_path, [{"text": t} for t in TEXTS])))
    out = tmp_path / "out"
    history = json.loads((out / "log_history.json").read_text())
    evals = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [2, 4] and evals[1]["eval_loss"] < evals[0]["eval_loss"]
    logged = [h for h in history if "loss" in h]
    assert logged and all(0 < h["reweight/ess_fraction"] <= 1 and h["reweight/loss_q10"] <= h["reweight/loss_q90"]
                          for h in logged)  # fmt: skip
    final = json.loads((out / "eval" / "PRETRAIN_EVAL.json").read_text())
    assert final["eval_loss"] == pytest.approx(evals[-1]["eval_loss"], rel=1e-4)  # the saved model = the trained one
    assert final["perplexity"] == pytest.approx(math.exp(final["eval_loss"]))
    assert trainer.state.global_step == 4


@pytest.mark.parametrize("rows,extra,match", [
    ([{"body": "x"}] * 3, [], "lacks column 'text'"),
    ([{"text": f"short {i}."} for i in range(5)], ["--seq_length", "4096"], "fewer than one sequence of seq_length=4096"),
    ([{"text": t} for t in TEXTS], ["--reweight_temperature", "0"], "reweight_temperature"),
    ([{"text": t} for t in TEXTS], ["--reweight_delta", "-1"], "reweight_delta"),
])  # fmt: skip
def test_recipe_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, rows, extra, match):
    corpus = _corpus(tmp_path, rows)
    with pytest.raises((DataError, ConfigError), match=match) as e:
        recipe.main(_argv(tmp_path, corpus, *extra))
    if "column" in match:
        assert corpus in str(e.value)  # names the file
    assert not (tmp_path / "out").exists()


def test_recipe_bad_strategy_in_yaml_names_key_and_file(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("reweight_strategy: lower\n")
    with pytest.raises(ConfigError, match=f"{cfg}: key 'reweight_strategy' expects one of"):
        recipe.main(["--config", str(cfg), *_argv(tmp_path, _corpus(tmp_path, [{"text": t} for t in TEXTS]))])
    assert not (tmp_path / "out").exists()


def test_recipe_without_corpus_names_the_keys(tmp_path):
    with pytest.raises(ConfigError, match="corpus_files / dataset_name"):
        recipe.main(["--model_name_or_path", str(TINY_MODEL), "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"])
    assert not (tmp_path / "out").exists()


# ----- packing on disk (corpora that do not fit in memory) -------------------------------------------------------------

import logging  # noqa: E402
import random  # noqa: E402

import datasets  # noqa: E402

from llmpost.data.corpus import PackStats, iter_paragraphs, load_texts, pack_dataset  # noqa: E402
from llmpost.data.pretrain import PretrainArguments, pretrain_splits  # noqa: E402

WORDS = "the cat dog sun sky park ball tree ran jumped blue red happy sad Lily Tom ate apple rain day".split()


def _synthetic_docs(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(n)]


def _doc_tokens(tok, texts):
    return [[tok.bos_token_id, *tok(t, add_special_tokens=False).input_ids, tok.eos_token_id] for t in texts]


def _check_positions(tok, ds, seq_length):
    for row, pos in zip(ds["input_ids"], ds["position_ids"]):
        assert len(row) == len(pos) == seq_length and pos[0] == 0
        for j in range(1, seq_length):  # positions restart at every BOS (a document start), else count up
            assert pos[j] == (0 if row[j] == tok.bos_token_id else pos[j - 1] + 1)


@pytest.fixture(scope="module")
def disk_corpus(tmp_path_factory):
    """Every kind of source: .jsonl (with a duplicate-heavy tail and blank texts), .txt, .json, and a local folder
    given as ``dataset_name`` (the hub path: non-string values skipped); documents repeat across sources."""
    d = tmp_path_factory.mktemp("disk_corpus")
    docs = _synthetic_docs(300)
    (d / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in [*docs[:120], *docs[:15], "  ", ""]))
    (d / "b.txt").write_text("\n\n \n".join(docs[120:220]) + "\n\n" + docs[0])
    (d / "c.json").write_text(json.dumps(docs[220:280]))
    (d / "hub").mkdir()
    (d / "hub" / "train.jsonl").write_text("".join(json.dumps({"text": t, "id": i}) + "\n"
                                                   for i, t in enumerate([*docs[270:], None, docs[5]])))  # fmt: skip
    unique = len(set(docs))
    return [str(d / n) for n in ("a.jsonl", "b.txt", "c.json")], str(d / "hub"), unique


@pytest.mark.parametrize("kwargs", [{}, {"max_documents": 150, "corpus_seed": 3, "validation_fraction": 0.2}])
def test_disk_packing_gives_the_memory_rows(disk_corpus, tok, tmp_path, caplog, kwargs):
    files, hub, unique = disk_corpus
    base = {"corpus_files": files, "dataset_name": hub, "seq_length": 16, "validation_fraction": 0.1} | kwargs
    memory = pretrain_splits(PretrainArguments(**base), tok)
    with caplog.at_level(logging.INFO, logger="llmpost.data.pretrain"):
        disk = pretrain_splits(PretrainArguments(**base, packing="disk", cache_dir=str(tmp_path / "cache")), tok)
    for m, d in zip(memory, disk):
        assert d.column_names == m.column_names == ["input_ids", "labels", "position_ids", "index"]
        assert d.to_dict() == m.to_dict() and len(d) > 10  # same rows, same split, same order
    n = min(unique, kwargs.get("max_documents", unique))  # deduplicated across sources
    n_val = round(n * base["validation_fraction"])
    assert f"training: {n - n_val} documents" in caplog.text and f"validation: {n_val} documents" in caplog.text
    assert {f for f in (tmp_path / "cache").rglob("*.arrow")}  # the corpus went to cache_dir


def test_disk_packing_in_small_batches_drops_each_batch_tail(tok):
    texts = _synthetic_docs(60, seed=1)
    rows, stats = pack_dataset(datasets.Dataset.from_dict({"text": texts}), tok, 16, batch_documents=7)
    docs = _doc_tokens(tok, texts)
    expected, dropped = [], 0
    for b in range(0, len(docs), 7):  # by hand: each batch of 7 documents packed on its own, its tail dropped
        flat = sum(docs[b : b + 7], [])
        kept = len(flat) // 16 * 16
        expected += [flat[i : i + 16] for i in range(0, kept, 16)]
        dropped += len(flat) - kept
    assert rows["input_ids"] == expected and rows["labels"] == expected and rows["index"] == list(range(len(expected)))
    assert stats == PackStats(documents=60, tokens=sum(map(len, docs)), rows=len(expected), dropped=dropped)
    assert 0 < dropped <= 9 * 15  # at most seq_length - 1 per batch
    _check_positions(tok, rows, 16)
    whole = pack_documents(texts, tok, 16)  # one batch holding every document: pack_documents' rows
    assert pack_dataset(datasets.Dataset.from_dict({"text": texts}), tok, 16, batch_documents=60)[0].to_dict() == whole.to_dict()


def test_disk_packing_with_processes_batches_each_shard(tok):
    texts = _synthetic_docs(40, seed=2)
    rows, stats = pack_dataset(datasets.Dataset.from_dict({"text": texts}), tok, 16, batch_documents=100, num_proc=2)
    halves = [sum(_doc_tokens(tok, texts[:20]), []), sum(_doc_tokens(tok, texts[20:]), [])]  # one shard each
    expected = [h[i : i + 16] for h in halves for i in range(0, len(h) // 16 * 16, 16)]
    assert rows["input_ids"] == expected and rows["index"] == list(range(len(expected)))
    assert stats.dropped == sum(len(h) % 16 for h in halves)
    _check_positions(tok, rows, 16)


def test_txt_paragraphs_stream_as_load_texts_reads_them(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b" \nfirst\r\nstill first \n\t\n\n\nsecond\n \n \nthird\n\f\nthird b\n\n")
    assert list(iter_paragraphs(path)) == load_texts(path) == ["first\nstill first", "second", "third\n\f\nthird b"]
    path.write_bytes(b"fine\n\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"c.txt: not UTF-8 \(invalid start byte at byte 10\)"):
        list(iter_paragraphs(path))


@pytest.mark.parametrize("name,content,kwargs,match", [
    ("a.jsonl", '{"body": "x"}\n', {}, "lacks column 'text'"),
    ("a.jsonl", '{"text": "a"}\n{"text": null}\n', {}, "line 2: 'text' is not a string"),
    ("a.txt", "\n  \n\t\n", {}, "holds no text"),
    ("a.json", json.dumps(["short one.", "short two."]), {"seq_length": 4096}, "fewer than one sequence of seq_length=4096"),
    ("a.json", json.dumps([f"document {i}." for i in range(40)]), {"seq_length": 64, "packing_batch_documents": 1},
     "fill no row of seq_length=64: each batch of 1 documents"),
])  # fmt: skip
def test_disk_packing_errors_name_the_file_or_key(tmp_path, tok, name, content, kwargs, match):
    path = tmp_path / name
    path.write_text(content)
    args = PretrainArguments(corpus_files=[str(path)], packing="disk", cache_dir=str(tmp_path / "cache"),
                             validation_fraction=0.0, **kwargs)  # fmt: skip
    with pytest.raises(DataError, match=match) as e:
        pretrain_splits(args, tok)
    if "fewer" not in match and "fill" not in match:
        assert str(path) in str(e.value)


@pytest.mark.parametrize("yaml,extra,match", [
    ("packing: tape\n", [], "key 'packing' expects one of"),
    ("packing: disk\n", ["--packing_batch_documents", "0"], "packing_batch_documents: must be >= 1"),
    ("packing: disk\n", ["--seq_length", "4096"], "fewer than one sequence of seq_length=4096"),
])  # fmt: skip
def test_recipe_disk_packing_errors_write_nothing(tmp_path, yaml, extra, match):
    cfg = tmp_path / "disk.yaml"
    cfg.write_text(yaml)
    corpus = _corpus(tmp_path, [{"text": f"short {i}."} for i in range(5)])
    with pytest.raises((DataError, ConfigError), match=match):
        recipe.main(["--config", str(cfg), *_argv(tmp_path, corpus, "--cache_dir", str(tmp_path / "c"), *extra)])
    assert not (tmp_path / "out").exists()
