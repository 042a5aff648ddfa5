"""Wall time of a full TOFU evaluation with llmpost against emulations of open-unlearning's and muse_bench's loops.

Launch (CPU, the tiny real Llama; a full run of all three is ~10-20 minutes on 2 shared cores)::

    python scripts/bench_eval.py                                   # TOFU forget10: llmpost vs open-unlearning
    python scripts/bench_eval.py --repeats 2 --baselines open_unlearning,per_item --muse
    python scripts/bench_eval.py --max_examples 4 --max_new_tokens 8   # tiny mode (tests)

Every run evaluates the same model (loaded once) on the same data, with ``torch.set_num_threads(--threads)`` (default
1: on 2 shared cores, 2 threads make a 260K-parameter model several times slower) and ``torch.inference_mode`` /
``no_grad`` as each code does. Runs alternate (llmpost, baseline, llmpost, baseline, ...) so a change of machine load
hits both; each timing includes tokenisation, all forward passes, generation, decoding and ROUGE, not model loading.
The load average is printed before and after.

Contestants (TOFU, ``--forget_split``, default forget10; ``perturbed`` splits of forget, retain, real authors, world
facts, plus the matching holdout):

* ``llmpost``: :func:`llmpost.benchmarks.tofu.evaluate.evaluate_tofu` with ``--batch_size`` (default 32, open-unlearning's) and its
  default generation settings (the lean greedy loop; the generation batch size chosen by
  :func:`llmpost.generation.auto_generation_batch_size`, printed).
* ``open_unlearning``: an emulation of open-unlearning's TOFU evaluator (``locuslab/open-unlearning``,
  ``configs/eval/tofu.yaml`` + ``tofu_metrics/*.yaml``, ``src/evals/metrics/{utils,memorization,privacy}.py``) making
  the same model calls: dataset order (no sorting), batch size 32, right padding for scoring and left padding for
  generation, as its collators do. Per batch: ``model(input_ids, attention_mask, labels)`` and a token cross entropy
  (``evaluate_probability``) for forget/retain answer, paraphrased answer and each perturbed answer (one mini-batch per
  perturbation index, as ``run_batchwise_evals`` does), ra/wf answer and perturbed answers, each (split, column) once
  (its pre-compute cache); a second pass over forget answers for ``extraction_strength`` (full-vocabulary
  log-softmax, ``tokenwise_vocab_logprobs``) and a third over forget plus one over holdout answers for ``mia_min_k``
  (``tokenwise_logprobs``); for ROUGE, ``model.generate(do_sample=False, max_new_tokens=200, use_cache=True,
  top_p=None, temperature=None, pad_token_id=eos)`` per batch of 32 questions (its default generation config, no
  stop words), ``batch_decode``, cut at the decoded EOS, ``RougeScorer(["rouge1", "rougeL"], use_stemmer=True)``.
  open-unlearning itself is not installed here (it pins old transformers); prompts are built with llmpost's TOFU
  template, the one open-unlearning's default uses.
* ``per_item`` (``--baselines ...,per_item``): muse_bench's one-item-at-a-time loops (``swj0419/muse_bench``
  ``metrics/knowmem.py``, ``verbmem.py``: one ``model.generate`` per prompt without padding; ``privleak.py``: one
  forward per text) applied to the same TOFU workload: one generate per question (200 new tokens, no padding), one
  forward per (question, answer) pair, plus the same extra extraction-strength and min-k passes as open-unlearning.

MUSE-News (``--muse``): import-guarded. It runs only once ``llmpost.benchmarks.muse.evaluate.evaluate_muse(model,
tokenizer, MuseEvalSettings(data_dir, batch_size, max_examples, ...), *, output_dir)`` exists, and then times it
against a muse_bench emulation on the same files (``--muse_data_dir``): verbmem (one generate per prompt, 128 new
tokens), knowmem forget and retain (few-shot prompt, one generate per question, 32 new tokens), privleak
forget/retain/holdout (two forwards per text: the text and its lower-cased form). Without ``evaluate_muse`` the MUSE part is reported as skipped.

Output: a table, then one JSON object as the last line: per-contestant times (seconds, one per repeat), medians,
``ratio`` (open-unlearning median / llmpost median: the speed-up), ``ratio_range`` (worst / best pairing of runs),
the batch sizes and thread count, and the same in process CPU seconds (``cpu_ratio``; with one thread this is the
work done, much less sensitive than wall time to other jobs on a shared machine).

Profile (cProfile + torch.profiler, stories260K, 1 thread, before this script's commit; load average 3-4):

* Threads: on the 2 shared cores, 2 threads are 3-7x slower than 1 (a scoring subset: 67.6 s vs 8.7-18.8 s).
* Generation (~55-60% of the evaluation): HF ``generate``'s own per-step work (``_sample``, input preparation,
  stopping criteria, logits processors) is ~5% of a step; the model forward is the rest. In a decode step at batch 32
  (KV length 150) op self time was ``torch.cat`` 42% (``DynamicLayer.update`` re-copies the whole KV cache every
  step), the SDPA CPU flash kernel 20-50%, linear layers 12%, RMSNorm/rotary element-wise ops the rest. Decoding and
  ROUGE take < 1 s. A bigger batch did not help with the ``cat`` cache (its copies grow with batch x length).
* With a preallocated cache the ``cat`` disappears, and a step's fixed cost (~250 op dispatches, mask building) is
  shared by the whole batch: per row and step ~0.5 ms at batch 32, ~0.19 ms at batch 512. What remains, 81% of a
  step at batch 1017, is SDPA's cost per (row, head) for one query (~4.3 us each, whatever the mask): the floor as long
  as the model's own attention kernel (and hence its numbers) is kept.
* Scoring (~40-45%): SDPA 43%, linear 26%, tokenisation 4%, the log-softmax 2%. Batches of equal-length answers (no
  padding, SDPA's causal kernel) save ~8% (21.3-21.6 s vs 23.3 s on 100 rows per split; results equal to 3.5e-7).

Profile, 2026-12-07 (cProfile with a CPU-time clock; before -> after this change): whole evaluation
62.2 -> 52.2 s; scoring forwards 29.3 -> 28.1 s (SDPA about half of a forward, linear layers ~20%); tokenisation
3.0 -> 1.3 s (one batched call); generation 22.7 -> 18.1 s (greedy CPU batches cut by prompt length: one batch of
1,017 rows padded to the longest prompt, 160 tokens vs a median of 59, became 37 + 374 + 606 rows; SDPA is 66% of a
decode step); ROUGE 5.2 -> 2.1 s (memoised Porter stems). Prefix sharing (``score_answers(share_prefix=True)``: a
question's prompt once, its KV cache repeated for its answers) was measured slower here (31.8 vs 28.2 s for all
answers): the answer pass takes a masked, full-rectangle attention instead of the causal kernel, and attention is half
of a forward at head_dim 8. docs/speed.md has the details.

Measured (TOFU forget10, stories260K, 1 thread, 2 cores shared with other developers' jobs):

* 2026-12-07, ``--repeats 2`` at load 5-6.6 (four other jobs): llmpost 45.6 / 56.7 s wall (44.9 / 44.0 s CPU) vs
  open-unlearning emulation 113.5 / 104.1 s (102.5 / 100.7 s CPU): 2.13x wall median (1.84-2.49x), 2.29x CPU. The code
  before these changes, right after under the same load: 53.2 / 78.7 s (52.1 / 51.6 s CPU) vs 121.5 / 198.7 s
  (101.9 / 108.3 s CPU): 2.43x wall (1.54-3.74x: noise), 2.03x CPU. Results bit-identical before and after.
* 2026-11-30, one pair at load ~1.7-2 (the process got a full core: CPU time = wall time): llmpost 122.1 s
  (scoring 72.7 s, generation + ROUGE 49.0 s, generation batch 1017) vs open-unlearning emulation 261.6 s:
  2.14x wall, 2.14x CPU.
* the same, alternating A/B/A/B at load 1.8-4.2: llmpost 218.9 / 187.5 s (the first overlapped a test run), open-
  unlearning 253.5 / 291.1 s: 1.34x median, range 1.16-1.55x (wall time only; the llmpost runs drew the busier
  minutes).
* generation alone, 1017 prompts x 200 tokens, lean loop: batch 1017 143 s vs batch 32 193 s under load ~4, with
  token lists identical between the two batch sizes (0 of 1017 differ).
* before these changes: 94-104 s (llmpost) vs 155-170 s (open-unlearning) measured in the issue at a lighter load.

The 3x target is not reached here (2.3x in CPU time): what is left is mostly the model's own attention kernel (see
Profile), kept so that the numbers stay the model's (and bit-identical to the previous code).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

SHARED = ROOT.parent / "shared"
IGNORE_INDEX = -100
TARGET_RATIO = 3.0


def _load(model_path: str):
    from transformers import AutoModelForCausalLM

    from llmpost.models import load_tokenizer

    tok = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    return model, tok


class _PhaseTimes(logging.Handler):
    """Collects evaluate_tofu's own phase timings from its log lines ("scored ... in 12.3s", "generated ... in 4.5s")."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.phases: dict[str, float] = {}

    def emit(self, record):
        msg = record.getMessage()
        m = re.search(r"in ([0-9.]+)s$", msg)
        if m and "scored the answers" in msg:
            self.phases["scoring_s"] = float(m.group(1))
        elif m and "generated and scored" in msg:
            self.phases["generation_and_rouge_s"] = float(m.group(1))


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ----------------------------------------------------------------------------------------------------------------------
# open-unlearning emulation


