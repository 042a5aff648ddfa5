"""The ``llmpost`` command: ``llmpost eval BENCHMARK ...`` and ``llmpost report BENCHMARK ...``.

A dispatcher only: each benchmark package under :mod:`llmpost.benchmarks` owns its flags and subcommands in its
``cli.py`` (a ``register(eval_parsers, report_parsers)`` function); this module lists the packages and runs the chosen
subcommand.

Example (offline, base-model template)::

    llmpost eval tofu --model_name_or_path out/npo_tofu --data_dir ../shared/data/tofu --forget_split forget10 \\
        --retain_logs_path retain90/TOFU_EVAL.json --output_dir out/npo_tofu/eval
    llmpost eval muse --model_name_or_path out/npo_muse --data_dir ../shared/data/muse_news \\
        --output_dir out/npo_muse/eval
    llmpost report muse --run target=out/target/eval --run npo=out/npo_muse/eval
    llmpost report curves --run npo=out/npo_tofu --keys forget_quality model_utility --plot curves.png
    llmpost eval math --model_name_or_path out/dco_math --data_file ../shared/data/math/math500_test.jsonl \\
        --num_samples 16 --output_dir out/dco_math/eval_math          (flags: llmpost.benchmarks.math.cli)
    llmpost eval verifier --data_file ../shared/data/tinyv/HardVerify-Math.json --output_dir out/verifier_eval

Bad input (a missing model path, split file or retain log, an unknown flag, an output directory that already holds
results) stops with a message naming it and exit status 2, before anything is written. Template strings and stop words
may use the escapes ``\\n`` and ``\\t`` (``--asst_end_tag '\\n\\n'``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from llmpost.benchmarks.args import CliError, add_report_parser
from llmpost.utils import DataError, RetainLogError

# The benchmark packages with ``llmpost eval`` / ``llmpost report`` subcommands, in the order ``--help`` lists them.
BENCHMARKS = ("tofu", "muse", "math", "verifier", "wmdp", "mmlu", "harness")


def build_parser() -> argparse.ArgumentParser:
    """``llmpost COMMAND BENCHMARK ...``: each benchmark's ``cli.register`` adds its ``eval`` and ``report`` parsers."""
    parser = argparse.ArgumentParser(prog="llmpost", description="LLM post-training and unlearning: evaluation tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    evaluate = commands.add_parser("eval", help="Evaluate a model on a benchmark.")
    eval_parsers = evaluate.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    report = commands.add_parser("report", help="Compare evaluated runs.")
    report_parsers = report.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name in BENCHMARKS:
        importlib.import_module(f"llmpost.benchmarks.{name}.cli").register(eval_parsers, report_parsers)
    curves = add_report_parser(
        report_parsers, "curves", help="Evaluation curves of runs that evaluated during training.",
        description="The eval_<key> curves in each run's log_history.json (eval_strategy), the selected step (its "
                    "SELECTION.json) marked with *. --run NAME=OUTPUT_DIR (the training run's directory).",
        summary_file="log_history.json", make_table=_curves_table,
        plot_help="Write the curves (one panel per key) to this image file.")  # fmt: skip
    curves.add_argument("--keys", nargs="+", default=["forget_quality", "model_utility", "forget_Q_A_Prob"],
                        help="Summary keys to show (without eval_); e.g. forget_knowmem_ROUGE for MUSE.")
    return parser


def _curves_table(runs: dict[str, str], ns: argparse.Namespace) -> str:
    from llmpost.report import eval_curves

    try:
        return eval_curves(runs, ns.keys, ns.plot)
    except ValueError as e:
        raise CliError(str(e)) from e


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llmpost`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (CliError, DataError, RetainLogError) as e:
        print(f"llmpost: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
