"""Preference data in TRL's standard format: string columns ``prompt``, ``chosen``, ``rejected`` (one row per pair).

* :func:`load_preference_dataset` reads a local ``.jsonl`` / ``.json`` / ``.parquet`` file, or a hub id through
  ``datasets.load_dataset`` (only when a hub id is given), and checks every row with
  :func:`validate_preference_rows`.
* :func:`train_heldout_split` holds out a fraction of the *prompts*, so that no question lands in both splits;
  :func:`sft_rows_from_pairs` gives one SFT row (the chosen answer) per prompt; :func:`format_for_trl` applies the
  templates for TRL's ``DPOTrainer``.

Pairs built from TOFU's perturbed answers and the recipes' data arguments are in
:mod:`llmpost.benchmarks.preference.data`; the prompt templates and their tokenisation in :mod:`llmpost.data.templates`.
Prompts are the raw questions: chat or "Question: ... Answer:" templates are applied when tokenising. Random choices
are pure functions of ``(seed, text)`` (SHA-256), so they do not depend on row order, on the process, or on which other
rows a file holds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import datasets

from llmpost.data.files import load_jsonl, read_json
from llmpost.data.templates import PreferenceTemplates
from llmpost.utils import DataError

__all__ = ["PREFERENCE_COLUMNS", "check_text", "format_for_trl", "load_preference_dataset", "sft_rows_from_pairs", "stable_hash",
           "train_heldout_split", "validate_preference_rows"]

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def stable_hash(seed: int, text: str) -> int:
    """A 64-bit integer from ``(seed, text)``, the same on every platform and in every process."""
    digest = hashlib.sha256(f"{int(seed)}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def check_text(value, column: str, where: str) -> str:
    if value is None:
        raise DataError(f"{where}: column {column!r} is missing or null")
    if not isinstance(value, str):
        raise DataError(f"{where}: column {column!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: column {column!r} is empty")
    return value


def validate_preference_rows(rows: datasets.Dataset | Iterable[Mapping], source: str) -> None:
    """Check preference rows; raise :class:`~llmpost.utils.DataError` (a ``ValueError``) naming ``source`` and
    the (0-based) row for the first row with a missing column, a null, non-string or whitespace-only ``prompt`` /
    ``chosen`` / ``rejected``, or ``chosen == rejected`` after stripping whitespace. An empty set of rows is an error.
    """
    if isinstance(rows, datasets.Dataset):
        missing = [c for c in PREFERENCE_COLUMNS if c not in rows.column_names]
        if missing:
            raise DataError(f"{source}: row 0: missing column(s) {missing} (columns: {rows.column_names})")
        rows = ({c: v for c, v in zip(PREFERENCE_COLUMNS, values)} for values in
                zip(*(rows[c] for c in PREFERENCE_COLUMNS)))
    count = 0
    for i, row in enumerate(rows):
        count += 1
        where = f"{source}: row {i}"
        if not isinstance(row, Mapping):
            raise DataError(f"{where}: expected a mapping of column names to values, got {type(row).__name__}")
        missing = [c for c in PREFERENCE_COLUMNS if c not in row]
        if missing:
            raise DataError(f"{where}: missing column(s) {missing} (has {sorted(row)})")
        _, chosen, rejected = (check_text(row[c], c, where) for c in PREFERENCE_COLUMNS)
        if chosen.strip() == rejected.strip():
            raise DataError(f"{where}: chosen and rejected are the same text: {chosen.strip()[:60]!r}")
    if count == 0:
        raise DataError(f"{source}: holds no preference rows")


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or text.count("/") > 1 or Path(text).suffix.lower() in LOCAL_SUFFIXES


def load_preference_dataset(path_or_id: str | os.PathLike, split: str = "train", name: str | None = None) -> datasets.Dataset:
    """A validated preference dataset from a local file (``.jsonl``, ``.json`` holding a list of objects, or
    ``.parquet``; ``split`` and ``name`` are then unused) or a hub id (``datasets.load_dataset(path_or_id, name,
    split=split)``; the only case that may reach the network).

    Raises:
        DataError: a missing or unreadable file, an unsupported extension, a hub dataset that cannot be loaded, or a
            row that fails :func:`validate_preference_rows`.
    """
    text = os.fspath(path_or_id)
    path = Path(text).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            ds = load_jsonl(path)
        elif suffix == ".json":
            obj = read_json(path)
            if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
                raise DataError(f"{path}: expected a JSON list of objects with {list(PREFERENCE_COLUMNS)}")
            ds = datasets.Dataset.from_list(obj)
        elif suffix == ".parquet":
            try:
                ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
            except Exception as e:
                raise DataError(f"{path}: could not be read as parquet: {type(e).__name__}: {e}") from e
        else:
            raise DataError(f"{path}: unsupported preference data file type {suffix!r}; use one of {LOCAL_SUFFIXES}")
        source = str(path)
    elif path.exists():
        raise DataError(f"preference data path {text!r} is not a file")
    elif _looks_like_path(text):
        raise DataError(f"preference data file {text!r} does not exist")
    else:
        try:
            ds = datasets.load_dataset(text, name, split=split)
        except Exception as e:
            raise DataError(f"could not load hub dataset {text!r} (split {split!r}): {type(e).__name__}: {e}") from e
        source = f"{text} (split {split})"
    validate_preference_rows(ds, source)
    return ds


def train_heldout_split(
    dataset: datasets.Dataset, heldout_fraction: float, seed: int = 0, group_column: str = "prompt"
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """``(train, heldout)``: ``round(heldout_fraction * n)`` of the ``n`` distinct values of ``group_column`` (at least
    one when the fraction is > 0) go to ``heldout`` with all their rows, the rest to ``train``; rows keep their order.

    The held-out groups are the first in the order of ``sha256(seed, value)``: the split depends only on the seed and
    on the set of values, not on row order. ``heldout_fraction`` must be in [0, 1) and leave a training group.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
    if group_column not in dataset.column_names:
        raise DataError(f"column {group_column!r} not in dataset columns {dataset.column_names}")
    values = dataset[group_column]
    groups = sorted(set(values), key=lambda v: (stable_hash(seed, str(v)), str(v)))
    k = round(heldout_fraction * len(groups))
    if heldout_fraction > 0:
        k = max(k, 1)
    if k >= len(groups):
        raise ValueError(f"heldout_fraction={heldout_fraction} of {len(groups)} distinct {group_column!r} values "
                         "leaves no training group")
    held = set(groups[:k])
    heldout_idx = [i for i, v in enumerate(values) if v in held]
    train_idx = [i for i, v in enumerate(values) if v not in held]
    return dataset.select(train_idx), dataset.select(heldout_idx)


def format_for_trl(dataset: datasets.Dataset, templates: PreferenceTemplates) -> datasets.Dataset:
    """TRL ``DPOTrainer`` rows with the same text llmpost's trainers see: the prompt through ``prompt_template`` and
    each completion with ``completion_prefix`` (TRL appends EOS itself)."""
    def fmt(row):
        return {"prompt": templates.generation_prompt(row["prompt"]), "chosen": templates.completion(row["chosen"]),
                "rejected": templates.completion(row["rejected"])}

    return dataset.map(fmt, desc="Formatting preference pairs")


def sft_rows_from_pairs(pairs: datasets.Dataset) -> datasets.Dataset:
    """SFT rows (``prompt``, ``completion`` = the chosen answer) of preference pairs, one per prompt (first pair)."""
    seen, prompts, completions = set(), [], []
    for p, c in zip(pairs["prompt"], pairs["chosen"]):
        if p not in seen:
            seen.add(p)
            prompts.append(p)
            completions.append(c)
    return datasets.Dataset.from_dict({"prompt": prompts, "completion": completions})
