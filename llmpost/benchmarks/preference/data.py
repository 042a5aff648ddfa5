"""The preference recipes' data arguments (:class:`PreferenceArguments`) and TOFU preference pairs: the question as
the prompt, the true answer chosen, a perturbed answer rejected."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import datasets

from llmpost.data.files import iter_jsonl
from llmpost.data.preference import (
    PREFERENCE_COLUMNS,
    check_text,
    load_preference_dataset,
    stable_hash,
    train_heldout_split,
    validate_preference_rows,
)
from llmpost.data.templates import PreferenceTemplates
from llmpost.utils import DataError, StrEnum, parse_enum


class PerturbedPairing(StrEnum):
    """How :func:`tofu_preference_pairs` uses a question's perturbed answers."""

    ONE = "one"  # one pair per question, the rejected answer drawn with the seed
    ALL = "all"  # one pair per perturbed answer


def _tofu_rows(path: str | Path, keys: tuple[str, ...]):
    """``(line, row)`` of a TOFU JSON-lines file, each row checked to hold the string columns ``keys``."""
    for lineno, row in iter_jsonl(path):
        for key in keys:
            check_text(row.get(key), key, f"{path}: line {lineno}")
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
        candidates = [check_text(p, f"{perturbed_key}[{j}]", where) for j, p in enumerate(perturbed)]
        candidates = [p for p in candidates if p.strip() != chosen.strip()]
        if not candidates:
            raise DataError(f"{where}: every perturbed answer equals the chosen answer")
        if mode is PerturbedPairing.ONE:
            candidates = [candidates[stable_hash(seed, question) % len(candidates)]]
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
        from llmpost.benchmarks.preference.judges import JudgeKind

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
