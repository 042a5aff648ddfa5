"""``llmpost eval wmdp`` and ``llmpost report wmdp`` (registered by :func:`llmpost.cli.build_parser`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from llmpost.benchmarks.args import (
    CliError,
    EvalArgs,
    add_dataclass_args,
    add_report_parser,
    args_from_namespace,
    check_results_dir,
    load_model_and_tokenizer,
    validate_eval_args,
)


@dataclass
class WmdpEvalArgs(EvalArgs):
    """Options of ``llmpost eval wmdp``."""

    data_dir: str = field(default="", metadata={"help": "Directory of {bio,chem,cyber}_questions.json."})
    subsets: str | None = field(default=None, metadata={"help": "Comma-separated subsets (bio,chem,cyber); unset: all."})
    batch_size: int = field(default=8, metadata={"help": "Questions per forward pass (4 sequences each)."})
    max_length: int | None = field(default=None, metadata={"help": "Input token limit; unset: the model's context."})


def run_eval_wmdp(ns: argparse.Namespace) -> int:
    """``llmpost eval wmdp``: check the flags and every data row, load the model, evaluate, write, print."""
    from llmpost.benchmarks.wmdp.data import load_wmdp, parse_subsets
    from llmpost.benchmarks.wmdp.evaluate import EVAL_FILE, SUMMARY_FILE, WmdpEvalSettings, evaluate_wmdp
    from llmpost.eval.mcq import format_summary

    args = args_from_namespace(WmdpEvalArgs, ns)
    validate_eval_args(args, ("batch_size",) + (("max_length",) if args.max_length is not None else ()))
    try:
        subsets = parse_subsets(args.subsets)
    except ValueError as e:
        raise CliError(f"--subsets: {e}") from e
    check_results_dir(args, "WMDP", (EVAL_FILE, SUMMARY_FILE))
    load_wmdp(args.data_dir, subsets, args.max_examples)  # bad data stops here, before the model loads
    model, tokenizer = load_model_and_tokenizer(args)
    settings = WmdpEvalSettings(data_dir=args.data_dir, subsets=subsets, batch_size=args.batch_size,
                                max_length=args.max_length, max_examples=args.max_examples)  # fmt: skip
    summary = evaluate_wmdp(model, tokenizer, settings, output_dir=args.output_dir)
    print(format_summary(summary))
    print(f"\nResults: {Path(args.output_dir) / EVAL_FILE}, {Path(args.output_dir) / SUMMARY_FILE}")
    return 0


def _report_table(runs: dict[str, str], ns: argparse.Namespace) -> str:
    from llmpost.benchmarks.wmdp.report import wmdp_report

    return wmdp_report(runs)


def register(benchmarks, report_benchmarks) -> None:
    """Register ``llmpost eval wmdp`` and ``llmpost report wmdp``."""
    wmdp = benchmarks.add_parser(
        "wmdp", help="WMDP multiple choice (bio, chem, cyber), scored as lm-eval 0.4.",
        description="Evaluate a model on WMDP as lm-evaluation-harness 0.4 scores it (zero-shot, log-likelihood of "
                    "the answer letters); writes WMDP_EVAL.json and WMDP_SUMMARY.json into --output_dir.")  # fmt: skip
    add_dataclass_args(wmdp, WmdpEvalArgs, required=("model_name_or_path", "output_dir", "data_dir"))
    wmdp.set_defaults(func=run_eval_wmdp)
    add_report_parser(report_benchmarks, "wmdp", help="Table of WMDP runs.", summary_file="WMDP_SUMMARY.json",
                      description="Print each run's WMDP accuracy per subset and the wmdp group.",
                      make_table=_report_table)  # fmt: skip
