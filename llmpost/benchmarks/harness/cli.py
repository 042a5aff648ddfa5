"""``llmpost eval lm_eval`` (registered by :func:`llmpost.cli.build_parser`); it has no report (lm-eval's results
JSON is the report)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from llmpost.benchmarks.args import (
    CliError,
    EvalArgs,
    add_dataclass_args,
    args_from_namespace,
    check_model_flag,
    check_results_dir,
    validate_eval_args,
)


@dataclass
class LmEvalArgs(EvalArgs):
    """Options of ``llmpost eval lm_eval`` (``--max_examples`` is lm-eval's ``limit``)."""

    tasks: str = field(default="", metadata={"help": "Comma-separated lm-eval task or group names (e.g. mmlu,wmdp)."})
    num_fewshot: int | None = field(default=None, metadata={"help": "Few-shot examples; unset: each task's default."})
    batch_size: int = field(default=8, metadata={"help": "lm-eval's batch size (requests per forward pass)."})
    max_length: int | None = field(default=None, metadata={"help": "lm-eval's max_length; unset: the model's."})
    include_path: str | None = field(default=None, metadata={"help": "A folder of extra lm-eval task YAMLs."})
    log_samples: bool = field(default=False, metadata={"help": "Keep lm-eval's per-sample records in the results."})


def run_eval_lm_eval(ns: argparse.Namespace) -> int:
    """``llmpost eval lm_eval``: check lm-eval is installed and the flags, load (merging an adapter), run, write."""
    import torch

    from llmpost.benchmarks.harness.run import RESULTS_FILE, LmEvalMissing, LmEvalSettings, import_lm_eval, run_lm_eval
    from llmpost.models import load_saved_model, load_tokenizer

    args = args_from_namespace(LmEvalArgs, ns)
    try:
        import_lm_eval()
    except LmEvalMissing as e:
        raise CliError(f"llmpost eval lm_eval: {e}") from e
    validate_eval_args(args, ("batch_size",))
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    if not tasks:
        raise CliError("--tasks: give at least one lm-eval task name")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise CliError(f"--num_fewshot must be >= 0, got {args.num_fewshot}")
    if args.include_path and not Path(args.include_path).is_dir():
        raise CliError(f"--include_path {args.include_path!r} is not a directory")
    check_results_dir(args, "lm-eval", (RESULTS_FILE,))
    model_path = check_model_flag(args.model_name_or_path, "model_name_or_path")
    tok_path = check_model_flag(args.tokenizer_name_or_path, "tokenizer_name_or_path") if args.tokenizer_name_or_path \
        else model_path  # fmt: skip
    try:
        tokenizer = load_tokenizer(tok_path, trust_remote_code=args.trust_remote_code)
        model = load_saved_model(model_path, args.dtype, args.trust_remote_code, merge=True)
    except (OSError, ValueError) as e:
        raise CliError(f"could not load the model or tokenizer from {model_path!r}: {e}") from e
    model = model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = LmEvalSettings(tasks=tasks, num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                              limit=args.max_examples, include_path=args.include_path, max_length=args.max_length,
                              log_samples=args.log_samples)  # fmt: skip
    results = run_lm_eval(model, tokenizer, settings, output_dir=args.output_dir)
    if results:
        from lm_eval.utils import make_table

        print(make_table(results))
        print(f"Results: {Path(args.output_dir) / RESULTS_FILE}")
    return 0


def register(benchmarks, report_benchmarks) -> None:
    """Register ``llmpost eval lm_eval``."""
    parser = benchmarks.add_parser(
        "lm_eval", help="Any lm-evaluation-harness task on a llmpost checkpoint (extra: llmpost[lm-eval]).",
        description="Run lm-evaluation-harness's simple_evaluate on a llmpost checkpoint (a full model, or a LoRA "
                    "adapter merged into its base); writes lm-eval's results JSON as LM_EVAL_RESULTS.json.")  # fmt: skip
    add_dataclass_args(parser, LmEvalArgs, required=("model_name_or_path", "output_dir", "tasks"))
    parser.set_defaults(func=run_eval_lm_eval)
