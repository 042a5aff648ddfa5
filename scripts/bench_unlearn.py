"""Training throughput and peak memory: llmpost NPO+RT (precomputed reference) against stock TRL ``DPOTrainer``.

Launch (CPU default, about 2-3 minutes on 2 cores; GPU: a randomly initialised Llama-3.2-1B-shaped model in bf16)::

    python scripts/bench_unlearn.py
    python scripts/bench_unlearn.py --gpu --dpo_precompute_ref --output bench_gpu.json

Both trainers get the same model (same config, same seeded weights, same dtype), the same synthetic token data
(``prompt_len`` prompt tokens + ``seq_len - prompt_len`` answer tokens, every row exactly ``seq_len`` long, so there
is no padding), the same number of sequences per optimizer step (``2 * batch_size * grad_accum``: B forget + B retain
rows for NPO+RT, B chosen + B rejected rows for DPO), the same optimizer (AdamW, constant LR), the same gradient
accumulation, gradient-checkpointing and mixed-precision settings, and no logging or checkpointing during the run.

* ``llmpost``: :class:`llmpost.trainers.unlearn.UnlearnTrainer`, ``method=npo_rt``, ``reference=precomputed``.
* ``trl_dpo``: stock TRL ``DPOTrainer`` (sigmoid loss) with an explicit frozen reference model (a copy of the policy),
  i.e. TRL's default full fine-tuning setup.
* ``trl_dpo_precompute`` (``--dpo_precompute_ref``): the same with ``precompute_ref_log_probs=True``.

TRL 1.16's ``DPOTrainer`` always tokenises text columns (``prompt``/``chosen``/``rejected``), so the data is written
as words of a word-level tokenizer built here (``t{id}`` <-> id, exactly one token per word); both trainers see the
same token ids. Tokenisation, reference pre-computation and model construction happen before timing.

Measurements. Each trainer runs in its own subprocess of this one invocation (one after the other, never
concurrently), so its peak memory is clean and no trainer inherits another's allocator state.

* tokens/s: non-pad input tokens the policy processes (forget + retain, or chosen + rejected) per second of
  training-step wall time, over the optimizer steps after ``--warmup_steps`` (step boundaries are taken in
  ``on_step_end`` after ``torch.cuda.synchronize()``; data loading and the optimizer step are included).
* peak memory: on GPU ``torch.cuda.max_memory_allocated`` over the whole subprocess (model, reference model,
  optimizer states, activations). On CPU the growth of the subprocess's peak resident set size (``ru_maxrss``) over
  its RSS after imports, i.e. everything the trainer allocated, model included, measured in one more short run per
  trainer (2 steps) with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``): with the default adaptive
  threshold the RSS of identical runs differs by up to ~100 MiB, with it by < 1 MiB. The timing runs' own RSS growth
  is kept as ``peak_memory_bytes_timing_run``. A fixed cost (lazily loaded code, thread pools) is in both numbers.
* MFU (GPU): TRL's ``compute_flops_per_token`` (training FLOPs of the *policy* only: a reference forward is not
  counted, as is usual) times tokens/s over ``get_peak_flops(device, dtype)``.
* second model: parameters of any ``nn.Module`` reachable from the trainer's attributes that the policy does not own.

Models. ``--model cpu-small`` (CPU default) is a randomly initialised 4.0M-parameter Llama (4 layers, width 256, vocab
4096): big enough that a step is matrix work, not Python overhead, like on a GPU. The real tiny model
(``--model ../shared/models/stories260K``, 0.26M parameters) also works but mostly times per-step overhead.
``--gpu`` defaults to a randomly initialised Llama-3.2-1B shape (1.24B parameters) in bf16, 32 sequences of 512 tokens
per step. Weights need not be pretrained: the cost of a step does not depend on their values.

Expected: both trainers run one policy forward+backward over the same 2B rows per micro-batch; DPO also runs a
reference forward (about a third of the work when backward costs twice the forward), so the ideal ratio is ~1.33.

Measured (CPU default, 2 shared cores under load ~4, two invocations): llmpost 445 / 431 tokens/s, TRL DPO 338 / 342
tokens/s (ratio 1.32 / 1.26), TRL DPO with precomputed reference 430 tokens/s; peak RSS growth 553.6 MiB vs 573.1 MiB
(ratio 0.966) vs 557.1 MiB.

The last line printed is one JSON object (ratios are llmpost over TRL DPO with a reference model).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAINERS = ("llmpost", "llmpost_padding_free", "trl_dpo", "trl_dpo_precompute")
TARGET_RATIO = 1.25

# Randomly initialised Llama shapes. "cpu-small" (4.0M parameters) is large enough that a step on 2 CPU cores is
# dominated by matrix work rather than Python overhead, small enough for a 2-3 minute run.
SHAPES = {
    "cpu-small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=64, vocab_size=4096, tie_word_embeddings=True,
                      rope_theta=10000.0),
    # meta-llama/Llama-3.2-1B (1.24B parameters, tied embeddings); the llama3 RoPE scaling does not change the cost.
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                         rope_theta=500000.0),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="CUDA, bf16, Llama-3.2-1B shape by default; reports MFU")
    p.add_argument("--model", default=None,
                   help=f"one of {sorted(SHAPES)} (random init) or a local model directory "
                        "(default: llama-3.2-1b with --gpu, else cpu-small)")
    p.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 6 CPU, 20 GPU)")
    p.add_argument("--warmup_steps", type=int, default=None,
                   help="untimed first optimizer steps (default 2 CPU, 3 GPU)")
    p.add_argument("--batch_size", type=int, default=None,
                   help="forget/retain (or chosen/rejected) pairs per micro-batch (default 4 CPU, 16 GPU)")
    p.add_argument("--seq_len", type=int, default=None, help="tokens per sequence (default 256 CPU, 512 GPU)")
    p.add_argument("--prompt_len", type=int, default=None, help="prompt tokens per sequence (default seq_len // 8)")
    p.add_argument("--grad_accum", type=int, default=1, help="gradient accumulation steps (both trainers)")
    p.add_argument("--gradient_checkpointing", action="store_true", help="enable it for both trainers (default off)")
    p.add_argument("--optim", default="adamw_torch_fused",
                   help="transformers optimizer name for both trainers (default: transformers' default, fused AdamW)")
    p.add_argument("--answer_len_min", type=int, default=None,
                   help="variable-length rows: answer lengths drawn uniformly from [this, seq_len - prompt_len] "
                        "(default: every row exactly seq_len tokens, no padding)")
    p.add_argument("--padding_free", action="store_true",
                   help="also run llmpost with padding_free: true (column llmpost_padding_free)")
    p.add_argument("--attn_implementation", default="sdpa",
                   help="attention implementation of the model for every trainer (sdpa, eager, flash_attention_2, ...)")
    p.add_argument("--torch_compile", action="store_true", help="torch_compile: true for every trainer")
    p.add_argument("--dpo_precompute_ref", action="store_true",
                   help="also run TRL DPO with precompute_ref_log_probs=True (third column)")
    p.add_argument("--no_memory_run", action="store_true",
                   help="CPU: take peak memory from the timing runs (noisy) instead of one short extra run per trainer")
    p.add_argument("--repeats", type=int, default=1,
                   help="run each trainer this many times, interleaved, and keep its fastest run (noisy machines)")
    p.add_argument("--trainers", default=None, help=argparse.SUPPRESS)  # comma-separated subset, for debugging
    p.add_argument("--output", default=None, help="also write the JSON result atomically to this file")
    p.add_argument("--_worker", choices=TRAINERS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    gpu = args.gpu
    args.model = args.model or ("llama-3.2-1b" if gpu else "cpu-small")
    args.steps = args.steps if args.steps is not None else (20 if gpu else 6)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (3 if gpu else 2)
    args.batch_size = args.batch_size or (16 if gpu else 4)
    args.seq_len = args.seq_len or (512 if gpu else 256)
    args.prompt_len = args.prompt_len if args.prompt_len is not None else args.seq_len // 8
    for name in ("steps", "batch_size", "grad_accum", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup_steps < 0:
        p.error("--warmup_steps must be >= 0")
    if not 1 <= args.prompt_len <= args.seq_len - 2:
        p.error("--prompt_len must be in [1, seq_len - 2]")
    if args.answer_len_min is not None and not 2 <= args.answer_len_min <= args.seq_len - args.prompt_len:
        p.error("--answer_len_min must be in [2, seq_len - prompt_len]")
    return args


# ----- worker: one trainer in its own process ------------------------------------------------------------------------
def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def build_model(args):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    dtype = torch.bfloat16 if args.gpu else torch.float32
    device = "cuda" if args.gpu else "cpu"
    attn = getattr(args, "attn_implementation", "sdpa")  # bench_dco.py's arguments have no such flag
    torch.manual_seed(0)  # identical weights in every worker
    if args.model in SHAPES:
        config = LlamaConfig(**SHAPES[args.model], max_position_embeddings=max(args.seq_len, 2048),
                             bos_token_id=1, eos_token_id=2, pad_token_id=0)
        with torch.device(device):  # initialise on the device: seconds instead of a minute for 1B parameters
            model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    else:
        if not os.path.isdir(args.model):
            raise SystemExit(f"--model {args.model!r}: not one of {sorted(SHAPES)} and not a local directory")
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation=attn)
    return model.to(device)


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer whose word ``t{i}`` is token ``i``: text round-trips to exactly the intended ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"t{i}": i for i in range(4, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>",
                                   unk_token="<unk>")


def synthetic_ids(args, n_rows: int, vocab_size: int):
    """``(prompt, chosen, rejected)``: a ``(n_rows, prompt_len)`` tensor and two lists of answer id lists, each answer
    ending with EOS (id 2) so DPO adds no token. With ``--answer_len_min`` the answer lengths are drawn uniformly
    from ``[answer_len_min, seq_len - prompt_len]`` (the same draws in every worker), else all are full length."""
    import torch

    g = torch.Generator().manual_seed(1234)
    answer = args.seq_len - args.prompt_len
    prompt = torch.randint(4, vocab_size, (n_rows, args.prompt_len), generator=g)
    answers = []
    for _ in range(2):
        full = torch.randint(4, vocab_size, (n_rows, answer), generator=g)
        low = args.answer_len_min or answer
        lengths = torch.randint(low, answer + 1, (n_rows,), generator=g).tolist()
        rows = [full[i, :n].tolist() for i, n in enumerate(lengths)]
        for r in rows:
            r[-1] = 2
        answers.append(rows)
    return prompt, answers[0], answers[1]


def _words(ids) -> str:
    return " ".join("</s>" if i == 2 else f"t{i}" for i in ids)


def extra_model_params(trainer) -> int:
    """Parameters held by modules reachable from the trainer that are not the policy's (a reference model...)."""
    import torch

    policy = {p.data_ptr() for p in trainer.model.parameters()}
    seen, extra = set(), 0
    for value in vars(trainer).values():
        if isinstance(value, torch.nn.Module):
            for p in value.parameters():
                if p.data_ptr() not in policy and p.data_ptr() not in seen:
                    seen.add(p.data_ptr())
                    extra += p.numel()
    return extra