def _pad(seqs: list[list[int]], value: int, left: bool) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for r, s in enumerate(seqs):
        if left:
            out[r, width - len(s) :] = torch.as_tensor(s)
        else:
            out[r, : len(s)] = torch.as_tensor(s)
    return out


def _collate(examples: list[dict], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    ids = [list(e["input_ids"]) for e in examples]
    labels = [list(e["labels"]) for e in examples]
    return {"input_ids": _pad(ids, pad_id, left), "labels": _pad(labels, IGNORE_INDEX, left),
            "attention_mask": _pad([[1] * len(s) for s in ids], 0, left)}  # fmt: skip


def _ou_probability(model, batch) -> list[float]:
    """open-unlearning ``evaluate_probability``: forward with labels, token cross entropy, mean over answer tokens."""
    output = model(**batch)
    shifted = batch["labels"][..., 1:].contiguous()
    logits = output.logits[..., :-1, :].contiguous()
    losses = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="none")(logits.transpose(-1, -2), shifted)
    avg = losses.sum(-1) / (batch["labels"] != IGNORE_INDEX).sum(-1)
    return torch.exp(-avg).tolist()


def _ou_tokenwise(model, batch, vocab: bool) -> list[torch.Tensor]:
    """open-unlearning ``tokenwise_logprobs`` / ``tokenwise_vocab_logprobs`` (per-sample slices of the answer part)."""
    logits = model(**batch).logits
    logp = torch.nn.functional.log_softmax(logits, dim=-1)
    out = []
    for i in range(logits.shape[0]):
        idx = (batch["labels"][i] != IGNORE_INDEX).nonzero().flatten()
        if len(idx) == 0:
            out.append(torch.tensor([]))
            continue
        s, e = int(idx[0]), int(idx[-1])
        if vocab:
            out.append(logp[i, s - 1 : e])
        else:
            nxt = batch["input_ids"][i, s : e + 1]
            out.append(logp[i, s - 1 : e].gather(-1, nxt[:, None]).squeeze(-1))
    return out


