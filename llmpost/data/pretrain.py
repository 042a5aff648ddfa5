"""Pretraining data: a text corpus (local files or a hub dataset's text column), split into training and held-out
documents, packed into fixed-length rows (:func:`llmpost.data.corpus.pack_documents`).

The held-out split is by *document* (a seeded shuffle; ``validation_fraction`` of the documents), so no validation
text is ever trained on, even in part. Exact duplicate documents are dropped first (``dedupe``): the same article can
appear in several files (MUSE-News' ``raw/forget.json`` and ``sust/forget_1.json`` are the same corpus).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import datasets

from .corpus import load_texts, pack_documents
from .files import DataError


@dataclass
class PretrainArguments:
    """The corpus, its packing and held-out split, and the model's initialisation."""

    corpus_files: list[str] = field(default_factory=list, metadata={"help": "Local .txt / .json / .jsonl text files."})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id (instead of / besides files)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Hub dataset split."})
    text_column: str = field(default="text", metadata={"help": "Column (or JSON key) holding the text."})
    max_documents: int | None = field(default=None, metadata={"help": "Use at most this many documents (after dedupe)."})
    dedupe: bool = field(default=True, metadata={"help": "Drop exact duplicate documents."})
    seq_length: int = field(default=256, metadata={"help": "Tokens per packed row."})
    validation_fraction: float = field(default=0.02, metadata={"help": "Fraction of documents held out, in [0, 1)."})
    validation_max_sequences: int | None = field(default=None, metadata={"help": "Evaluate on at most this many rows."})
    corpus_seed: int = field(default=0, metadata={"help": "Seed of the document shuffle and split."})
    model_config: str | None = field(default=None, metadata={"help": "A config.json (or its folder): train from "
                                     "scratch with this architecture (random init); None: continue from the weights."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into an output_dir that holds results."})

    def __post_init__(self):
        if not self.corpus_files and not self.dataset_name:
            raise DataError("corpus_files / dataset_name: no corpus given; set local files or a hub dataset id")
        if self.seq_length < 2:
            raise DataError(f"seq_length: must be >= 2, got {self.seq_length}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise DataError(f"validation_fraction: must be in [0, 1), got {self.validation_fraction}")
        for name in ("max_documents", "validation_max_sequences"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"{name}: must be >= 1 or unset, got {value}")


def load_corpus(args: PretrainArguments) -> list[str]:
    """The documents of every configured source, in order, exact duplicates dropped (``dedupe``)."""
    texts: list[str] = []
    for path in args.corpus_files:
        texts += load_texts(path, args.text_column)
    if args.dataset_name:
        ds = datasets.load_dataset(args.dataset_name, args.dataset_config, split=args.dataset_split)
        if args.text_column not in ds.column_names:
            raise DataError(f"dataset {args.dataset_name!r} lacks text_column {args.text_column!r}; it has {ds.column_names}")
        texts += [t.strip() for t in ds[args.text_column] if isinstance(t, str) and t.strip()]
    if args.dedupe:
        texts = list(dict.fromkeys(texts))
    if not texts:
        raise DataError("the corpus holds no text")
    return texts


def pretrain_splits(args: PretrainArguments, tokenizer) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """``(train, validation)`` packed rows; ``validation`` is None when ``validation_fraction`` is 0. Documents are
    shuffled with ``corpus_seed`` before the split (and before ``max_documents``)."""
    texts = load_corpus(args)
    random.Random(args.corpus_seed).shuffle(texts)
    if args.max_documents is not None:
        texts = texts[: args.max_documents]
    n_val = round(len(texts) * args.validation_fraction)
    if args.validation_fraction > 0 and n_val == 0:
        raise DataError(f"validation_fraction={args.validation_fraction} of {len(texts)} documents holds none; raise it")
    train = pack_documents(texts[n_val:], tokenizer, args.seq_length, name="training corpus")
    if not n_val:
        return train, None
    val = pack_documents(texts[:n_val], tokenizer, args.seq_length, name="validation corpus")
    if args.validation_max_sequences is not None:
        val = val.select(range(min(len(val), args.validation_max_sequences)))
    return train, val
