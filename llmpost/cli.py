"""The ``llmpost`` command: ``llmpost eval {tofu,muse,math} ...`` and ``llmpost report {tofu,muse,math} ...``.

Example (offline, base-model template)::

    llmpost eval tofu --model_name_or_path out/npo_tofu --data_dir ../shared/data/tofu --forget_split forget10 \\
        --retain_logs_path retain90/TOFU_EVAL.json --output_dir out/npo_tofu/eval
    llmpost eval muse --model_name_or_path out/npo_muse --data_dir ../shared/data/muse_news \\
        --output_dir out/npo_muse/eval
    llmpost report muse --run target=out/target/eval --run npo=out/npo_muse/eval
    llmpost eval math --model_name_or_path out/dco_math --data_file ../shared/data/math/math500_test.jsonl \\
        --num_samples 16 --output_dir out/dco_math/eval_math          (flags: llmpost.eval.math_cli)

Bad input (a missing model path, split file or retain log, an unknown flag, an output directory that already holds
results) stops with a message naming it and exit status 2, before anything is written. Template strings and stop words
may use the escapes ``\\n`` and ``\\t`` (``--asst_end_tag '\\n\\n'``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .data.files import DataError
from .data.tofu import TemplateArgs
from .utils import OutputDirError, check_output_dir

logger = logging.getLogger("llmpost")


class CliError(ValueError):
    """Bad command-line input; the message names the flag or path."""


# ----------------------------------------------------------------------------------------------------------------------
# Dataclass -> argparse


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "y"):
        return True
    if value in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _unescape(text: str) -> str:
    r"""Interpret ``\n``, ``\t`` and ``\\`` (shells pass them literally); other characters are kept as they are."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _add_dataclass_args(parser: argparse.ArgumentParser, cls, required: tuple[str, ...] = (), unescape=()) -> None:
    """One ``--name`` flag per field of dataclass ``cls`` (str, int, bool, optional and list-of-str fields)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = hints[f.name], False
        if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp, optional = args[0], True
        kwargs: dict = {"help": f.metadata.get("help", ""), "dest": f.name}
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        if tp is bool:
            kwargs |= {"type": _parse_bool, "nargs": "?", "const": True, "metavar": "{true,false}"}
        elif typing.get_origin(tp) is list:
            kwargs |= {"type": _unescape if f.name in unescape else str, "nargs": "*"}
        else:
            kwargs["type"] = _unescape if f.name in unescape else tp
        if f.name in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            kwargs["help"] += f" (default: {default!r})" if default is not None or optional else ""
        parser.add_argument(f"--{f.name}", **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# llmpost eval tofu


@dataclass
class EvalArgs:
    """Options every ``llmpost eval <benchmark>`` shares: the model, the output directory, a quick-check row limit."""

    model_name_or_path: str = field(default="", metadata={"help": "Model directory (or a PEFT adapter) or hub id."})
    output_dir: str = field(default="", metadata={"help": "Where <BENCHMARK>_EVAL.json and _SUMMARY.json are written."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Tokenizer; default: the model's."})
    dtype: str = field(default="auto", metadata={"help": "Model dtype: auto, float32, bfloat16, float16."})
    device: str | None = field(default=None, metadata={"help": "Device; default: cuda if available, else cpu."})
    max_examples: int | None = field(default=None, metadata={"help": "Only the first rows per split."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow code from the model repository."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace results already in output_dir."})


def _validate_eval_args(args: EvalArgs, positive: tuple[str, ...]) -> None:
    """The checks every benchmark's options share: ``positive`` ints >= 1, max_examples, dtype, data_dir."""
    for name in positive:
        if getattr(args, name) < 1:
            raise CliError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_examples is not None and args.max_examples < 1:
        raise CliError(f"--max_examples must be >= 1, got {args.max_examples}")
    if args.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise CliError(f"--dtype must be auto, float32, bfloat16 or float16, got {args.dtype!r}")
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise CliError(f"--data_dir {data_dir!r} is not a directory")