def run_open_unlearning(model, tok, data_dir, forget_split, holdout_split, max_examples, batch_size,
                        max_new_tokens) -> dict:  # fmt: skip
    from rouge_score import rouge_scorer

    from llmpost.benchmarks.tofu.data import load_tofu_eval_splits
    from llmpost.data.templates import TemplateArgs, encode_prompt, encode_qa
    from llmpost.models import pad_token_id

    tmpl, pad = TemplateArgs(), pad_token_id(tok)
    splits = load_tofu_eval_splits(data_dir, forget_split, holdout_split, max_examples)
    n_forward = n_generate = 0
    with torch.no_grad():
        # Probabilities: each (split, column) once; perturbed answers one mini-batch per perturbation index.
        def prob(rows, column):
            nonlocal n_forward
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                options = [r[column] if isinstance(r[column], list) else [r[column]] for r in chunk]
                for j in range(len(options[0])):
                    ex = [encode_qa(tok, tmpl, r["question"], o[j], 512) for r, o in zip(chunk, options)]
                    _ou_probability(model, _collate(ex, pad))
                    n_forward += 1

        for name in ("forget", "retain"):
            for column in ("answer", "paraphrased_answer", "perturbed_answer"):
                prob(splits[name], column)
        for name in ("ra", "wf"):
            for column in ("answer", "perturbed_answer"):
                prob(splits[name], column)

        def tokenwise(rows, vocab):
            nonlocal n_forward
            for start in range(0, len(rows), batch_size):
                ex = [encode_qa(tok, tmpl, r["question"], r["answer"], 512) for r in rows[start : start + batch_size]]
                _ou_tokenwise(model, _collate(ex, pad), vocab)
                n_forward += 1

        tokenwise(splits["forget"], vocab=True)  # extraction_strength
        tokenwise(splits["forget"], vocab=False)  # mia_min_k
        if "holdout" in splits:
            tokenwise(splits["holdout"], vocab=False)

        # ROUGE: eval_text_similarity per batch.
        eos_text = tok.decode([tok.eos_token_id])
        for name in ("forget", "retain", "ra", "wf"):
            rows = splits[name]
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                prompts = [encode_prompt(tok, tmpl, r["question"], 512) for r in chunk]
                full = [encode_qa(tok, tmpl, r["question"], r["answer"], 512)["input_ids"] for r in chunk]
                input_ids = _pad(prompts, pad, left=True)
                mask = _pad([[1] * len(p) for p in prompts], 0, left=True)
                inputs = tok.batch_decode(input_ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
                fulls = tok.batch_decode(full, skip_special_tokens=True, clean_up_tokenization_spaces=True)
                gts = [f.replace(i, "").strip() for i, f in zip(inputs, fulls)]
                out = model.generate(input_ids, attention_mask=mask, do_sample=False, top_p=None, temperature=None,
                                     max_new_tokens=max_new_tokens, use_cache=True, pad_token_id=tok.eos_token_id)  # fmt: skip
                n_generate += 1
                gens = tok.batch_decode(out[:, input_ids.shape[-1] :], skip_special_tokens=True,
                                        clean_up_tokenization_spaces=True)  # fmt: skip
                gens = [(g.split(eos_text)[0] if eos_text and eos_text in g else g).strip() for g in gens]
                scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
                [scorer.score(gt, g) for gt, g in zip(gts, gens)]
    return {"forward_calls": n_forward, "generate_calls": n_generate}


def run_per_item(model, tok, data_dir, forget_split, holdout_split, max_examples, max_new_tokens) -> dict:
    """muse_bench-style loops on the TOFU workload: one generate / one forward per item, no padding."""
    from rouge_score import rouge_scorer

    from llmpost.benchmarks.tofu.data import load_tofu_eval_splits
    from llmpost.data.templates import TemplateArgs, encode_prompt, encode_qa

    tmpl = TemplateArgs()
    splits = load_tofu_eval_splits(data_dir, forget_split, holdout_split, max_examples)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    n_forward = n_generate = 0
    with torch.no_grad():
        for rows in splits.values():
            columns = [c for c in ("answer", "paraphrased_answer", "perturbed_answer") if c in rows[0]]
            for r in rows:
                for c in columns:
                    for a in r[c] if isinstance(r[c], list) else [r[c]]:
                        ex = encode_qa(tok, tmpl, r["question"], a, 512)
                        _ou_probability(model, _collate([ex], 0))
                        n_forward += 1
        for _ in range(2):  # extraction strength and min-k passes over the forget answers
            for r in splits["forget"]:
                _ou_tokenwise(model, _collate([encode_qa(tok, tmpl, r["question"], r["answer"], 512)], 0), vocab=True)
                n_forward += 1
        for name in ("forget", "retain", "ra", "wf"):
            for r in splits[name]:
                ids = torch.tensor([encode_prompt(tok, tmpl, r["question"], 512)])
                out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id or tok.eos_token_id)  # fmt: skip
                n_generate += 1
                text = tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)[0]
                scorer.score(r["answer"], text)
    return {"forward_calls": n_forward, "generate_calls": n_generate}


