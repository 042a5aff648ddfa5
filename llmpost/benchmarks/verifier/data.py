"""HardVerify-Math (TinyV, Xu et al., arXiv 2505.14625; ``benchmarks/HardVerify-Math.json`` of uw-nsl/TinyV): 250
questions, each with a correct model answer that rule-based checkers reject (``fn_output``, a real false negative)
and an incorrect one (``tn_output``). The local copy is ``../shared/data/tinyv/HardVerify-Math.json``: one JSON list of
items ``{id, split, source, question, ground_truth, fn_output, tn_output, metadata}``; ``split`` is ``benchmarks``
(125 items from Olympiad and MATH-style benchmarks) or ``big_math`` (125 from Big-Math).
"""

from __future__ import annotations

from pathlib import Path

from llmpost.data.files import read_json
from llmpost.utils import DataError

TEXT_FIELDS = ("split", "question", "ground_truth", "fn_output", "tn_output")
REQUIRED_FIELDS = ("id", *TEXT_FIELDS)


def load_hardverify(path: str | Path) -> list[dict]:
    """The items of a HardVerify-Math file, in file order, each with ``id`` as a string and ``source`` (``""`` when
    absent). A missing file, bad JSON, a non-list, an item that is not an object, a missing or non-string field, or a
    repeated ``id`` is a :class:`DataError` naming the file, the item's position (``row``) and the field."""
    data = read_json(path)
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: expected a non-empty JSON list of items, got {type(data).__name__}"
                        + (" (empty)" if isinstance(data, list) else ""))  # fmt: skip
    items, seen = [], {}
    for row, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(f"{path}: row {row}: expected an object, got {type(item).__name__}")
        missing = [f for f in REQUIRED_FIELDS if f not in item]
        if missing:
            raise DataError(f"{path}: row {row}: lacks field(s) {missing}")
        if isinstance(item["id"], bool) or not isinstance(item["id"], (int, str)):
            raise DataError(f"{path}: row {row}: field 'id' must be an integer or a string, got {item['id']!r}")
        for name in (*TEXT_FIELDS, "source"):
            if name in item and not isinstance(item[name], str):
                raise DataError(f"{path}: row {row}: field {name!r} must be a string, got "
                                f"{type(item[name]).__name__}")  # fmt: skip
        uid = str(item["id"])
        if uid in seen:
            raise DataError(f"{path}: row {row}: id {uid!r} repeats row {seen[uid]}")
        seen[uid] = row
        items.append({**{f: item[f] for f in TEXT_FIELDS}, "id": uid, "source": item.get("source", "")})
    return items
