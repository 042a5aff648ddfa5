"""Loading MMLU's original CSV release (``test/{subject}_test.csv``, ``dev/{subject}_dev.csv``: headerless rows
``question, A, B, C, D, answer letter``) with checks that name the file, the row and the field, and lm-eval's subject
categories (the ``tag`` of each ``lm_eval/tasks/mmlu/default/mmlu_<subject>.yaml``)."""

from __future__ import annotations

import csv
from pathlib import Path

from llmpost.eval.mcq import LETTERS, McqItem, checked_item, description_line
from llmpost.utils import DataError

GROUP = "mmlu"
# lm-eval's group mmlu lists its categories in this order (_mmlu.yaml); subjects as tagged in the task YAMLs.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "stem": ("abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
             "college_computer_science", "college_mathematics", "college_physics", "computer_security",
             "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
             "high_school_chemistry", "high_school_computer_science", "high_school_mathematics", "high_school_physics",
             "high_school_statistics", "machine_learning"),
    "other": ("business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging", "management",
              "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting",
              "professional_medicine", "virology"),
    "social_sciences": ("econometrics", "high_school_geography", "high_school_government_and_politics",
                        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
                        "human_sexuality", "professional_psychology", "public_relations", "security_studies",
                        "sociology", "us_foreign_policy"),
    "humanities": ("formal_logic", "high_school_european_history", "high_school_us_history",
                   "high_school_world_history", "international_law", "jurisprudence", "logical_fallacies",
                   "moral_disputes", "moral_scenarios", "philosophy", "prehistory", "professional_law",
                   "world_religions"),
}  # fmt: skip
CATEGORY_OF = {subject: category for category, subjects in CATEGORIES.items() for subject in subjects}
SUBJECTS = tuple(sorted(CATEGORY_OF))
FIELDS = ("question", "A", "B", "C", "D", "answer")


def task_name(subject: str) -> str:
    """lm-eval's task name of a subject: ``mmlu_anatomy``."""
    return f"mmlu_{subject}"


def category_group(category: str) -> str:
    """lm-eval's group name of a category: ``mmlu_stem``, ``mmlu_other``, ``mmlu_social_sciences``, ``mmlu_humanities``."""
    return f"mmlu_{category}"


def description(subject: str) -> str:
    """lm-eval's description line of the subject's task (underscores read as spaces)."""
    return description_line(subject.replace("_", " "))


def parse_subjects(text: str | None) -> tuple[str, ...]:
    """``"anatomy,virology"`` -> the subjects in sorted order; ``None`` or ``""``: all 57. Unknown -> ValueError."""
    if not text:
        return SUBJECTS
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in CATEGORY_OF]
    if unknown or not names:
        raise ValueError(f"unknown MMLU subject(s) {unknown or text!r}; choose from {', '.join(SUBJECTS)}")
    return tuple(s for s in SUBJECTS if s in names)


def load_mmlu_csv(path: str | Path, max_examples: int | None = None) -> list[McqItem]:
    """The questions of one MMLU CSV file, in file order (the first ``max_examples`` if given); every row is checked
    (``row i`` counts rows from 0; a quoted field may span lines, so the line number is also given)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"MMLU file {str(path)!r} does not exist")
    items = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            for i, row in enumerate(reader):
                where = f"{path}: row {i} (line {reader.line_num})"
                if len(row) != len(FIELDS):
                    raise DataError(f"{where}: expected {len(FIELDS)} fields ({', '.join(FIELDS)}), got {len(row)}")
                if row[5] not in LETTERS:
                    raise DataError(f"{where}: field 'answer' must be one of {', '.join(LETTERS)}, got {row[5]!r}")
                items.append(checked_item(where, row[0], row[1:5], LETTERS.index(row[5])))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({e})") from None
    if not items:
        raise DataError(f"{path}: no questions")
    return items[:max_examples] if max_examples else items


def load_mmlu(data_dir: str | Path, subjects=SUBJECTS, num_fewshot: int = 0,
              max_examples: int | None = None) -> dict[str, tuple[list[McqItem], list[McqItem]]]:  # fmt: skip
    """``{subject: (test questions, few-shot examples)}``: the few-shot examples are the first ``num_fewshot`` rows
    of the subject's dev file (lm-eval's ``fewshot_split: dev`` with the ``first_n`` sampler)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"MMLU data_dir {str(data_dir)!r} is not a directory")
    out = {}
    for subject in subjects:
        test = load_mmlu_csv(root / "test" / f"{subject}_test.csv", max_examples)
        shots: list[McqItem] = []
        if num_fewshot:
            dev = root / "dev" / f"{subject}_dev.csv"
            shots = load_mmlu_csv(dev)
            if len(shots) < num_fewshot:
                raise DataError(f"{dev}: {len(shots)} rows, fewer than num_fewshot={num_fewshot}")
            shots = shots[:num_fewshot]
        out[subject] = (test, shots)
    return out