# ----------------------------------------------------------------------------------------------------------------------
# MUSE (import-guarded)


def _evaluate_muse():
    try:
        from llmpost.benchmarks.muse.evaluate import evaluate_muse
    except ImportError:
        return None
    return evaluate_muse


def run_muse_bench(model, tok, data_dir: Path, max_examples) -> dict:
    """muse_bench's eval loops (verbmem, privleak, knowmem forget/retain), one item at a time."""
    from rouge_score import rouge_scorer

    read = lambda p: json.loads((data_dir / p).read_text())[:max_examples]  # noqa: E731
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    n = 0

    def gen(prompt, max_new):
        ids = tok(prompt, return_tensors="pt", add_special_tokens=True).input_ids
        out = model.generate(ids, max_new_tokens=max_new, do_sample=False, pad_token_id=pad)
        return tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True, clean_up_tokenization_spaces=True)[0]

    with torch.no_grad():
        for d in read("verbmem/forget.json"):
            scorer.score(d["gt"], gen(d["prompt"], 128))
            n += 1
        for split in ("forget", "retain2"):
            icl = json.loads((data_dir / f"knowmem/{split}_qa_icl.json").read_text())
            head = "".join(f"Question: {q['question']}\nAnswer: {q['answer']}\n\n" for q in icl)
            for d in read(f"knowmem/{split}_qa.json"):
                out = gen(head + f"Question: {d['question']}\nAnswer: ", 32)
                for w in ("\n\n", "\nQuestion", "Question:"):
                    out = out.split(w)[0]
                scorer.score(d["answer"], out)
                n += 1
        for split in ("forget", "retain2", "holdout"):
            for text in read(f"privleak/{split}.json"):
                for t in (text, text.lower()):
                    ids = torch.tensor(tok.encode(t))[None]
                    out = model(ids, labels=ids)
                    torch.log_softmax(out.logits, -1)
                    n += 1
    return {"calls": n}


