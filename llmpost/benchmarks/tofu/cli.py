"""``llmpost eval tofu`` and ``llmpost report tofu``: flags, input checks, and the subcommands (registered by
:func:`llmpost.cli.build_parser`)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from llmpost.benchmarks.args import (
    EvalArgs,
    add_dataclass_args,
    add_report_parser,
    args_from_namespace,
    check_mia_reference,
    check_results_dir,
    load_model_and_tokenizer,
    validate_eval_args,
)
from llmpost.data.templates import TemplateArgs


@dataclass
class TofuEvalArgs(EvalArgs):
    """Options of ``llmpost eval tofu`` (the template flags come from :class:`llmpost.data.templates.TemplateArgs`)."""

    data_dir: str | None = field(default=None, metadata={"help": "Directory of TOFU *.jsonl splits; unset: hub."})
    forget_split: str = field(default="forget10", metadata={"help": "forget01, forget05 or forget10."})
    holdout_split: str | None = field(default=None, metadata={"help": "Holdout split for privleak; default: matching."})
    retain_logs_path: str | None = field(default=None, metadata={"help": "Retain model's TOFU_EVAL.json."})
    batch_size: int = field(default=32, metadata={"help": "Batch size of forward passes and generation."})
    max_length: int = field(default=512, metadata={"help": "Truncation length in tokens."})
    max_new_tokens: int = field(default=200, metadata={"help": "Greedy generation length for ROUGE."})
    compute_generation: bool = field(default=True, metadata={"help": "Generate for ROUGE (needed for model_utility)."})
    stopwords: list[str] | None = field(default=None, metadata={"help": "Strings that end a generation."})
    generation_backend: str = field(default="transformers", metadata={"help": "transformers or vllm (GPU)."})
    mia_attacks: bool = field(default=True, metadata={"help": "Run the MIA suite (mia_loss, mia_zlib, ...)."})
    mia_reference_model_path: str | None = field(
        default=None, metadata={"help": "Reference model of mia_reference (e.g. the retain model); same tokenizer."}
    )


def run_eval_tofu(ns: argparse.Namespace) -> int:
    """``llmpost eval tofu``: check every input, load, evaluate, write the two result files, print the summary."""
    from llmpost.benchmarks.tofu.data import load_tofu_eval_splits
    from llmpost.benchmarks.tofu.evaluate import (
        EVAL_FILE,
        SUMMARY_FILE,
        TofuEvalSettings,
        evaluate_tofu,
        format_summary,
        load_retain_logs,
    )

    args = args_from_namespace(TofuEvalArgs, ns)
    template = args_from_namespace(TemplateArgs, ns)
    validate_eval_args(args, ("batch_size", "max_length", "max_new_tokens"))
    check_results_dir(args, "TOFU", (EVAL_FILE, SUMMARY_FILE))
    # Fail on missing data or a bad retain log before the (slow) model load.
    load_tofu_eval_splits(args.data_dir, args.forget_split, args.holdout_split, args.max_examples)
    if args.retain_logs_path:
        load_retain_logs(args.retain_logs_path)
    if args.mia_attacks:
        check_mia_reference(args)
    model, tokenizer = load_model_and_tokenizer(args)
    vllm_model = args.model_name_or_path if args.generation_backend == "vllm" else None
    settings = TofuEvalSettings(
        data_dir=args.data_dir, forget_split=args.forget_split, holdout_split=args.holdout_split, template=template,
        batch_size=args.batch_size, max_length=args.max_length, max_new_tokens=args.max_new_tokens,
        compute_generation=args.compute_generation, stopwords=args.stopwords,
        generation_backend=args.generation_backend, max_examples=args.max_examples, mia_attacks=args.mia_attacks,
        mia_reference_model_path=args.mia_reference_model_path,
    )  # fmt: skip
    summary = evaluate_tofu(model, tokenizer, settings, output_dir=args.output_dir,
                            retain_logs_path=args.retain_logs_path, vllm_model=vllm_model)  # fmt: skip
    print(format_summary(summary))
    print(f"\nResults: {Path(args.output_dir) / EVAL_FILE}, {Path(args.output_dir) / SUMMARY_FILE}")
    return 0


def _report_table(runs: dict[str, str], ns: argparse.Namespace) -> str:
    from llmpost.benchmarks.tofu.report import tofu_report

    return tofu_report(runs, ns.retain_logs_path, ns.plot)


def register(benchmarks, report_benchmarks) -> None:
    """Register ``llmpost eval tofu`` and ``llmpost report tofu`` (called by :func:`llmpost.cli.build_parser`)."""
    tofu = benchmarks.add_parser(
        "tofu",
        help="TOFU (open-unlearning metrics and result files).",
        description="Evaluate a model on TOFU; writes TOFU_EVAL.json and TOFU_SUMMARY.json into --output_dir.",
    )
    add_dataclass_args(tofu, TofuEvalArgs, required=("model_name_or_path", "output_dir"), unescape=("stopwords",))
    template_flags = tuple(f.name for f in dataclasses.fields(TemplateArgs) if f.name != "apply_chat_template")
    add_dataclass_args(tofu.add_argument_group("prompt template"), TemplateArgs, unescape=template_flags)
    tofu.set_defaults(func=run_eval_tofu)

    rtofu = add_report_parser(
        report_benchmarks, "tofu", help="Table and plot of TOFU runs.", summary_file="TOFU_SUMMARY.json",
        description="Print forget_quality, model_utility, forget/retain probabilities and truth ratio per run; "
        "fill in forget_quality from --retain_logs_path where a run lacks it; plot forget quality vs model utility.",
        plot_help="Write a PNG of forget quality vs model utility here.", make_table=_report_table,
    )
    rtofu.add_argument("--retain_logs_path", default=None, help="The retain model's TOFU_EVAL.json.")