def make_step_timer(gpu: bool):
    """A ``TrainerCallback`` recording the time at train begin and at every optimizer step's end (after a CUDA sync)."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin, self.ends = None, []

        def _now(self):
            if gpu:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_begin(self, *a, **k):
            self.begin = self._now()

        def on_step_end(self, *a, **k):
            self.ends.append(self._now())

    return StepTimer()


def step_times(timer, warmup_steps: int, steps: int, name: str) -> tuple[float, list[float]]:
    """``(seconds of the steps after the warm-up, duration of every step)``; raises unless all steps ran."""
    total_steps = warmup_steps + steps
    if len(timer.ends) != total_steps:
        raise RuntimeError(f"{name}: expected {total_steps} optimizer steps, ran {len(timer.ends)}")
    start = timer.ends[warmup_steps - 1] if warmup_steps else timer.begin
    marks = [timer.begin] + timer.ends
    return timer.ends[-1] - start, [b - a for a, b in zip(marks[:-1], marks[1:])]


def run_worker(args) -> dict:
    # Every heavy import happens before the memory baseline.
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from llmpost.data.unlearn import ForgetRetainDataset
    from llmpost.trainers.unlearn import UnlearnConfig, UnlearnTrainer

    baseline_rss = _current_rss()
    if args.gpu:
        if not torch.cuda.is_available():
            raise SystemExit("--gpu given but CUDA is not available")
        torch.cuda.reset_peak_memory_stats()

    name = args._worker
    model = build_model(args)
    vocab_size = model.config.vocab_size
    tokenizer = word_tokenizer(vocab_size)
    n_rows = (args.warmup_steps + args.steps) * args.batch_size * args.grad_accum  # exactly one epoch
    prompt, chosen, rejected = synthetic_ids(args, n_rows, vocab_size)
    out_dir = tempfile.mkdtemp(prefix=f"bench_{name}_")
    common = dict(
        output_dir=out_dir, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum,
        max_steps=args.warmup_steps + args.steps, learning_rate=1e-5, lr_scheduler_type="constant", warmup_steps=0,
        optim=args.optim, weight_decay=0.0, bf16=args.gpu, use_cpu=not args.gpu,
        gradient_checkpointing=args.gradient_checkpointing, report_to="none", save_strategy="no",
        logging_strategy="no", disable_tqdm=True, seed=0, data_seed=0, dataloader_drop_last=True,
        max_length=args.seq_len, torch_compile=args.torch_compile,
    )

    t0 = time.perf_counter()
    if name.startswith("llmpost"):
        def rows(answers):
            ids = [p + a for p, a in zip(prompt.tolist(), answers)]
            labels = [[-100] * args.prompt_len + a for a in answers]
            return Dataset.from_dict({"input_ids": ids, "labels": labels, "attention_mask": [[1] * len(r) for r in ids],
                                      "index": list(range(n_rows))})

        cfg = UnlearnConfig(method="npo_rt", reference="precomputed", precompute_ref_batch_size=2 * args.batch_size,
                            padding_free=name == "llmpost_padding_free", **common)
        trainer = UnlearnTrainer(model, cfg, ForgetRetainDataset(rows(chosen), rows(rejected), seed=0), tokenizer)
        ref_model_is_none = trainer.ref_model is None
    else:
        data = Dataset.from_dict({"prompt": [_words(r) for r in prompt.tolist()],
                                  "chosen": [" " + _words(r) for r in chosen],
                                  "rejected": [" " + _words(r) for r in rejected]})
        precompute = name == "trl_dpo_precompute"
        cfg = DPOConfig(precompute_ref_log_probs=precompute, precompute_ref_batch_size=args.batch_size, beta=0.1,
                        loss_type=["sigmoid"], **common)
        ref_model = None if precompute else copy.deepcopy(model).requires_grad_(False)  # same weights, explicitly
        trainer = DPOTrainer(model, ref_model=ref_model, args=cfg, train_dataset=data, processing_class=tokenizer)
        ref_model_is_none = trainer.ref_model is None
        got = [(len(r["prompt_ids"]), len(r["chosen_ids"]), len(r["rejected_ids"]))
               for r in trainer.train_dataset.select(range(4))]
        want = [(args.prompt_len, len(chosen[i]), len(rejected[i])) for i in range(4)]
        assert got == want, f"DPO tokenisation changed the sequence lengths: {got} != {want}"
    setup_s = time.perf_counter() - t0
    extra = extra_model_params(trainer)

    timer = make_step_timer(args.gpu)
    trainer.add_callback(timer)
    trainer.train()
    elapsed, step_s = step_times(timer, args.warmup_steps, args.steps, name)
    sequences_per_step = 2 * args.batch_size * args.grad_accum
    # Real (non-pad) tokens: every row is seq_len tokens, or with --answer_len_min the epoch's mean row length (all
    # trainers draw the same rows; the timed steps hold (steps / all steps) of the epoch in expectation).
    mean_len = args.prompt_len + statistics.fmean(len(a) for a in chosen + rejected)
    tokens = args.steps * sequences_per_step * mean_len
    tokens_per_s = tokens / elapsed
    median_step_s = statistics.median(step_s[args.warmup_steps:])
    shutil.rmtree(out_dir, ignore_errors=True)

    if args.gpu:
        peak, peak_kind = torch.cuda.max_memory_allocated(), "cuda_max_memory_allocated"
    else:
        peak, peak_kind = _peak_rss() - baseline_rss, "cpu_peak_rss_growth"
    mfu = mfu_causal = None
    if args.gpu:
        from trl.trainer.utils import adjusted_mfu, compute_flops_per_token, compute_mfu, get_peak_flops

        peak_flops = get_peak_flops(torch.cuda.get_device_name(), "bfloat16")
        if peak_flops:
            config = trainer.accelerator.unwrap_model(trainer.model).config
            mfu = compute_mfu(compute_flops_per_token(config, round(mean_len)), tokens_per_s, 1, peak_flops)
            mfu_causal = adjusted_mfu(mfu, config, round(mean_len))
    return {
        "trainer": name, "tokens_per_s": tokens_per_s,
        "tokens_per_s_median_step": sequences_per_step * mean_len / median_step_s, "mean_row_tokens": mean_len,
        "timed_s": elapsed, "timed_tokens": tokens,
        "step_s": step_s, "setup_s": setup_s, "peak_memory_bytes": int(peak), "peak_memory_kind": peak_kind,
        "mfu_percent": mfu, "mfu_percent_causal": mfu_causal, "ref_model_is_none": ref_model_is_none,
        "extra_model_params": extra, "second_model_in_memory": extra > 0,
        "policy_params": sum(p.numel() for p in model.parameters()),
    }


# ----- parent: run the workers, compare ------------------------------------------------------------------------------
def _device_name(gpu: bool) -> str:
    if gpu:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "cuda (unavailable)"
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


WORKER_ENV = {"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
              "TRANSFORMERS_VERBOSITY": "error"}


def run_worker_process(script: str, argv, name: str, tag: str, tmp: str, extra_argv=(), extra_env=None) -> dict:
    """Run ``script argv extra_argv --_worker name --_result FILE`` in a fresh interpreter; the JSON it wrote."""
    path = os.path.join(tmp, f"{name}_{tag}.json".replace("/", "of").replace(" ", "_"))
    cmd = [sys.executable, os.path.abspath(script), *argv, *extra_argv, "--_worker", name, "--_result", path]
    print(f"[bench] running {name} ({tag}) ...", file=sys.stderr, flush=True)
    env = {**os.environ, **WORKER_ENV, **(extra_env or {})}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.exists(path):
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-20000:])
        raise SystemExit(f"[bench] worker {name} ({tag}) failed with exit code {proc.returncode}")
    return json.loads(Path(path).read_text())


def run_all(args, argv) -> dict:
    names = (["llmpost"] + (["llmpost_padding_free"] if args.padding_free else []) + ["trl_dpo"]
             + (["trl_dpo_precompute"] if args.dpo_precompute_ref else []))
    if args.trainers:
        names = [n for n in args.trainers.split(",") if n]
    runs = {name: [] for name in names}
    memory = {}
    with tempfile.TemporaryDirectory(prefix="bench_unlearn_") as tmp:

        def worker(name: str, tag: str, extra_argv=(), extra_env=None) -> dict:
            return run_worker_process(__file__, argv, name, tag, tmp, extra_argv, extra_env)

        for rep in range(args.repeats):  # interleaved, so slow drifts of a shared machine hit every trainer alike
            for name in names:
                runs[name].append(worker(name, f"timing {rep + 1}/{args.repeats}"))
        if not args.gpu and not args.no_memory_run:
            # glibc's adaptive mmap threshold makes the RSS of the timing runs wander by +-100 MiB between identical
            # runs; a fixed threshold returns every large freed block to the OS at once, so the peak RSS follows
            # the live tensors (identical runs agree to < 1 MiB). It slows allocation, hence a separate short run.
            for name in names:
                memory[name] = worker(name, "memory", ["--steps", "2", "--warmup_steps", "1"],
                                      {"MALLOC_MMAP_THRESHOLD_": "65536"})
    results = {}
    for name, rs in runs.items():  # best of the repeats: the run least disturbed by other load
        best = dict(max(rs, key=lambda r: r["tokens_per_s"]))
        best["repeats_tokens_per_s"] = [r["tokens_per_s"] for r in rs]
        if name in memory:
            best["peak_memory_bytes_timing_run"] = best["peak_memory_bytes"]
            best["peak_memory_bytes"] = memory[name]["peak_memory_bytes"]
            best["peak_memory_kind"] = "cpu_peak_rss_growth_fixed_mmap_threshold"
        results[name] = best
    return results


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    return a[key] / b[key] if a and b and b[key] else None


def summarise(args, results: dict) -> dict:
    ll, dpo = results.get("llmpost"), results.get("trl_dpo")
    out = {
        "tokens_per_s_ratio": _ratio(ll, dpo, "tokens_per_s"),
        "peak_memory_ratio": _ratio(ll, dpo, "peak_memory_bytes"),
        "llmpost_tokens_per_s": ll and ll["tokens_per_s"],
        "trl_dpo_tokens_per_s": dpo and dpo["tokens_per_s"],
        "llmpost_peak_memory_bytes": ll and ll["peak_memory_bytes"],
        "trl_dpo_peak_memory_bytes": dpo and dpo["peak_memory_bytes"],
    }
    pf = results.get("llmpost_padding_free")
    if pf:
        out.update({
            "llmpost_padding_free_tokens_per_s": pf["tokens_per_s"],
            "padding_free_tokens_per_s_ratio": _ratio(pf, dpo, "tokens_per_s"),
            "padding_free_vs_padded_tokens_per_s_ratio": _ratio(pf, ll, "tokens_per_s"),
        })
    pre = results.get("trl_dpo_precompute")
    if pre:
        out.update({
            "trl_dpo_precompute_tokens_per_s": pre["tokens_per_s"],
            "trl_dpo_precompute_peak_memory_bytes": pre["peak_memory_bytes"],
            "tokens_per_s_ratio_vs_dpo_precompute": _ratio(ll, pre, "tokens_per_s"),
            "peak_memory_ratio_vs_dpo_precompute": _ratio(ll, pre, "peak_memory_bytes"),
        })
    out.update({
        "target_tokens_per_s_ratio": TARGET_RATIO,
        "meets_target": (out["tokens_per_s_ratio"] >= TARGET_RATIO and not ll["second_model_in_memory"])
        if out["tokens_per_s_ratio"] is not None else None,
        "device": _device_name(args.gpu),
        "model": args.model,
        "dtype": "bfloat16" if args.gpu else "float32",
        "seq_len": args.seq_len,
        "prompt_len": args.prompt_len,
        "answer_len_min": args.answer_len_min,
        "mean_row_tokens": next(iter(results.values()))["mean_row_tokens"],
        "attn_implementation": args.attn_implementation,
        "torch_compile": args.torch_compile,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "sequences_per_step": 2 * args.batch_size * args.grad_accum,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "gradient_checkpointing": args.gradient_checkpointing,
        "optim": args.optim,
        "repeats": args.repeats,
        "peak_memory_kind": next(iter(results.values()))["peak_memory_kind"],
        "second_model_in_memory": {n: r["second_model_in_memory"] for n, r in results.items()},
        "mfu_percent": {n: r["mfu_percent"] for n, r in results.items()} if args.gpu else None,
        "mfu_percent_causal": {n: r["mfu_percent_causal"] for n, r in results.items()} if args.gpu else None,
        "trainers": results,
    })
    return out


def print_table(summary: dict) -> None:
    rows = summary["trainers"]
    base = rows.get("trl_dpo")
    print(f"\nmodel={summary['model']} device={summary['device']} dtype={summary['dtype']} "
          f"seq_len={summary['seq_len']} "
          f"sequences/step={summary['sequences_per_step']} timed steps={summary['steps']} "
          f"(+{summary['warmup_steps']} warm-up) grad_accum={summary['grad_accum']} "
          f"grad_ckpt={summary['gradient_checkpointing']} attn={summary['attn_implementation']} "
          f"compile={summary['torch_compile']} mean row tokens={summary['mean_row_tokens']:.1f}")
    head = (f"{'trainer':<20}{'tokens/s':>12}{'x trl_dpo':>11}{'peak MiB':>11}{'x trl_dpo':>11}{'2nd model':>11}"
            f"{'MFU %':>8}{'setup s':>9}")
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        tps_x, mem_x = (f"{x:.3f}" if x is not None else "-" for x in
                        (_ratio(r, base, "tokens_per_s"), _ratio(r, base, "peak_memory_bytes")))
        mfu = f"{r['mfu_percent']:.1f}" if r["mfu_percent"] is not None else "-"
        print(f"{name:<20}{r['tokens_per_s']:>12.1f}{tps_x:>11}{r['peak_memory_bytes'] / 2**20:>11.1f}{mem_x:>11}"
              f"{str(r['second_model_in_memory']):>11}{mfu:>8}{r['setup_s']:>9.1f}")
    print(f"peak memory = {summary['peak_memory_kind']}; target: llmpost >= {TARGET_RATIO}x trl_dpo tokens/s "
          f"with no second model -> meets_target={summary['meets_target']}\n")


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args._worker:
        result = run_worker(args)
        from llmpost.utils import atomic_write_json

        atomic_write_json(args._result, result)
        return
    summary = summarise(args, run_all(args, argv))
    print_table(summary)
    if args.output:
        from llmpost.utils import atomic_write_json

        atomic_write_json(args.output, summary)
    print(json.dumps(summary, allow_nan=True), flush=True)


if __name__ == "__main__":
    main()
