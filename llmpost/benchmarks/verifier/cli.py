"""``llmpost eval verifier`` and ``llmpost report verifier`` (registered by :func:`llmpost.cli.build_parser`).

Examples::

    llmpost eval verifier --data_file ../shared/data/tinyv/HardVerify-Math.json --output_dir out/verifier_eval
    llmpost eval verifier --data_file ../shared/data/tinyv/HardVerify-Math.json --verifiers \\
        --llm_verifier_model zhangchenxu/TinyV-1.5B --output_dir out/verifier_eval_tinyv          # GPU, vLLM
    llmpost report verifier --run cpu=out/verifier_eval --run tinyv=out/verifier_eval_tinyv
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from llmpost.benchmarks.args import (
    CliError,
    add_dataclass_args,
    args_from_namespace,
    check_dtype,
    check_model_flag,
    check_results_dir,
    parse_runs,
)

RULE_VERIFIERS = ("rule_based", "math_verify")


@dataclass
class VerifierEvalArgs:
    """Options of ``llmpost eval verifier``."""

    data_file: str = field(default="", metadata={"help": "HardVerify-Math.json (TinyV's benchmark)."})
    output_dir: str = field(default="", metadata={"help": "Where VERIFIER_EVAL.json and VERIFIER_SUMMARY.json go."})
    verifiers: list[str] = field(default_factory=lambda: list(RULE_VERIFIERS),
                                 metadata={"help": "Rule verifiers to measure: rule_based, math_verify (none: "
                                                   "only the LLM verifier)."})  # fmt: skip
    llm_verifier_model: str | None = field(default=None, metadata={"help": "Also measure this LLM verifier (a "
                                                                   "path or hub id, e.g. zhangchenxu/TinyV-1.5B)."})
    llm_verifier_prompts: str | None = field(default=None, metadata={"help": "A tinyv_config.json of prompt templates "
                                                                     "(default: the built-in TinyV-1.5B one)."})
    llm_verifier_prompt_key: str | None = field(default=None, metadata={"help": "Its entry to use (default: the "
                                                                        "model's id, else TinyV-1.5B)."})
    llm_backend: str = field(default="auto", metadata={"help": "auto (vLLM if installed and on GPU), transformers, "
                                                       "vllm."})
    llm_batch_size: int = field(default=32, metadata={"help": "LLM verifier generation batch size."})
    llm_timeout: float = field(default=600.0, metadata={"help": "Seconds per chunk of 64 answers; then unanswered "
                                                        "ones count as not accepted."})
    dtype: str = field(default="auto", metadata={"help": "LLM verifier dtype: auto, float32, bfloat16, float16."})
    device: str | None = field(default=None, metadata={"help": "LLM verifier device; default: cuda if available."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the verifier's repository."})
    grading_timeout: float = field(default=5.0, metadata={"help": "Seconds per math-verify call (then: rejected)."})
    grading_workers: int | None = field(default=None, metadata={"help": "math-verify worker processes (default: "
                                                                "min(4, CPUs))."})
    max_examples: int | None = field(default=None, metadata={"help": "Only the first items (a quick check)."})
    bootstrap_resamples: int = field(default=1000, metadata={"help": "Bootstrap resamples of each interval."})
    seed: int = field(default=0, metadata={"help": "Bootstrap seed."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace results already in output_dir."})


def _validate(args: VerifierEvalArgs) -> None:
    if not args.data_file:
        raise CliError("--data_file is required (HardVerify-Math.json)")
    unknown = [v for v in args.verifiers if v not in RULE_VERIFIERS]
    if unknown:
        raise CliError(f"--verifiers: {unknown} not among {list(RULE_VERIFIERS)} (the LLM verifier: "
                       "--llm_verifier_model)")  # fmt: skip
    if not args.verifiers and not args.llm_verifier_model:
        raise CliError("nothing to measure: give --verifiers and/or --llm_verifier_model")
    for name in ("llm_batch_size", "bootstrap_resamples"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("max_examples", "grading_workers"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CliError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("llm_timeout", "grading_timeout"):
        if not getattr(args, name) > 0:
            raise CliError(f"--{name} must be > 0 seconds, got {getattr(args, name)}")
    if args.llm_backend not in ("auto", "transformers", "vllm"):
        raise CliError(f"--llm_backend must be auto, transformers or vllm, got {args.llm_backend!r}")
    check_dtype(args.dtype)
    if args.llm_verifier_model:
        check_model_flag(args.llm_verifier_model, "llm_verifier_model")
    if args.llm_verifier_prompts and not Path(args.llm_verifier_prompts).is_file():
        raise CliError(f"--llm_verifier_prompts {args.llm_verifier_prompts!r} does not exist")


def run_eval_verifier(ns: argparse.Namespace) -> int:
    """``llmpost eval verifier``: check the inputs, judge every answer with every verifier, write, print the table."""
    from llmpost.benchmarks.verifier.data import load_hardverify
    from llmpost.benchmarks.verifier.evaluate import (
        EVAL_FILE,
        SUMMARY_FILE,
        evaluate_verifiers,
        format_summary,
        llm_judge,
        math_verify_judge,
        rule_based_judge,
    )

    args = args_from_namespace(VerifierEvalArgs, ns)
    _validate(args)
    check_results_dir(args, "verifier", (EVAL_FILE, SUMMARY_FILE))
    items = load_hardverify(args.data_file)  # a bad file stops before the (slow) verifier load
    if args.max_examples is not None:
        items = items[: args.max_examples]
    judges = {}
    if "rule_based" in args.verifiers:
        judges["rule_based"] = rule_based_judge()
    if "math_verify" in args.verifiers:
        judges["math_verify"] = math_verify_judge(args.grading_timeout, args.grading_workers)
    settings = {"data_file": args.data_file, "completion_format": "\\boxed{answer} (rule_based, math_verify)",
                "grading_timeout": args.grading_timeout}  # fmt: skip
    if args.llm_verifier_model:
        from llmpost.rewards.llm_verifier import LLMVerifier

        try:
            verifier = LLMVerifier.from_pretrained(
                args.llm_verifier_model, prompts_file=args.llm_verifier_prompts,
                prompt_key=args.llm_verifier_prompt_key, backend=args.llm_backend, dtype=args.dtype,
                device=args.device, trust_remote_code=args.trust_remote_code, batch_size=args.llm_batch_size,
                timeout=args.llm_timeout,
            )  # fmt: skip
        except (OSError, ValueError) as e:
            raise CliError(f"could not load the LLM verifier --llm_verifier_model {args.llm_verifier_model!r}: "
                           f"{e}") from e  # fmt: skip
        judges["llm"] = llm_judge(verifier)
        settings["llm"] = {"model": args.llm_verifier_model, "backend": verifier.backend,
                           "chat_template": verifier.use_chat_template, "timeout": args.llm_timeout,
                           "max_new_tokens": verifier.prompt.max_completion_tokens,
                           "template": verifier.prompt.template}  # fmt: skip
    summary = evaluate_verifiers(items, judges, args.output_dir, n_resamples=args.bootstrap_resamples,
                                 seed=args.seed, settings=settings)  # fmt: skip
    print(format_summary(summary))
    print(f"\nResults: {Path(args.output_dir) / EVAL_FILE}, {Path(args.output_dir) / SUMMARY_FILE}")
    return 0


def run_report_verifier(ns: argparse.Namespace) -> int:
    """``llmpost report verifier``: one table of the rates of several evaluated runs."""
    from llmpost.benchmarks.verifier.report import verifier_report
    from llmpost.utils import atomic_write_text

    try:
        table = verifier_report(parse_runs(ns.run))
    except FileNotFoundError as e:
        raise CliError(str(e)) from e
    print(table)
    if ns.output:
        atomic_write_text(ns.output, table + "\n")
    return 0


def register(benchmarks, report_benchmarks) -> None:
    """Register ``llmpost eval verifier`` and ``llmpost report verifier``."""
    parser = benchmarks.add_parser(
        "verifier", help="HardVerify-Math: false-negative / false-positive rates of the verifiers.",
        description="Judge HardVerify-Math's correct (fn_output) and incorrect (tn_output) answers with the rule-based "
        "checker, math-verify and, with --llm_verifier_model, an LLM verifier (TinyV's prompt); write "
        "VERIFIER_EVAL.json and VERIFIER_SUMMARY.json (rates with bootstrap intervals, per split) into --output_dir.",
    )  # fmt: skip
    add_dataclass_args(parser, VerifierEvalArgs, required=("data_file", "output_dir"))
    parser.set_defaults(func=run_eval_verifier)
    report = report_benchmarks.add_parser(
        "verifier", help="Table of verifier-noise runs.",
        description="Print each run's false-negative and false-positive rates per verifier and split.",
    )
    report.add_argument("--run", action="append", required=True, metavar="NAME=EVAL_DIR",
                        help="A run: its name and the directory holding its VERIFIER_SUMMARY.json (repeat, in order).")
    report.add_argument("--output", default=None, help="Also write the table to this text file.")
    report.set_defaults(func=run_report_verifier)