def _check_results_dir(args: EvalArgs, benchmark: str, markers: tuple[str, ...]) -> None:
    """Refuse an ``--output_dir`` that already holds this benchmark's result files, unless ``--overwrite_output_dir``."""
    try:
        check_output_dir(args.output_dir, args.overwrite_output_dir, markers=markers)
    except OutputDirError as e:
        raise CliError(
            f"--output_dir {args.output_dir!r} already holds {benchmark} results; choose another --output_dir or pass "
            "--overwrite_output_dir true"
        ) from e


@dataclass
class TofuEvalArgs(EvalArgs):
    """Options of ``llmpost eval tofu`` (the template flags come from :class:`llmpost.data.tofu.TemplateArgs`)."""

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


def _check_model_path(path: str, flag: str) -> str:
    from .models import ModelPathError, check_model_path

    try:
        return check_model_path(path, f"--{flag}")
    except ModelPathError as e:
        raise CliError(str(e)) from e


def _load_model_and_tokenizer(args: EvalArgs):
    import torch

    from .models import load_saved_model, load_tokenizer

    model_path = _check_model_path(args.model_name_or_path, "model_name_or_path")
    tok_path = model_path
    if args.tokenizer_name_or_path:
        tok_path = _check_model_path(args.tokenizer_name_or_path, "tokenizer_name_or_path")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        tokenizer = load_tokenizer(tok_path, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as e:
        raise CliError(f"could not load a tokenizer from {tok_path!r} (see --tokenizer_name_or_path): {e}") from e
    try:
        model = load_saved_model(model_path, args.dtype, args.trust_remote_code, merge=False)
    except (OSError, ValueError) as e:
        raise CliError(f"could not load a model from --model_name_or_path {model_path!r}: {e}") from e
    return model.to(device), tokenizer


def _validate_tofu_args(args: TofuEvalArgs) -> None:
    _validate_eval_args(args, ("batch_size", "max_length", "max_new_tokens"))
    if args.generation_backend not in ("transformers", "vllm"):
        raise CliError(f"--generation_backend must be 'transformers' or 'vllm', got {args.generation_backend!r}")


def run_eval_tofu(ns: argparse.Namespace) -> int:
    """``llmpost eval tofu``: check every input, load, evaluate, write the two result files, print the summary."""
    from .eval.tofu import (
        EVAL_FILE,
        SUMMARY_FILE,
        evaluate_tofu,
        format_summary,
        load_retain_logs,
        load_tofu_eval_splits,
    )

    names = {f.name for f in dataclasses.fields(TofuEvalArgs)}
    args = TofuEvalArgs(**{k: v for k, v in vars(ns).items() if k in names})
    template = TemplateArgs(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(TemplateArgs)})
    _validate_tofu_args(args)
    _check_results_dir(args, "TOFU", (EVAL_FILE, SUMMARY_FILE))
    # Fail on missing data or a bad retain log before the (slow) model load.
    load_tofu_eval_splits(args.data_dir, args.forget_split, args.holdout_split, args.max_examples)
    if args.retain_logs_path:
        load_retain_logs(args.retain_logs_path)
    model, tokenizer = _load_model_and_tokenizer(args)
    vllm_model = args.model_name_or_path if args.generation_backend == "vllm" else None
    summary = evaluate_tofu(
        model, tokenizer, data_dir=args.data_dir, forget_split=args.forget_split, holdout_split=args.holdout_split,
        template=template, batch_size=args.batch_size, max_length=args.max_length, max_new_tokens=args.max_new_tokens,
        retain_logs_path=args.retain_logs_path, output_dir=args.output_dir, compute_generation=args.compute_generation,
        stopwords=args.stopwords, generation_backend=args.generation_backend, vllm_model=vllm_model,
        max_examples=args.max_examples,
    )  # fmt: skip
    print(format_summary(summary))
    print(f"\nResults: {Path(args.output_dir) / EVAL_FILE}, {Path(args.output_dir) / SUMMARY_FILE}")
    return 0


