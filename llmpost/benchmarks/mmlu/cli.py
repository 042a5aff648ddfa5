"""``llmpost eval mmlu`` and ``llmpost report mmlu`` (registered by :func:`llmpost.cli.build_parser`)."""

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
class MmluEvalArgs(EvalArgs):
    """Options of ``llmpost eval mmlu``."""

    data_dir: str = field(default="", metadata={"help": "Directory holding MMLU's test/ and dev/ CSV files."})
    num_fewshot: int = field(default=0, metadata={"help": "Few-shot examples from the dev split: 0 to 5."})
    subjects: str | None = field(default=None, metadata={"help": "Comma-separated subjects; unset: all 57."})
    batch_size: int = field(default=8, metadata={"help": "Questions per forward pass (4 sequences each)."})
    max_length: int | None = field(default=None, metadata={"help": "Input token limit; unset: the model's context."})


def run_eval_mmlu(ns: argparse.Namespace) -> int:
    """``llmpost eval mmlu``: check the flags and every data row, load the model, evaluate, write, print."""
    from llmpost.benchmarks.mmlu.data import CATEGORIES, GROUP, category_group, load_mmlu, parse_subjects
    from llmpost.benchmarks.mmlu.evaluate import EVAL_FILE, SUMMARY_FILE, MmluEvalSettings, evaluate_mmlu
    from llmpost.eval.mcq import format_summary

    args = args_from_namespace(MmluEvalArgs, ns)
    validate_eval_args(args, ("batch_size",) + (("max_length",) if args.max_length is not None else ()))
    if not 0 <= args.num_fewshot <= 5:
        raise CliError(f"--num_fewshot must be in 0..5 (the dev split has 5 examples per subject), got "
                       f"{args.num_fewshot}")  # fmt: skip
    try:
        subjects = parse_subjects(args.subjects)
    except ValueError as e:
        raise CliError(f"--subjects: {e}") from e
    check_results_dir(args, "MMLU", (EVAL_FILE, SUMMARY_FILE))
    load_mmlu(args.data_dir, subjects, args.num_fewshot, args.max_examples)  # bad data stops here
    model, tokenizer = load_model_and_tokenizer(args)
    settings = MmluEvalSettings(data_dir=args.data_dir, num_fewshot=args.num_fewshot, subjects=subjects,
                                batch_size=args.batch_size, max_length=args.max_length,
                                max_examples=args.max_examples)  # fmt: skip
    summary = evaluate_mmlu(model, tokenizer, settings, output_dir=args.output_dir)
    groups = ("num_fewshot", GROUP) + tuple(category_group(c) for c in CATEGORIES)
    print(format_summary({k: summary[k] for k in groups if k in summary}))
    print(f"\nResults: {Path(args.output_dir) / EVAL_FILE}, {Path(args.output_dir) / SUMMARY_FILE}")
    return 0


def _report_table(runs: dict[str, str], ns: argparse.Namespace) -> str:
    from llmpost.benchmarks.mmlu.report import mmlu_report

    return mmlu_report(runs, subjects=ns.subjects)


def register(benchmarks, report_benchmarks) -> None:
    """Register ``llmpost eval mmlu`` and ``llmpost report mmlu``."""
    mmlu = benchmarks.add_parser(
        "mmlu", help="MMLU (57 subjects, 0- or 5-shot), scored as lm-eval 0.4.",
        description="Evaluate a model on MMLU as lm-evaluation-harness 0.4 scores it (log-likelihood of the answer "
                    "letters, first-n dev examples as shots); writes MMLU_EVAL.json and MMLU_SUMMARY.json.")  # fmt: skip
    add_dataclass_args(mmlu, MmluEvalArgs, required=("model_name_or_path", "output_dir", "data_dir"))
    mmlu.set_defaults(func=run_eval_mmlu)
    rmmlu = add_report_parser(report_benchmarks, "mmlu", help="Table of MMLU runs.", summary_file="MMLU_SUMMARY.json",
                              description="Print each run's MMLU accuracy: mmlu, its four categories (and subjects).",
                              make_table=_report_table)  # fmt: skip
    rmmlu.add_argument("--subjects", action="store_true", help="Also a row per subject.")
