"""``llmpost eval math`` and ``llmpost report math`` (registered by :func:`llmpost.cli.build_parser`).

Examples::

    llmpost eval math --model_name_or_path out/dco_math --data_file ../shared/data/math/math500_test.jsonl \\
        --num_samples 64 --temperature 1.0 --output_dir out/dco_math/eval_math
    llmpost eval math --predictions preds.jsonl --data_file ../shared/data/math/math500_test.jsonl --output_dir out/x
    llmpost report math --run ce=out/ce/eval --run dco=out/dco/eval --plot passk.png
"""

from __future__ import annotations

import argparse
import dataclasses
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
from llmpost.benchmarks.math.data import MathTemplateArgs


@dataclass
class MathEvalArgs(EvalArgs):
    """Options of ``llmpost eval math`` (the prompt template flags come from :class:`MathTemplateArgs`)."""

    data_file: str = field(default="", metadata={"help": "MATH-format problems: a .jsonl file or a hub id (HuggingFaceH4/MATH-500)."})
    predictions: str | None = field(default=None, metadata={"help": "Grade these completions (.jsonl: unique_id, completions) instead of sampling."})
    num_samples: int = field(default=16, metadata={"help": "Samples per problem (n of pass@k)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (0: greedy)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    max_new_tokens: int = field(default=512, metadata={"help": "Generation length."})
    seed: int = field(default=0, metadata={"help": "Seed of the samples."})
    batch_size: int = field(default=32, metadata={"help": "Generation batch size (rows = prompts x samples)."})
    max_length: int = field(default=2048, metadata={"help": "Prompt truncation length in tokens."})
    stopwords: list[str] | None = field(default=None, metadata={"help": "Strings that end a generation."})
    generation_backend: str = field(default="transformers", metadata={"help": "transformers or vllm (GPU)."})
    grading_timeout: float = field(default=5.0, metadata={"help": "Seconds allowed per grading call (then: incorrect)."})


def _validate(args: MathEvalArgs) -> None:
    if not args.data_file:
        raise CliError("--data_file is required (a MATH-format .jsonl file or a hub id)")
    if args.predictions is None and not args.model_name_or_path:
        raise CliError("give --model_name_or_path to sample completions, or --predictions to grade a file")
    validate_eval_args(args, ("num_samples", "max_new_tokens", "batch_size", "max_length"))
    if args.temperature < 0:
        raise CliError(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise CliError(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.grading_timeout <= 0:
        raise CliError(f"--grading_timeout must be > 0, got {args.grading_timeout}")
    if args.predictions is not None and not Path(args.predictions).is_file():
        raise CliError(f"--predictions {args.predictions!r} does not exist")


def run_eval_math(ns: argparse.Namespace) -> int:
    """``llmpost eval math``: check every input, sample (or read predictions), grade, write the two files, print."""
    from llmpost.benchmarks.math.data import load_math
    from llmpost.benchmarks.math.evaluate import (
        EVAL_FILE,
        SUMMARY_FILE,
        MathEvalSettings,
        evaluate_math,
        format_summary,
        grade_problems,
        load_predictions,
        summarize,
        write_results,
    )

    args = args_from_namespace(MathEvalArgs, ns)
    template = args_from_namespace(MathTemplateArgs, ns)
    _validate(args)
    check_results_dir(args, "MATH", (EVAL_FILE, SUMMARY_FILE))
    problems = load_math(args.data_file)  # fails on a bad file before the (slow) model load
    if args.max_examples is not None:
        problems = problems.select(range(min(args.max_examples, len(problems))))
    if args.predictions is not None:
        rows, completions = load_predictions(args.predictions, problems)
        if not rows:
            raise CliError(f"--predictions {args.predictions!r} holds no problem of --data_file")
        records = grade_problems(rows, completions, timeout=args.grading_timeout)
        summary = {**summarize(records, seed=args.seed), "settings": {"predictions": args.predictions}}
        write_results(records, summary, args.output_dir)
    else:
        model, tokenizer = load_model_and_tokenizer(args)
        settings = MathEvalSettings(
            num_samples=args.num_samples, temperature=args.temperature, top_p=args.top_p,
            max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size, max_length=args.max_length,
            backend=args.generation_backend, stopwords=args.stopwords,
        )  # fmt: skip
        vllm_model = args.model_name_or_path if args.generation_backend == "vllm" else None
        summary = evaluate_math(model, tokenizer, problems, template, settings, output_dir=args.output_dir,
                                vllm_model=vllm_model)  # fmt: skip
    print(format_summary(summary))
    print(f"\nResults: {Path(args.output_dir) / EVAL_FILE}, {Path(args.output_dir) / SUMMARY_FILE}")
    return 0


def _report_table(runs: dict[str, str], ns: argparse.Namespace) -> str:
    from llmpost.benchmarks.math.report import math_report

    return math_report(runs, ns.plot)


def register(benchmarks, report_benchmarks) -> None:
    """Register ``llmpost eval math`` and ``llmpost report math`` (called by :func:`llmpost.cli.build_parser`)."""
    math = benchmarks.add_parser(
        "math", help="MATH (pass@k with math-verify grading).",
        description="Sample --num_samples completions per problem (or grade --predictions), grade them with math-verify, "
        "and write MATH_EVAL.json and MATH_SUMMARY.json (pass@k, accuracy by subject and level) into --output_dir.",
    )  # fmt: skip
    add_dataclass_args(math, MathEvalArgs, required=("output_dir",), unescape=("stopwords",))
    template_flags = tuple(f.name for f in dataclasses.fields(MathTemplateArgs) if f.name != "apply_chat_template")
    add_dataclass_args(math.add_argument_group("prompt template"), MathTemplateArgs, unescape=template_flags)
    math.set_defaults(func=run_eval_math)
    add_report_parser(
        report_benchmarks, "math", help="pass@k table and curves of MATH runs.", summary_file="MATH_SUMMARY.json",
        description="Print pass@k of each run for every k they share; plot pass@k against k.",
        plot_help="Write a PNG of pass@k against k here.", make_table=_report_table,
    )