def run_report_tofu(ns: argparse.Namespace) -> int:
    """``llmpost report tofu``: a table of several evaluated runs and a forget-quality vs model-utility plot."""
    from .report import tofu_report
    from .utils import atomic_write_text

    try:
        table = tofu_report(_parse_runs(ns.run), ns.retain_logs_path, ns.plot)
    except FileNotFoundError as e:
        raise CliError(str(e)) from e
    print(table)
    if ns.plot:
        print(f"\nPlot: {ns.plot}")
    if ns.output:
        atomic_write_text(ns.output, table + "\n")
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# llmpost eval muse / report muse


@dataclass
class MuseEvalArgs(EvalArgs):
    """Options of ``llmpost eval muse`` (defaults: the MUSE benchmark's, see :mod:`llmpost.eval.muse`)."""

    data_dir: str | None = field(default=None, metadata={"help": "MUSE-News directory; unset: the hub's."})
    protocol: str = field(default="muse", metadata={"help": "muse (the benchmark's code) or open_unlearning."})
    reference_auc: float | None = field(default=None, metadata={"help": "Retrained model's AUC (muse: 0.4772)."})
    retain_logs_path: str | None = field(default=None, metadata={"help": "Retrained model's MUSE_EVAL.json."})
    batch_size: int = field(default=8, metadata={"help": "Batch size of generation and scoring."})
    verbmem_max_new_tokens: int = field(default=128, metadata={"help": "VerbMem generation length (MUSE: 128)."})
    knowmem_max_new_tokens: int = field(default=32, metadata={"help": "KnowMem generation length (MUSE: 32)."})


def _validate_muse_args(args: MuseEvalArgs) -> None:
    from .data.muse import MuseProtocol

    _validate_eval_args(args, ("batch_size", "verbmem_max_new_tokens", "knowmem_max_new_tokens"))
    if args.protocol not in {p.value for p in MuseProtocol}:
        raise CliError(f"--protocol must be one of {[p.value for p in MuseProtocol]}, got {args.protocol!r}")
    if args.reference_auc is not None and args.retain_logs_path:
        raise CliError("give --reference_auc or --retain_logs_path, not both")
    if args.reference_auc is not None and not 0 < args.reference_auc < 1:
        raise CliError(f"--reference_auc must be strictly between 0 and 1, got {args.reference_auc}")


def run_eval_muse(ns: argparse.Namespace) -> int:
    """``llmpost eval muse``: check every input, load, evaluate, write the two result files, print the summary."""
    from .eval.muse import EVAL_FILE, SUMMARY_FILE, evaluate_muse, load_muse_eval_splits, resolve_reference_auc
    from .report import format_table

    names = {f.name for f in dataclasses.fields(MuseEvalArgs)}
    args = MuseEvalArgs(**{k: v for k, v in vars(ns).items() if k in names})
    _validate_muse_args(args)
    _check_results_dir(args, "MUSE", (EVAL_FILE, SUMMARY_FILE))
    # Fail on missing data or a bad retain log before the (slow) model load.
    load_muse_eval_splits(args.data_dir, args.max_examples)
    resolve_reference_auc(args.protocol, args.reference_auc, args.retain_logs_path)
    model, tokenizer = _load_model_and_tokenizer(args)
    summary = evaluate_muse(
        model, tokenizer, data_dir=args.data_dir, batch_size=args.batch_size, protocol=args.protocol,
        reference_auc=args.reference_auc, retain_logs_path=args.retain_logs_path, output_dir=args.output_dir,
        max_examples=args.max_examples, verbmem_max_new_tokens=args.verbmem_max_new_tokens,
        knowmem_max_new_tokens=args.knowmem_max_new_tokens,
    )  # fmt: skip
    print(format_table({"value": summary}, tuple(summary)))
    print(f"\nResults: {Path(args.output_dir) / EVAL_FILE}, {Path(args.output_dir) / SUMMARY_FILE}")
    return 0


