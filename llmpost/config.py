"""YAML recipe files + CLI overrides -> typed dataclasses, with errors that name the key and the file.

``parse_config((ModelConfig, TofuArguments, UnlearnConfig), argv)`` reads ``--config FILE.yaml`` (values only, one
flat mapping of field names, optionally a variant of another file through ``base:``, see :func:`load_yaml`), checks every key exists in one of the dataclasses and has the field's type, then lets
command-line flags (``--beta 0.2``) override the file, as TRL's ``TrlParser`` does. Range checks live in each
dataclass's ``__post_init__`` and are reported with the file name too.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import sys
import types
import typing
from pathlib import Path

import yaml
from transformers import HfArgumentParser


class ConfigError(ValueError):
    """Invalid configuration: the message names the key, the file and what was expected."""


def load_yaml(path: str) -> dict:
    """The flat mapping of a YAML config file.

    ``base: other.yaml`` (a path relative to this file's folder) makes the file a variant of another: the base's
    mapping (itself possibly based on a third) is read first and this file's keys override it, so a family of configs
    that differ in a few keys (e.g. the noisy-GRPO correction modes) states each difference once. A cycle of bases,
    a missing base or a ``base`` that is not a string is a :class:`ConfigError` naming the files.
    """
    return _load_chain(path, ())[0]


def _load_chain(path: str, seen: tuple[Path, ...]) -> tuple[dict, dict[str, str]]:
    """``load_yaml``'s mapping and, for each key, the file of the chain of bases it came from."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at top level, got {type(data).__name__}")
    origin = dict.fromkeys(data, str(path))
    if "base" not in data:
        return data, origin
    base = data.pop("base")
    del origin["base"]
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: key 'base' expects the path of another YAML config, got {base!r}")
    seen = (*seen, p.resolve())
    base_path = p.parent / base
    if base_path.resolve() in seen:
        raise ConfigError(f"{path}: 'base: {base}' makes a cycle: {' -> '.join(str(s) for s in (*seen, base_path))}")
    if not base_path.is_file():
        raise ConfigError(f"{path}: base config {str(base_path)!r} does not exist")
    base_data, base_origin = _load_chain(str(base_path), seen)
    return {**base_data, **data}, {**base_origin, **origin}


def _type_ok(value, tp) -> bool:
    """Whether a YAML value fits a dataclass field type (permissive for types we cannot check)."""
    origin = typing.get_origin(tp)
    if tp is typing.Any or isinstance(tp, typing.TypeVar):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return value in {m.value for m in tp} or isinstance(value, tp)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple) or tp in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True


def _describe(tp) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return f"one of {[m.value for m in tp]}"
    if typing.get_origin(tp) is typing.Literal:
        return f"one of {list(typing.get_args(tp))}"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _fields(dataclass_types) -> dict[str, tuple[type, object]]:
    out = {}
    for dc in dataclass_types:
        hints = typing.get_type_hints(dc)
        for f in dataclasses.fields(dc):
            if f.init:
                out[f.name] = (dc, hints.get(f.name, f.type))
    return out


def validate_mapping(data: dict, dataclass_types, source: str, origin: dict[str, str] | None = None) -> None:
    """Raise :class:`ConfigError` for the first unknown key or wrongly typed value in ``data``; the message names
    ``origin[key]`` (the file a key came from, see ``base:``) or else ``source``."""
    fields = _fields(dataclass_types)
    origin = origin or {}
    for key, value in data.items():
        where = origin.get(key, source)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=3)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        dc, tp = fields[key]
        if not _type_ok(value, tp):
            raise ConfigError(f"{where}: key {key!r} expects {_describe(tp)}, got {value!r} ({type(value).__name__})")


def parse_config(dataclass_types, argv: list[str] | None = None):
    """Parse ``--config FILE`` plus CLI flags into one instance of each dataclass (in order)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    source, data = "command line", {}
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a YAML file path")
        source = argv[i + 1]
        data, origin = _load_chain(source, ())
        del argv[i : i + 2]
        validate_mapping(data, dataclass_types, source, origin)
    parser = HfArgumentParser(dataclass_types)
    # YAML values become parser defaults, so that explicit flags win; enums stay as their string values.
    parser.set_defaults(**{k: (v.value if isinstance(v, enum.Enum) else v) for k, v in data.items()})
    try:
        return parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=False)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{_blame(str(e), argv, data, source)}: {e}") from None


def _blame(message: str, argv: list[str], data: dict, source: str) -> str:
    """Where a value that failed a range check came from: the command line or the YAML file.

    The dataclasses' checks start their messages with the key (``"beta: must be > 0"``); a flag on the command line
    overrides the file, so it is blamed first.
    """
    key = message.split(":", 1)[0].strip()
    flags = {a.split("=", 1)[0][2:].replace("-", "_") for a in argv if a.startswith("--")}
    if key in flags:
        return f"command line (--{key})"
    if key in data:
        return source
    return f"{source} with command-line overrides {sorted(flags)}" if flags and data else source


def check_launch(args) -> None:
    """Catch launch settings that would silently do something else than asked.

    ``use_cpu: true`` (as in the tiny CPU configs) makes accelerate drop DeepSpeed while transformers still shards the
    model at load time, which ends in an obscure shape error; on CPU, DeepSpeed also needs the gloo backend.
    """
    import os

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        if getattr(args, "use_cpu", False):
            raise ConfigError(
                "use_cpu: true disables DeepSpeed, but this run was launched with a DeepSpeed accelerate config; "
                "for DeepSpeed on CPU pass --use_cpu false --ddp_backend gloo"
            )


def setup_logging() -> None:
    """Show llmpost's own INFO lines (data statistics, generation rounds, evaluation progress) on stderr, unless the
    application configured logging itself; other libraries' loggers are left as they are."""
    import logging

    log = logging.getLogger("llmpost")
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def run_main(main, argv=None) -> None:
    """Run a recipe's ``main``; turn user errors into one clear line on stderr and exit status 2."""
    from llmpost.utils import DataError, OutputDirError

    setup_logging()

    try:
        main(argv)
    except (ConfigError, DataError, OutputDirError, FileNotFoundError) as e:  # ModelPathError is a FileNotFoundError
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
