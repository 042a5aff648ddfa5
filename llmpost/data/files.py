"""Reading local data files (JSON lines and JSON) with errors that name the file and the line.

Every benchmark loader (TOFU, MUSE, MATH) reads its local files through these two functions, so a malformed file is
always reported the same way: one :class:`DataError` naming the file, the line (and column) and what was found, which
the recipes and the CLI turn into one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets

from llmpost.utils import DataError


def _jsonl_objects(path: Path):
    """``(line number, object or error description)`` for each non-blank line of a JSON-lines file."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, f"line {lineno}: not UTF-8 ({e.reason} at byte {e.start})"
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                shown = line.strip()
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                yield lineno, f"line {lineno}, column {e.colno}: not valid JSON ({e.msg}): {shown!r}"
                continue
            if not isinstance(obj, dict):
                yield lineno, f"line {lineno}: expected a JSON object, got {type(obj).__name__}"
                continue
            yield lineno, obj


def _first_bad_jsonl_line(path: Path) -> str | None:
    """Describe the first line of a JSON-lines file that is not one JSON object, or None if every line is."""
    return next((obj for _, obj in _jsonl_objects(path) if isinstance(obj, str)), None)


def iter_jsonl(path: str | Path):
    """``(line number, dict)`` for each line of a JSON-lines file, parsed by ``json`` as written (no type inference
    across lines, unlike ``datasets``); a malformed line raises :class:`DataError` naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    for lineno, obj in _jsonl_objects(path):
        if isinstance(obj, str):
            raise DataError(f"{path}: {obj}")
        yield lineno, obj


def load_jsonl(path: str | Path, cache_dir: str | None = None) -> datasets.Dataset:
    """A JSON-lines file as a ``datasets.Dataset`` (one object per line, read and cached by ``datasets``, in
    ``cache_dir`` when given).

    A malformed line raises :class:`DataError` naming the file and the line number, instead of the generic
    ``DatasetGenerationError`` that ``datasets`` raises.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    try:
        return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache_dir)
    except Exception as e:  # datasets wraps the parser's error; find the line ourselves
        bad = _first_bad_jsonl_line(path)
        if bad is None:
            raise DataError(f"{path}: could not be read as JSON lines: {type(e).__name__}: {e}") from e
        raise DataError(f"{path}: {bad}") from None


def read_json(path: str | Path):
    """Parse a JSON file (not JSON lines); a syntax error raises :class:`DataError` with the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})") from None
