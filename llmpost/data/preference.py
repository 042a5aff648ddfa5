"""Preference data in TRL's standard format: string columns ``prompt``, ``chosen``, ``rejected`` (one row per pair).

* :func:`load_preference_dataset` reads a local ``.jsonl`` / ``.json`` / ``.parquet`` file, or a hub id through
  ``datasets.load_dataset`` (only when a hub id is given), and checks every row with
  :func:`validate_preference_rows`.
* :func:`tofu_preference_pairs` builds pairs from a TOFU ``*_perturbed.jsonl`` split (columns ``question``,
  ``answer``, ``paraphrased_answer``, ``perturbed_answer``: a list of 5 wrong answers, 3 for ``real_authors`` and
  ``world_facts``): the question is the prompt, the true answer is chosen, a perturbed answer is rejected.
  :func:`tofu_sft_rows` gives the ``prompt`` / ``completion`` rows of any TOFU split for SFT.
* :func:`train_heldout_split` holds out a fraction of the *prompts*, so that no question lands in both splits.

Prompts are the raw questions: chat or "Question: ... Answer:" templates are applied when tokenising. Random choices
are pure functions of ``(seed, text)`` (SHA-256), so they do not depend on row order, on the process, or on which other
rows a file holds (a question shared by forget01 and forget10 gets the same rejected answer in both).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from ..utils import StrEnum, parse_enum
from .files import DataError, iter_jsonl, load_jsonl, read_json

__all__ = ["PREFERENCE_COLUMNS", "PreferenceArguments", "sft_rows_from_pairs", "SRPO_SEQUENCES", "PerturbedPairing", "PreferenceTemplates", "format_for_trl",
           "tokenize_prompt_completion", "tokenize_srpo", "load_preference_dataset", "tofu_preference_pairs",
           "tofu_sft_rows", "train_heldout_split", "validate_preference_rows"]

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def _stable_hash(seed: int, text: str) -> int:
    """A 64-bit integer from ``(seed, text)``, the same on every platform and in every process."""
    digest = hashlib.sha256(f"{int(seed)}\0{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _check_text(value, column: str, where: str) -> str:
    if value is None:
        raise DataError(f"{where}: column {column!r} is missing or null")
    if not isinstance(value, str):
        raise DataError(f"{where}: column {column!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: column {column!r} is empty")
    return value


def validate_preference_rows(rows: datasets.Dataset | Iterable[Mapping], source: str) -> None:
    """Check preference rows; raise :class:`~llmpost.data.files.DataError` (a ``ValueError``) naming ``source`` and
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
        _, chosen, rejected = (_check_text(row[c], c, where) for c in PREFERENCE_COLUMNS)
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


class PerturbedPairing(StrEnum):
    """How :func:`tofu_preference_pairs` uses a question's perturbed answers."""

    ONE = "one"  # one pair per question, the rejected answer drawn with the seed
    ALL = "all"  # one pair per perturbed answer


def _tofu_rows(path: str | Path, keys: tuple[str, ...]):
    """``(line, row)`` of a TOFU JSON-lines file, each row checked to hold the string columns ``keys``."""
    for lineno, row in iter_jsonl(path):
        for key in keys:
            _check_text(row.get(key), key, f"{path}: line {lineno}")
        yield lineno, row


def tofu_preference_pairs(
    perturbed_path: str | Path,
    pairing: PerturbedPairing | str = PerturbedPairing.ONE,
    seed: int = 0,
    chosen_key: str = "answer",
    question_key: str = "question",
    perturbed_key: str = "perturbed_answer",
) -> datasets.Dataset:
    """Preference pairs from a TOFU ``*_perturbed.jsonl`` split, in file order.

    ``prompt`` is the question, ``chosen`` the true answer (``chosen_key``; ``paraphrased_answer`` also works on the
    forget/retain splits), ``rejected`` a perturbed answer: with ``pairing="one"`` one per question, drawn from
    ``(seed, question)``; with ``"all"`` one row per perturbed answer. Perturbed answers that equal the chosen one (after
    stripping whitespace) are skipped; a question left with none is an error naming the file and line.
    """
    mode = parse_enum("pairing", pairing, PerturbedPairing)
    out = {c: [] for c in PREFERENCE_COLUMNS}
    for lineno, row in _tofu_rows(perturbed_path, (question_key, chosen_key)):
        where = f"{perturbed_path}: line {lineno}"
        perturbed = row.get(perturbed_key)
        if not isinstance(perturbed, list) or not perturbed:
            raise DataError(f"{where}: column {perturbed_key!r} must be a non-empty list of answers")
        question, chosen = row[question_key], row[chosen_key]
        candidates = [_check_text(p, f"{perturbed_key}[{j}]", where) for j, p in enumerate(perturbed)]
        candidates = [p for p in candidates if p.strip() != chosen.strip()]
        if not candidates:
            raise DataError(f"{where}: every perturbed answer equals the chosen answer")
        if mode is PerturbedPairing.ONE:
            candidates = [candidates[_stable_hash(seed, question) % len(candidates)]]
        for rejected in candidates:
            out["prompt"].append(question)
            out["chosen"].append(chosen)
            out["rejected"].append(rejected)
    ds = datasets.Dataset.from_dict(out)
    validate_preference_rows(ds, str(perturbed_path))
    return ds


