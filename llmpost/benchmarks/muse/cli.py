"""``llmpost eval muse`` and ``llmpost report muse``: flags, input checks, and the subcommands (registered by
:func:`llmpost.cli.build_parser`)."""

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
    check_mia_reference,
    check_results_dir,
    load_model_and_tokenizer,
    validate_eval_args,
)


@dataclass
class MuseEvalArgs(EvalArgs):
    """Options of ``llmpost eval muse`` (defaults: the MUSE benchmark's, see :mod:`llmpost.benchmarks.muse.evaluate`)."""

    data_dir: str | None = field(default=None, metadata={"help": "MUSE-News directory; unset: the hub's."})
    protocol: str = field(default="muse", metadata={"help": "muse (the benchmark's code) or open_unlearning."})
    reference_auc: float | None = field(default=None, metadata={"help": "Retrained model's AUC (muse: 0.4772)."})
    retain_logs_path: str | None = field(default=None, metadata={"help": "Retrained model's MUSE_EVAL.json."})
    batch_size: int = field(default=8, metadata={"help": "Batch size of generation and scoring."})
    verbmem_max_new_tokens: int = field(default=128, metadata={"help": "VerbMem generation length (MUSE: 128)."})
    knowmem_max_new_tokens: int = field(default=32, metadata={"help": "KnowMem generation length (MUSE: 32)."})
    mia_attacks: bool = field(default=True, metadata={"help": "Run the MIA suite (mia_loss, mia_zlib, ...)."})
    mia_reference_model_path: str | None = field(
        default=None, metadata={"help": "Reference model of mia_reference (e.g. the retrained model); same tokenizer."}
    )


def _validate_muse_args(args: MuseEvalArgs) -> None:
    from llmpost.benchmarks.muse.data import MuseProtocol

    validate_eval_args(args, ("batch_size", "verbmem_max_new_tokens", "knowmem_max_new_tokens"))
    if args.protocol not in {p.value for p in MuseProtocol}:
        raise CliError(f"--protocol must be one of {[p.value for p in MuseProtocol]}, got {args.protocol!r}")
    if args.reference_auc is not None and args.retain_logs_path:
        raise CliError("give --reference_auc or --retain_logs_path, not both")
    if args.reference_auc is not None and not 0 < args.reference_auc < 1:
        raise CliError(f"--reference_auc must be strictly between 0 and 1, got {args.reference_auc}")


def run_eval_muse(ns: argparse.Namespace) -> int:
    """``llmpost eval muse``: check every input, load, evaluate, write the two result files, print the summary."""
    from llmpost.benchmarks.muse.evaluate import (
        EVAL_FILE,
        SUMMARY_FILE,
        MuseEvalSettings,
        evaluate_muse,
        load_muse_eval_splits,
        resolve_reference_auc,
    )
    from llmpost.eval.stats import format_table

    args = args_from_namespace(MuseEvalArgs, ns)
    _validate_muse_args(args)
    check_results_dir(args, "MUSE", (EVAL_FILE, SUMMARY_FILE))
    # Fail on missing data or a bad retain log before the (slow) model load.
    load_muse_eval_splits(args.data_dir, args.max_examples)
    resolve_reference_auc(args.protocol, args.reference_auc, args.retain_logs_path)
    if args.mia_attacks:
        check_mia_reference(args)
    model, tokenizer = load_model_and_tokenizer(args)
    settings = MuseEvalSettings(
        data_dir=args.data_dir, protocol=args.protocol, batch_size=args.batch_size, reference_auc=args.reference_auc,
        max_examples=args.max_examples, verbmem_max_new_tokens=args.verbmem_max_new_tokens,
        knowmem_max_new_tokens=args.knowmem_max_new_tokens, mia_attacks=args.mia_attacks,
        mia_reference_model_path=args.mia_reference_model_path,
    )  # fmt: skip
    summary = evaluate_muse(model, tokenizer, settings, output_dir=args.output_dir,
                            retain_logs_path=args.retain_logs_path)  # fmt: skip
    print(format_table({"value": summary}, tuple(summary)))
    print(f"\nResults: {Path(args.output_dir) / EVAL_FILE}, {Path(args.output_dir) / SUMMARY_FILE}")
    return 0


def _report_table(runs: dict[str, str], ns: argparse.Namespace) -> str:
    from llmpost.benchmarks.muse.report import muse_report

    return muse_report(runs)


def register(benchmarks, report_benchmarks) -> None:
    """Register ``llmpost eval muse`` and ``llmpost report muse`` (called by :func:`llmpost.cli.build_parser`)."""
    muse = benchmarks.add_parser(
        "muse",
        help="MUSE-News (the benchmark's metrics, or open-unlearning's port).",
        description="Evaluate a model on MUSE-News; writes MUSE_EVAL.json and MUSE_SUMMARY.json into --output_dir.",
    )
    add_dataclass_args(muse, MuseEvalArgs, required=("model_name_or_path", "output_dir"))
    muse.set_defaults(func=run_eval_muse)
    add_report_parser(
        report_benchmarks, "muse", help="Table of MUSE runs.", summary_file="MUSE_SUMMARY.json",
        description="Print the VerbMem / KnowMem ROUGE, privleak and its AUC of each run.", make_table=_report_table,
    )
