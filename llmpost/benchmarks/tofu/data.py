"""TOFU (arXiv 2401.06121): loading splits offline or from the hub (also the evaluation's set of splits), prompt
templates, answer-only tokenisation.

Splits are read from ``{data_dir}/{split}.jsonl`` when ``data_dir`` is given (the offline twin of the hub dataset), or
from the hub id ``locuslab/TOFU`` otherwise. Prompts are built exactly as open-unlearning's
``preprocess_chat_instance`` builds them, from the same template fields (``TemplateArgs``), so that probabilities and
generations are comparable with its logs:

* base models: ``user_start_tag + question + user_end_tag + asst_start_tag`` then the answer; the default tags are
  open-unlearning's base-model template ``"Question: "``, ``"\\n"``, ``"Answer: "``, ``"\\n\\n"``;
* chat models (``apply_chat_template=True``): the tokenizer's chat template, with an optional system prompt.

The prompt and the full text are tokenised separately (with special tokens); labels are ``-100`` over the prompt's
tokens, and EOS is appended when the tokeniser did not end the sequence with it. Loss and probabilities are therefore
over the answer tokens (plus EOS) only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from llmpost.data.files import load_jsonl
from llmpost.data.templates import TemplateArgs, encode_qa
from llmpost.utils import DataError

logger = logging.getLogger(__name__)

TOFU_HUB_ID = "locuslab/TOFU"
ROWS_PER_AUTHOR = 20  # TOFU: 200 fictitious authors x 20 question/answer pairs, in author order in `full`
NUM_AUTHORS = 200


def load_split(split: str, data_dir: str | None = None, required_columns=("question", "answer")) -> datasets.Dataset:
    """Load one TOFU split by its hub name, from ``data_dir`` if given, else from the hub; check its columns."""
    if data_dir:
        path = Path(data_dir) / f"{split}.jsonl"
        if not Path(data_dir).is_dir():
            raise DataError(f"TOFU data_dir {data_dir!r} does not exist or is not a directory")
        if not path.is_file():
            available = sorted(p.stem for p in Path(data_dir).glob("*.jsonl"))
            raise DataError(f"TOFU split {split!r} not found: no file {path}. Available splits: {available}")
        ds = load_jsonl(path)
        where = str(path)
    else:
        ds = datasets.load_dataset(TOFU_HUB_ID, split, split="train")
        where = f"{TOFU_HUB_ID}/{split}"
    missing = [c for c in required_columns if c not in ds.column_names]
    if missing:
        raise DataError(f"TOFU split {where} lacks column(s) {missing}; it has {ds.column_names}")
    return ds


def first_authors(ds: datasets.Dataset, num_authors: int | None) -> datasets.Dataset:
    """Keep the rows of the first ``num_authors`` authors of a retain split (rows are in author order); None keeps all."""
    if num_authors is None:
        return ds
    rows = num_authors * ROWS_PER_AUTHOR
    if num_authors <= 0 or rows > len(ds):
        raise DataError(f"num_retain_authors={num_authors} must be in [1, {len(ds) // ROWS_PER_AUTHOR}] for this split")
    return ds.select(range(rows))


def _holdout_for(forget_split: str) -> str | None:
    match = re.fullmatch(r"forget(\d+)", forget_split)
    return f"holdout{match.group(1)}" if match else None


def _split_available(split: str, data_dir: str | None) -> bool:
    return data_dir is None or (Path(data_dir) / f"{split}.jsonl").is_file()


def load_tofu_eval_splits(
    data_dir: str | None, forget_split: str = "forget10", holdout_split: str | None = None,
    max_examples: int | None = None,
) -> dict[str, list[dict]]:  # fmt: skip
    """Rows of the evaluation splits: ``forget`` (``{forget_split}_perturbed``), ``retain`` (``retain_perturbed``),
    ``ra``, ``wf``, and ``holdout`` when available (``holdout_split``, by default the forget split's ``holdoutNN``;
    skipped with a warning when that default is absent). ``max_examples`` keeps the first rows of each (for tests)."""
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"max_examples must be >= 1, got {max_examples}")
    perturbed = ("question", "answer", "paraphrased_answer", "perturbed_answer")
    wanted = {
        "forget": (f"{forget_split}_perturbed", perturbed),
        "retain": ("retain_perturbed", perturbed),
        "ra": ("real_authors_perturbed", ("question", "answer", "perturbed_answer")),
        "wf": ("world_facts_perturbed", ("question", "answer", "perturbed_answer")),
    }
    splits = {}
    for name, (split, columns) in wanted.items():
        splits[name] = _load_rows(split, data_dir, columns, max_examples)
    if holdout_split is None:
        holdout_split = _holdout_for(forget_split)
        if holdout_split is None or not _split_available(holdout_split, data_dir):
            logger.warning("No holdout split for %r: mia_min_k and privleak are not computed", forget_split)
            holdout_split = None
    if holdout_split is not None:
        splits["holdout"] = _load_rows(holdout_split, data_dir, ("question", "answer"), max_examples)
    return splits


def _load_rows(split: str, data_dir: str | None, columns: Sequence[str], max_examples: int | None) -> list[dict]:
    rows = load_split(split, data_dir, required_columns=tuple(columns)).to_list()
    if not rows:
        raise DataError(f"TOFU split {split!r} is empty")
    return rows[:max_examples] if max_examples else rows


def tokenize_qa(
    ds: datasets.Dataset,
    tokenizer,
    template: TemplateArgs,
    max_length: int,
    question_key: str = "question",
    answer_key: str = "answer",
) -> datasets.Dataset:
    """Tokenise a question/answer split; keeps an ``index`` column (row number in the split)."""
    for key in (question_key, answer_key):
        if key not in ds.column_names:
            raise DataError(f"column {key!r} not in dataset columns {ds.column_names}")

    def fn(row, idx):
        return {**encode_qa(tokenizer, template, row[question_key], row[answer_key], max_length), "index": idx}

    return ds.map(fn, with_indices=True, remove_columns=ds.column_names, desc="Tokenising")


@dataclass
class TofuArguments(TemplateArgs):
    """Data and evaluation options of the TOFU recipes (the template fields are inherited)."""

    data_dir: str | None = field(default=None, metadata={"help": f"Directory of TOFU *.jsonl splits; unset: hub {TOFU_HUB_ID}."})
    forget_split: str = field(default="forget10", metadata={"help": "Forget split (forget01/05/10)."})
    retain_split: str = field(default="retain90", metadata={"help": "Retain split matching the forget split (retain99/95/90)."})
    num_retain_authors: int | None = field(
        default=None, metadata={"help": "Use only the first N retain authors (20 rows each); unset: the whole retain split."}
    )
    template_answers_path: str | None = field(
        default=None, metadata={"help": "FLAT / IdkDPO template answers and AltPO alternates, one per line (unset: data_dir/idontknow.jsonl)."}
    )
    retain_logs_path: str | None = field(default=None, metadata={"help": "Retain model's TOFU_EVAL.json, for forget_quality."})
    mia_reference_model_path: str | None = field(
        default=None, metadata={"help": "Reference model of the eval's mia_reference (e.g. the retain model); unset: none."})
    eval_after_training: bool = field(default=True, metadata={"help": "Run the TOFU evaluation on the saved model."})
    eval_max_new_tokens: int = field(default=200, metadata={"help": "Greedy generation length for ROUGE (TOFU: 200)."})
    eval_max_examples: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N rows of each split (smoke tests; not the benchmark)."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into an output_dir that holds results."})

    def __post_init__(self):
        if self.num_retain_authors is not None and not 1 <= self.num_retain_authors <= NUM_AUTHORS:
            raise ValueError(f"num_retain_authors: must be in [1, {NUM_AUTHORS}], got {self.num_retain_authors}")