# ----------------------------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(SHARED / "models" / "stories260K"))
    p.add_argument("--data_dir", default=str(SHARED / "data" / "tofu"))
    p.add_argument("--forget_split", default="forget10")
    p.add_argument("--max_examples", type=int, default=None, help="rows per split (tiny mode); default: all")
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--generation_batch_size", type=int, default=None, help="llmpost; default: automatic")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--baselines", default="open_unlearning", help="comma list: open_unlearning, per_item")
    p.add_argument("--muse", action="store_true", help="also MUSE-News (needs llmpost.benchmarks.muse.evaluate.evaluate_muse)")
    p.add_argument("--muse_data_dir", default=str(SHARED / "data" / "muse_news"))
    p.add_argument("--output", default=None, help="also write the JSON summary here")
    args = p.parse_args(argv)
    baselines = [b for b in args.baselines.split(",") if b]
    if unknown := set(baselines) - {"open_unlearning", "per_item"}:
        p.error(f"unknown baselines {sorted(unknown)}")

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    from llmpost.benchmarks.tofu.data import load_tofu_eval_splits
    from llmpost.benchmarks.tofu.evaluate import TofuEvalSettings, evaluate_tofu
    from llmpost.generation import auto_generation_batch_size

    phases = _PhaseTimes()
    tofu_logger = logging.getLogger("llmpost.benchmarks.tofu.evaluate")
    tofu_logger.addHandler(phases)
    tofu_logger.setLevel(logging.INFO)
    model, tok = _load(args.model)
    splits = load_tofu_eval_splits(args.data_dir, args.forget_split, None, args.max_examples)
    from llmpost.data.templates import TemplateArgs, encode_prompt

    questions = [r["question"] for k in ("forget", "retain", "ra", "wf") for r in splits[k]]
    longest = max(len(encode_prompt(tok, TemplateArgs(), q, 512)) for q in questions)
    holdout = "holdout" + args.forget_split[len("forget") :] if "holdout" in splits else None
    # What evaluate_tofu chooses (it logs the same number).
    gen_bs = args.generation_batch_size or auto_generation_batch_size(model, len(questions), longest,
                                                                     args.max_new_tokens, args.batch_size)  # fmt: skip
    tofu_settings = TofuEvalSettings(data_dir=args.data_dir, forget_split=args.forget_split, batch_size=args.batch_size,
                                     max_new_tokens=args.max_new_tokens, max_examples=args.max_examples,
                                     generation_batch_size=args.generation_batch_size)  # fmt: skip
    load_before = _loadavg()
    times: dict[str, list[float]] = {"llmpost": [], **{b: [] for b in baselines}}
    cpu: dict[str, list[float]] = {name: [] for name in times}  # process CPU seconds: less sensitive to other jobs
    details: dict[str, dict] = {}
    for rep in range(args.repeats):
        for name in times:
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "llmpost":
                with tempfile.TemporaryDirectory() as out:
                    evaluate_tofu(model, tok, tofu_settings, output_dir=out)
                details[name] = {"batch_size": args.batch_size, "generation_batch_size": gen_bs, **phases.phases}
            elif name == "open_unlearning":
                details[name] = run_open_unlearning(model, tok, args.data_dir, args.forget_split, holdout,
                                                    args.max_examples, 32, args.max_new_tokens)  # fmt: skip
            else:
                details[name] = run_per_item(model, tok, args.data_dir, args.forget_split, holdout, args.max_examples,
                                             args.max_new_tokens)  # fmt: skip
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            print(f"[{rep + 1}/{args.repeats}] {name}: {times[name][-1]:.1f}s wall, {cpu[name][-1]:.1f}s CPU "
                  f"(load {_loadavg()})", flush=True)  # fmt: skip

    muse: dict = {"status": "not requested"}
    if args.muse:
        evaluate_muse = _evaluate_muse()
        if evaluate_muse is None:
            muse = {"status": "skipped: llmpost.benchmarks.muse.evaluate.evaluate_muse is not available"}
        else:
            from llmpost.benchmarks.muse.evaluate import MuseEvalSettings

            muse_settings = MuseEvalSettings(data_dir=args.muse_data_dir, batch_size=args.batch_size,
                                             max_examples=args.max_examples)  # fmt: skip
            mt: dict[str, list[float]] = {"llmpost": [], "muse_bench": []}
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as out:
                    t0 = time.perf_counter()
                    evaluate_muse(model, tok, muse_settings, output_dir=out)
                    mt["llmpost"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                run_muse_bench(model, tok, Path(args.muse_data_dir), args.max_examples)
                mt["muse_bench"].append(time.perf_counter() - t0)
            muse = {"status": "ok", "seconds": mt,
                    "ratio": statistics.median(mt["muse_bench"]) / statistics.median(mt["llmpost"])}  # fmt: skip
    load_after = _loadavg()

    med = {k: statistics.median(v) for k, v in times.items()}
    summary = {
        "benchmark": f"tofu_{args.forget_split}", "model": Path(args.model).name, "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "generation_batch_size": gen_bs, "max_new_tokens": args.max_new_tokens,
        "max_examples": args.max_examples, "repeats": args.repeats, "seconds": times, "median_s": med,
        "cpu_seconds": cpu, "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
        "load_avg_before": load_before, "load_avg_after": load_after, "details": details, "muse": muse,
        "target_ratio": TARGET_RATIO,
    }  # fmt: skip
    for b in baselines:
        key = "ratio" if b == "open_unlearning" else f"ratio_{b}"
        summary[key] = med[b] / med["llmpost"]
        summary[f"{key}_range"] = [min(times[b]) / max(times["llmpost"]), max(times[b]) / min(times["llmpost"])]
        summary[f"cpu_{key}"] = summary["median_cpu_s"][b] / summary["median_cpu_s"]["llmpost"]

    print(f"\nTOFU {args.forget_split}, {summary['model']}, {summary['threads']} thread(s), load {load_before} -> "
          f"{load_after}; llmpost batch {args.batch_size}, generation batch {gen_bs}")  # fmt: skip
    print(f"{'contestant':<18}{'wall runs (s)':<24}{'median (s)':>11}{'speed-up':>10}{'CPU median (s)':>16}{'CPU speed-up':>14}")
    mc = summary["median_cpu_s"]
    for name, v in times.items():
        print(f"{name:<18}{', '.join(f'{x:.1f}' for x in v):<24}{med[name]:>11.1f}{med[name] / med['llmpost']:>9.2f}x"
              f"{mc[name]:>16.1f}{mc[name] / mc['llmpost']:>13.2f}x")  # fmt: skip
    if args.muse:
        print(f"MUSE-News: {muse.get('status')}" + (f", speed-up {muse['ratio']:.2f}x" if "ratio" in muse else ""))
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