def tofu_sft_rows(path: str | Path, question_key: str = "question", answer_key: str = "answer") -> datasets.Dataset:
    """TRL prompt-completion rows (``prompt`` = question, ``completion`` = answer) of any TOFU JSON-lines split, in
    file order; an empty or missing question or answer is an error naming the file and line."""
    rows = [(row[question_key], row[answer_key]) for _, row in _tofu_rows(path, (question_key, answer_key))]
    if not rows:
        raise DataError(f"{path}: holds no rows")
    return datasets.Dataset.from_dict({"prompt": [q for q, _ in rows], "completion": [a for _, a in rows]})


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
    groups = sorted(set(values), key=lambda v: (_stable_hash(seed, str(v)), str(v)))
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


# ----- prompt templates ----------------------------------------------------------------------------------------------
@dataclass
class PreferenceTemplates:
    """How a raw prompt becomes model input, for the generation policy and for the self-revision policy (SRPO).

    ``prompt_template`` must hold ``{prompt}``; ``revision_template`` must hold ``{prompt}`` and ``{previous}`` (the
    answer to revise). A completion follows the formatted text after ``completion_prefix`` (a space by default, as in
    "Answer: <completion>") and ends with the tokenizer's EOS. The same strings serve training, the TRL baselines
    (whose ``prompt`` column is formatted with ``prompt_template``) and generation, so all three see identical text.
    """

    prompt_template: str = "Question: {prompt}\nAnswer:"
    revision_template: str = "Question: {prompt}\nDraft answer: {previous}\nImproved answer:"
    completion_prefix: str = " "

    def __post_init__(self):
        for key, needed in (("prompt_template", ("{prompt}",)), ("revision_template", ("{prompt}", "{previous}"))):
            value = getattr(self, key)
            if not isinstance(value, str):
                raise ValueError(f"{key}: must be a string, got {type(value).__name__}")
            for placeholder in needed:
                if placeholder not in value:
                    raise ValueError(f"{key}: must contain the placeholder {placeholder} "
                                     f"({'the answer to revise' if placeholder == '{previous}' else 'the prompt'}), "
                                     f"got {value!r}")
            try:
                value.format(prompt="", previous="")
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"{key}: only {{prompt}} and {{previous}} may appear in braces (write {{{{ for a "
                                 f"literal brace), got {value!r}: {e}") from e

    def generation_prompt(self, prompt: str) -> str:
        return self.prompt_template.format(prompt=prompt, previous="")

    def revision_prompt(self, prompt: str, previous: str) -> str:
        return self.revision_template.format(prompt=prompt, previous=previous.strip())

    def completion(self, text: str) -> str:
        return self.completion_prefix + text.strip()


# ----- tokenisation ----------------------------------------------------------------------------------------------------
def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def cut_prompt(ids: list[int], max_tokens: int) -> list[int]:
    """``ids`` cut to ``max_tokens`` by dropping tokens from the left after the first (BOS) one, so the prompt's end
    (the question, a revision prompt's draft) stays; unchanged when it fits."""
    if len(ids) <= max_tokens:
        return ids
    return ids[:1] + ids[len(ids) - max_tokens + 1:] if max_tokens > 1 else ids[:1]


