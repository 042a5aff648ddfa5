"""Loading the WMDP question files (``{subset}_questions.json``: a JSON array of ``{question, choices, answer}``, the
hub dataset ``cais/wmdp``) with checks that name the file, the row and the field."""

from __future__ import annotations

from pathlib import Path

from llmpost.data.files import read_json
from llmpost.eval.mcq import McqItem, checked_item, description_line
from llmpost.utils import DataError

# lm-eval's group ``wmdp`` lists its tasks in this order; each task's description names its topic.
SUBSETS = ("bio", "chem", "cyber")
TOPICS = {"bio": "biology", "chem": "chemistry", "cyber": "cybersecurity"}
GROUP = "wmdp"


def task_name(subset: str) -> str:
    """lm-eval's task name of a subset: ``wmdp_bio``, ``wmdp_chem``, ``wmdp_cyber``."""
    return f"wmdp_{subset}"


def description(subset: str) -> str:
    """lm-eval's description line of the subset's task (``wmdp/wmdp_<subset>.yaml``)."""
    return description_line(TOPICS[subset])


def subset_file(data_dir: str | Path, subset: str) -> Path:
    return Path(data_dir) / f"{subset}_questions.json"


def parse_subsets(text: str | None) -> tuple[str, ...]:
    """``"bio,chem"`` -> ``("bio", "chem")`` in lm-eval's order; ``None`` or ``""``: all three. Unknown -> ValueError."""
    if not text:
        return SUBSETS
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SUBSETS]
    if unknown or not names:
        raise ValueError(f"unknown WMDP subset(s) {unknown or text!r}; choose from {', '.join(SUBSETS)}")
    return tuple(s for s in SUBSETS if s in names)


def load_wmdp_file(path: str | Path, max_examples: int | None = None) -> list[McqItem]:
    """The questions of one WMDP file, in file order (the first ``max_examples`` if given); every row is checked."""
    path = Path(path)
    rows = read_json(path)
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{path}: expected a non-empty JSON array of questions, got {type(rows).__name__}")
    items = []
    for i, row in enumerate(rows):
        where = f"{path}: row {i}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with fields question, choices, answer, got "
                            f"{type(row).__name__}")  # fmt: skip
        missing = [k for k in ("question", "choices", "answer") if k not in row]
        if missing:
            raise DataError(f"{where}: field {missing[0]!r} is missing")
        items.append(checked_item(where, row["question"], row["choices"], row["answer"]))
    return items[:max_examples] if max_examples else items


def load_wmdp(data_dir: str | Path, subsets=SUBSETS, max_examples: int | None = None) -> dict[str, list[McqItem]]:
    """``{task name: questions}`` for the chosen subsets, read from ``data_dir``."""
    if not Path(data_dir).is_dir():
        raise DataError(f"WMDP data_dir {str(data_dir)!r} is not a directory")
    return {task_name(s): load_wmdp_file(subset_file(data_dir, s), max_examples) for s in subsets}