def _parse_runs(specs: list[str]) -> dict[str, str]:
    runs = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise CliError(f"--run expects NAME=EVAL_DIR, got {spec!r}")
        runs[name] = path
    return runs


def run_report_muse(ns: argparse.Namespace) -> int:
    """``llmpost report muse``: a table of several evaluated runs (rows: the MUSE summary keys)."""
    from .report import muse_report
    from .utils import atomic_write_text

    try:
        table = muse_report(_parse_runs(ns.run))
    except FileNotFoundError as e:
        raise CliError(str(e)) from e
    print(table)
    if ns.output:
        atomic_write_text(ns.output, table + "\n")
    return 0


# ----------------------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """``llmpost COMMAND ...``; ``eval`` has one sub-command per benchmark."""
    parser = argparse.ArgumentParser(prog="llmpost", description="LLM post-training and unlearning: evaluation tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    evaluate = commands.add_parser("eval", help="Evaluate a model on a benchmark.")
    benchmarks = evaluate.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    tofu = benchmarks.add_parser(
        "tofu",
        help="TOFU (open-unlearning metrics and result files).",
        description="Evaluate a model on TOFU; writes TOFU_EVAL.json and TOFU_SUMMARY.json into --output_dir.",
    )
    _add_dataclass_args(tofu, TofuEvalArgs, required=("model_name_or_path", "output_dir"), unescape=("stopwords",))
    template_flags = tuple(f.name for f in dataclasses.fields(TemplateArgs) if f.name != "apply_chat_template")
    _add_dataclass_args(tofu.add_argument_group("prompt template"), TemplateArgs, unescape=template_flags)
    tofu.set_defaults(func=run_eval_tofu)

    report = commands.add_parser("report", help="Compare evaluated runs.")
    report_benchmarks = report.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    rtofu = report_benchmarks.add_parser(
        "tofu", help="Table and plot of TOFU runs.",
        description="Print forget_quality, model_utility, forget/retain probabilities and truth ratio per run; "
        "fill in forget_quality from --retain_logs_path where a run lacks it; plot forget quality vs model utility.",
    )
    rtofu.add_argument("--run", action="append", required=True, metavar="NAME=EVAL_DIR",
                       help="A run: its name and the directory holding its TOFU_SUMMARY.json (repeat, in order).")
    rtofu.add_argument("--retain_logs_path", default=None, help="The retain model's TOFU_EVAL.json.")
    rtofu.add_argument("--plot", default=None, help="Write a PNG of forget quality vs model utility here.")
    rtofu.add_argument("--output", default=None, help="Also write the table to this text file.")
    rtofu.set_defaults(func=run_report_tofu)

    muse = benchmarks.add_parser(
        "muse",
        help="MUSE-News (the benchmark's metrics, or open-unlearning's port).",
        description="Evaluate a model on MUSE-News; writes MUSE_EVAL.json and MUSE_SUMMARY.json into --output_dir.",
    )
    _add_dataclass_args(muse, MuseEvalArgs, required=("model_name_or_path", "output_dir"))
    muse.set_defaults(func=run_eval_muse)
    rmuse = report_benchmarks.add_parser(
        "muse", help="Table of MUSE runs.",
        description="Print the VerbMem / KnowMem ROUGE, privleak and its AUC of each run.",
    )
    rmuse.add_argument("--run", action="append", required=True, metavar="NAME=EVAL_DIR",
                       help="A run: its name and the directory holding its MUSE_SUMMARY.json (repeat, in order).")
    rmuse.add_argument("--output", default=None, help="Also write the table to this text file.")
    rmuse.set_defaults(func=run_report_muse)

    from .eval.math_cli import add_math_parsers  # each benchmark's flags live with its eval module

    add_math_parsers(benchmarks, report_benchmarks)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``llmpost`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .eval.tofu import RetainLogError

    try:
        return args.func(args)
    except (CliError, DataError, RetainLogError) as e:
        print(f"llmpost: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