def tokenize_prompt_completion(tokenizer, prompt_text: str, completion_text: str, max_length: int,
                               max_prompt_length: int | None = None) -> dict[str, list[int]]:
    """``input_ids`` / ``labels`` / ``attention_mask`` of ``prompt_text + completion_text`` followed by EOS, the loss on
    the completion and EOS only.

    Tokenised as TRL's ``DPOTrainer`` does for text data: the prompt alone and the whole string, each with the
    tokenizer's default special tokens (BOS for Llama), the completion starting where the two diverge (a merge across
    the boundary moves it, never drops a token). Too long (> ``max_length``): the prompt loses tokens from its left
    after the first (BOS) token, down to ``max_prompt_length`` (default ``max_length // 2``), then the completion is
    cut at its end; the prompt's end (the question and, for a revision prompt, the draft) stays next to the completion.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    max_prompt_length = max_length // 2 if max_prompt_length is None else max_prompt_length
    prompt_ids = tokenizer(prompt_text)["input_ids"]
    full = tokenizer(prompt_text + completion_text)["input_ids"] + [tokenizer.eos_token_id]
    cut = _common_prefix(prompt_ids, full)
    prompt, completion = full[:cut], full[cut:]
    if len(prompt) + len(completion) > max_length:
        prompt = cut_prompt(prompt, max(max_length - len(completion), min(max_prompt_length, len(prompt)), 1))
        completion = completion[: max_length - len(prompt)]
    ids = prompt + completion
    return {"input_ids": ids, "labels": [-100] * len(prompt) + completion, "attention_mask": [1] * len(ids)}


# SRPO's six sequences per pair: (target completion, completion in the revision prompt or None for the generation prompt)
SRPO_SEQUENCES = {
    "w": ("chosen", None), "l": ("rejected", None),
    "w_given_l": ("chosen", "rejected"), "l_given_l": ("rejected", "rejected"),
    "w_given_w": ("chosen", "chosen"), "l_given_w": ("rejected", "chosen"),
}


def tokenize_srpo(dataset: datasets.Dataset, tokenizer, templates: PreferenceTemplates, max_length: int,
                  max_prompt_length: int | None = None) -> datasets.Dataset:
    """The six tokenised sequences of each preference pair (columns ``{key}_input_ids`` / ``{key}_labels`` for ``key``
    in :data:`SRPO_SEQUENCES`) and an ``index`` column: ``w`` / ``l`` are the chosen / rejected completions under the
    generation prompt, ``a_given_b`` is completion ``a`` under the revision prompt holding completion ``b``."""
    validate_preference_rows(dataset, "SRPO training data")

    def encode(row, index):
        out = {"index": index}
        for key, (target, given) in SRPO_SEQUENCES.items():
            prompt = (templates.generation_prompt(row["prompt"]) if given is None
                      else templates.revision_prompt(row["prompt"], row[given]))
            enc = tokenize_prompt_completion(tokenizer, prompt, templates.completion(row[target]), max_length,
                                             max_prompt_length)
            out[f"{key}_input_ids"], out[f"{key}_labels"] = enc["input_ids"], enc["labels"]
        return out

    return dataset.map(encode, with_indices=True, remove_columns=dataset.column_names, desc="Tokenising SRPO pairs")


def format_for_trl(dataset: datasets.Dataset, templates: PreferenceTemplates) -> datasets.Dataset:
    """TRL ``DPOTrainer`` rows with the same text llmpost's trainers see: the prompt through ``prompt_template`` and
    each completion with ``completion_prefix`` (TRL appends EOS itself)."""
    def fmt(row):
        return {"prompt": templates.generation_prompt(row["prompt"]), "chosen": templates.completion(row["chosen"]),
                "rejected": templates.completion(row["rejected"])}

    return dataset.map(fmt, desc="Formatting preference pairs")


# ----- recipe arguments ----------------------------------------------------------------------------------------------
TOFU_PREFIX = "tofu:"


@dataclass
class PreferenceArguments:
    """Data, templates and held-out evaluation of the preference recipes (``recipes/srpo.py``, ``recipes/dpo.py``,
    ``recipes/implicit_sft.py``, ``recipes/sft_dpo.py``)."""

    dataset: str = field(default="tofu:forget10", metadata={"help": "'tofu:<split>' (pairs from <tofu_dir>/<split>_perturbed.jsonl), a local .jsonl/.json/.parquet file, or a hub id."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Hub split of the training pairs."})
    tofu_dir: str = field(default="../shared/data/tofu", metadata={"help": "Directory of the TOFU *_perturbed.jsonl files."})
    pairing: PerturbedPairing = field(default=PerturbedPairing.ONE, metadata={"help": "TOFU: one pair per question (one) or per perturbed answer (all)."})
    heldout_dataset: str | None = field(default=None, metadata={"help": "Held-out pairs from another source (same forms as dataset); unset: heldout_fraction of dataset's prompts."})
    heldout_split: str = field(default="validation", metadata={"help": "Hub split of heldout_dataset."})
    heldout_fraction: float = field(default=0.1, metadata={"help": "Fraction of the prompts held out when heldout_dataset is unset."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the held-out split and of TOFU's rejected-answer draw."})
    max_train_pairs: int | None = field(default=None, metadata={"help": "Train on at most this many pairs (the first ones)."})
    max_heldout_pairs: int | None = field(default=None, metadata={"help": "Evaluate on at most this many held-out pairs."})
    prompt_template: str = field(default=PreferenceTemplates.prompt_template, metadata={"help": "Generation prompt; holds {prompt}."})
    revision_template: str = field(default=PreferenceTemplates.revision_template, metadata={"help": "Revision prompt; holds {prompt} and {previous}."})
    completion_prefix: str = field(default=PreferenceTemplates.completion_prefix, metadata={"help": "Text between a prompt and its completion."})
    eval_after_training: bool = field(default=True, metadata={"help": "Evaluate the saved model on the held-out pairs."})
    num_revisions: int = field(default=2, metadata={"help": "Self-revisions k after the first draft (win rate after 0..k)."})
    judge: str = field(default="rouge", metadata={"help": "rouge (ROUGE-L F1 to the gold, CPU) | reward_model | pairwise_llm."})
    judge_model_path: str | None = field(default=None, metadata={"help": "The judge's model (reward_model, pairwise_llm)."})
    eval_max_new_tokens: int = field(default=64, metadata={"help": "Tokens per generated draft."})
    eval_max_prompt_length: int | None = field(default=None, metadata={"help": "Cut generation/revision prompts to this many tokens (keeping BOS and the end)."})
    generation_backend: str = field(default="transformers", metadata={"help": "transformers | vllm (GPU)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into an output_dir that holds results."})

    def __post_init__(self):
        self.pairing = parse_enum("pairing", self.pairing, PerturbedPairing)
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction: must be in [0, 1), got {self.heldout_fraction}")
        if self.heldout_dataset is None and self.heldout_fraction == 0 and self.eval_after_training:
            raise ValueError("heldout_fraction: 0 leaves nothing to evaluate; set heldout_dataset or eval_after_training: false")
        for key in ("max_train_pairs", "max_heldout_pairs", "eval_max_new_tokens", "eval_max_prompt_length"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key}: must be >= 1, got {value}")
        if self.num_revisions < 0:
            raise ValueError(f"num_revisions: must be >= 0, got {self.num_revisions}")
        from ..eval.winrate import JudgeKind

        self.judge = parse_enum("judge", self.judge, JudgeKind)
        if self.judge != JudgeKind.ROUGE and self.eval_after_training and not self.judge_model_path:
            raise ValueError(f"judge_model_path: the {self.judge.value!r} judge needs a model")
        self.templates()  # a template without its placeholders is an error now, naming the key

    def templates(self) -> PreferenceTemplates:
        return PreferenceTemplates(self.prompt_template, self.revision_template, self.completion_prefix)

    def _load(self, source: str, split: str) -> datasets.Dataset:
        if source.startswith(TOFU_PREFIX):
            name = source[len(TOFU_PREFIX):]
            path = Path(self.tofu_dir) / f"{name}_perturbed.jsonl"
            if not path.is_file():
                raise DataError(f"dataset {source!r}: {path} does not exist (TOFU splits with perturbed answers: "
                                "forget01/05/10, retain, real_authors, world_facts; set tofu_dir)")
            return tofu_preference_pairs(path, self.pairing, seed=self.split_seed)
        ds = load_preference_dataset(source, split=split, name=self.dataset_config)
        return ds.select_columns(list(PREFERENCE_COLUMNS))

    def splits(self) -> tuple[datasets.Dataset, datasets.Dataset | None]:
        """``(train, heldout)`` preference pairs, validated; ``heldout`` is None when nothing is held out."""
        data = self._load(self.dataset, self.dataset_split)
        if self.heldout_dataset is not None:
            train, heldout = data, self._load(self.heldout_dataset, self.heldout_split)
        elif self.heldout_fraction > 0:
            train, heldout = train_heldout_split(data, self.heldout_fraction, self.split_seed)
        else:
            train, heldout = data, None
        if self.max_train_pairs is not None:
            train = train.select(range(min(self.max_train_pairs, len(train))))
        if heldout is not None and self.max_heldout_pairs is not None:
            heldout = heldout.select(range(min(self.max_heldout_pairs, len(heldout))))
        return train, heldout


def sft_rows_from_pairs(pairs: datasets.Dataset) -> datasets.Dataset:
    """SFT rows (``prompt``, ``completion`` = the chosen answer) of preference pairs, one per prompt (first pair)."""
    seen, prompts, completions = set(), [], []
    for p, c in zip(pairs["prompt"], pairs["chosen"]):
        if p not in seen:
            seen.add(p)
            prompts.append(p)
            completions.append(c)
    return datasets.Dataset.from_dict({"prompt": prompts, "completion": completions})
