"""Command-line pieces every benchmark's ``cli.py`` shares: dataclass fields -> argparse flags, the options of every
``llmpost eval`` (:class:`EvalArgs`), their checks, the output-directory guard and model loading."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from llmpost.utils import OutputDirError, atomic_write_text, check_output_dir


class CliError(ValueError):
    """Bad command-line input; the message names the flag or path."""


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "y"):
        return True
    if value in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def unescape_text(text: str) -> str:
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


def add_dataclass_args(parser: argparse.ArgumentParser, cls, required: tuple[str, ...] = (), unescape=()) -> None:
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
            kwargs |= {"type": parse_bool, "nargs": "?", "const": True, "metavar": "{true,false}"}
        elif typing.get_origin(tp) is list:
            kwargs |= {"type": unescape_text if f.name in unescape else str, "nargs": "*"}
        else:
            kwargs["type"] = unescape_text if f.name in unescape else tp
        if f.name in required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            kwargs["help"] += f" (default: {default!r})" if default is not None or optional else ""
        parser.add_argument(f"--{f.name}", **kwargs)


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


def args_from_namespace(cls, ns: argparse.Namespace):
    """An instance of the dataclass ``cls`` from the parsed flags that are its fields (the other flags, e.g. a
    template's, are left for their own dataclass)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(ns).items() if k in names})


def check_dtype(dtype: str) -> None:
    """``--dtype``: one a model can be loaded in."""
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise CliError(f"--dtype must be auto, float32, bfloat16 or float16, got {dtype!r}")


def validate_eval_args(args: EvalArgs, positive: tuple[str, ...]) -> None:
    """The checks every benchmark's options share: ``positive`` ints >= 1, max_examples, dtype, generation_backend
    and data_dir (the last two where the options have them)."""
    for name in positive:
        if getattr(args, name) < 1:
            raise CliError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_examples is not None and args.max_examples < 1:
        raise CliError(f"--max_examples must be >= 1, got {args.max_examples}")
    check_dtype(args.dtype)
    backend = getattr(args, "generation_backend", None)
    if backend is not None and backend not in ("transformers", "vllm"):
        raise CliError(f"--generation_backend must be 'transformers' or 'vllm', got {backend!r}")
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise CliError(f"--data_dir {data_dir!r} is not a directory")


def check_results_dir(args: EvalArgs, benchmark: str, markers: tuple[str, ...]) -> None:
    """Refuse an ``--output_dir`` that already holds this benchmark's result files, unless ``--overwrite_output_dir``."""
    try:
        check_output_dir(args.output_dir, args.overwrite_output_dir, markers=markers)
    except OutputDirError as e:
        raise CliError(
            f"--output_dir {args.output_dir!r} already holds {benchmark} results; choose another --output_dir or pass "
            "--overwrite_output_dir true"
        ) from e


def check_model_flag(path: str, flag: str) -> str:
    """:func:`llmpost.models.check_model_path` for the command line: a bad path is a :class:`CliError` naming ``--flag``."""
    from llmpost.models import ModelPathError, check_model_path

    try:
        return check_model_path(path, f"--{flag}")
    except ModelPathError as e:
        raise CliError(str(e)) from e


def check_mia_reference(args: EvalArgs) -> None:
    """``--mia_reference_model_path`` (where the options have it): a model path whose tokenizer is the evaluated
    model's (:func:`llmpost.eval.mia_passes.check_reference_tokenizer`); checked before the model is loaded."""
    path = getattr(args, "mia_reference_model_path", None)
    if not path:
        return
    from llmpost.eval.mia_passes import ReferenceModelError, check_reference_tokenizer
    from llmpost.models import load_tokenizer

    path = check_model_flag(path, "mia_reference_model_path")
    tok_path = check_model_flag(args.tokenizer_name_or_path or args.model_name_or_path,
                                "tokenizer_name_or_path" if args.tokenizer_name_or_path else "model_name_or_path")  # fmt: skip
    try:
        check_reference_tokenizer(load_tokenizer(tok_path, trust_remote_code=args.trust_remote_code), path,
                                  trust_remote_code=args.trust_remote_code)  # fmt: skip
    except (OSError, ValueError) as e:
        raise CliError(f"--{e}" if isinstance(e, ReferenceModelError) else str(e)) from e


def load_model_and_tokenizer(args: EvalArgs):
    """The model to evaluate (full weights or a PEFT adapter, not merged) on ``--device``, and its tokenizer; a path
    that does not exist or does not load is a :class:`CliError` naming the flag."""
    import torch

    from llmpost.models import load_saved_model, load_tokenizer

    model_path = check_model_flag(args.model_name_or_path, "model_name_or_path")
    tok_path = model_path
    if args.tokenizer_name_or_path:
        tok_path = check_model_flag(args.tokenizer_name_or_path, "tokenizer_name_or_path")
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


def parse_runs(specs: list[str]) -> dict[str, str]:
    """``--run NAME=EVAL_DIR`` values -> ``{name: eval_dir}`` in order; a malformed one is a :class:`CliError`."""
    runs = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise CliError(f"--run expects NAME=EVAL_DIR, got {spec!r}")
        runs[name] = path
    return runs


def add_report_parser(report_parsers, name: str, *, help: str, description: str, summary_file: str, make_table,
                      plot_help: str | None = None) -> argparse.ArgumentParser:
    """Add ``llmpost report <name>``: ``--run NAME=EVAL_DIR`` (repeated, in order), ``--output`` and, with
    ``plot_help``, ``--plot``. ``make_table(runs, ns)`` returns the table text (``runs``: name -> directory); a
    missing ``summary_file`` is reported as a :class:`CliError`. Returns the parser, for a benchmark's own flags."""
    parser = report_parsers.add_parser(name, help=help, description=description)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=EVAL_DIR",
                        help=f"A run: its name and the directory holding its {summary_file} (repeat, in order).")
    if plot_help:
        parser.add_argument("--plot", default=None, help=plot_help)
    parser.add_argument("--output", default=None, help="Also write the table to this text file.")
    parser.set_defaults(func=functools.partial(run_report, make_table=make_table))
    return parser


def run_report(ns: argparse.Namespace, make_table) -> int:
    """Print the table of ``llmpost report <name>`` (and where its plot went); also write it to ``--output``."""
    try:
        table = make_table(parse_runs(ns.run), ns)
    except FileNotFoundError as e:
        raise CliError(str(e)) from e
    print(table)
    if getattr(ns, "plot", None):
        print(f"\nPlot: {ns.plot}")
    if ns.output:
        atomic_write_text(ns.output, table + "\n")
    return 0
