"""Pretraining data: a text corpus (local files or a hub dataset's text column), split into training and held-out
documents, packed into fixed-length rows (:func:`llmpost.data.corpus.pack_documents`).

The held-out split is by *document* (a seeded shuffle; ``validation_fraction`` of the documents), so no validation
text is ever trained on, even in part. Exact duplicate documents are dropped first (``dedupe``): the same article can
appear in several files (MUSE-News' ``raw/forget.json`` and ``sust/forget_1.json`` are the same corpus).

``packing`` says where this happens:

* ``memory`` (the default): the documents and their tokens are Python lists and the rows one in-memory table: about
  250 bytes of memory per token at the peak (measured: 20 GB for a 300K-document, 80M-token ``.jsonl``). For the
  tiny configs and the tests.
* ``disk``: for corpora that do not fit in memory. The documents stay in memory-mapped Arrow files (a hub dataset
  as downloaded; local ``.jsonl`` through ``datasets.load_dataset("json")``; ``.txt`` streamed paragraph by paragraph
  and ``.json`` through ``Dataset.from_generator``), are cleaned and hashed by ``Dataset.map``, then tokenised and
  packed batch by batch (:func:`llmpost.data.corpus.pack_dataset`, ``packing_batch_documents`` documents per batch,
  ``num_proc`` processes) into Arrow files in datasets' cache (``cache_dir``), which a rerun with the same corpus,
  tokenizer and options reuses. In memory there are a few tens of bytes per document (for the deduplication its
  128-bit BLAKE2b hash, exact up to a hash collision, probability about n^2 / 2^129 for n documents; its place in
  the shuffle) and one batch of documents. Under a multi-process launch the local main process prepares the
  files first and the others then read them from the cache. Measured on that 80M-token ``.jsonl``: 0.3 GB of memory
  above the imports, about as fast as ``memory`` (one process), 1.5 GB of cache; a rerun loads it in under a second.

  The shuffle and split are those of ``memory`` (the same ``random.Random(corpus_seed)`` permutation of the
  deduplicated documents), so a corpus gives the same training and validation documents in both modes, and the same
  rows when one batch holds every document. With smaller batches the partial row at the end of each batch is
  dropped: at most ``seq_length - 1`` tokens per batch (per ``num_proc`` shard), under 1% of the corpus when a batch
  holds 100 x ``seq_length`` tokens; an INFO line of the ``llmpost.data.pretrain`` logger ("packed the corpus on
  disk ...") reports documents, tokens, rows and dropped tokens of each split. ``.json`` files (a JSON
  list) are parsed whole, one at a time: give large local corpora as ``.jsonl`` or ``.txt``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np

from llmpost.data.corpus import iter_paragraphs, load_texts, pack_dataset, pack_documents
from llmpost.data.files import load_jsonl
from llmpost.utils import DataError, StrEnum, parse_enum

logger = logging.getLogger(__name__)


class Packing(StrEnum):
    """Where the corpus is held while it is split and packed (see the module docstring)."""

    MEMORY = "memory"
    DISK = "disk"


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
    packing: Packing = field(default=Packing.MEMORY, metadata={"help": "memory | disk: hold the corpus in memory, or "
                             "in memory-mapped Arrow files for corpora that do not fit in memory (module docstring)."})
    packing_batch_documents: int = field(default=10_000, metadata={"help": "disk: documents packed together; the "
                                         "partial row at the end of each batch (< seq_length tokens) is dropped."})
    num_proc: int | None = field(default=None, metadata={"help": "disk: processes that clean and tokenise the corpus."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where datasets writes its Arrow files: hub downloads, "
                                  "and with packing: disk the corpus, tokens and rows (default: HF_DATASETS_CACHE)."})

    def __post_init__(self):
        self.packing = parse_enum("packing", self.packing, Packing)
        if not self.corpus_files and not self.dataset_name:
            raise DataError("corpus_files / dataset_name: no corpus given; set local files or a hub dataset id")
        if self.seq_length < 2:
            raise DataError(f"seq_length: must be >= 2, got {self.seq_length}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise DataError(f"validation_fraction: must be in [0, 1), got {self.validation_fraction}")
        if self.packing_batch_documents < 1:
            raise DataError(f"packing_batch_documents: must be >= 1, got {self.packing_batch_documents}")
        for name in ("max_documents", "validation_max_sequences", "num_proc"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DataError(f"{name}: must be >= 1 or unset, got {value}")


def load_corpus(args: PretrainArguments) -> list[str]:
    """The documents of every configured source, in order, exact duplicates dropped (``dedupe``)."""
    texts: list[str] = []
    for path in args.corpus_files:
        texts += load_texts(path, args.text_column)
    if args.dataset_name:
        ds = datasets.load_dataset(args.dataset_name, args.dataset_config, split=args.dataset_split,
                                   cache_dir=args.cache_dir)  # fmt: skip
        if args.text_column not in ds.column_names:
            raise DataError(f"dataset {args.dataset_name!r} lacks text_column {args.text_column!r}; it has {ds.column_names}")
        texts += [t.strip() for t in ds[args.text_column] if isinstance(t, str) and t.strip()]
    if args.dedupe:
        texts = list(dict.fromkeys(texts))
    if not texts:
        raise DataError("the corpus holds no text")
    return texts


def _split(n: int, args: PretrainArguments) -> tuple[int, int]:
    """``(n_val, n_used)`` of ``n`` shuffled documents: the first ``n_val`` are held out, the next up to ``n_used`` are
    trained on."""
    n_used = n if args.max_documents is None else min(n, args.max_documents)
    n_val = round(n_used * args.validation_fraction)
    if args.validation_fraction > 0 and n_val == 0:
        raise DataError(f"validation_fraction={args.validation_fraction} of {n_used} documents holds none; raise it")
    return n_val, n_used


def pretrain_splits(args: PretrainArguments, tokenizer) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """``(train, validation)`` packed rows; ``validation`` is None when ``validation_fraction`` is 0. Documents are
    shuffled with ``corpus_seed`` before the split (and before ``max_documents``). ``packing: disk`` holds the corpus
    on disk (the module docstring)."""
    if args.packing == Packing.DISK:
        with _local_main_process_first():
            return _disk_splits(args, tokenizer)
    texts = load_corpus(args)
    random.Random(args.corpus_seed).shuffle(texts)
    n_val, n_used = _split(len(texts), args)
    texts = texts[:n_used]
    train = pack_documents(texts[n_val:], tokenizer, args.seq_length, name="training corpus")
    if not n_val:
        return train, None
    val = pack_documents(texts[:n_val], tokenizer, args.seq_length, name="validation corpus")
    if args.validation_max_sequences is not None:
        val = val.select(range(min(len(val), args.validation_max_sequences)))
    return train, val


# ----- packing: disk ----------------------------------------------------------------------------------------------------

_TEXT_FEATURES = datasets.Features({"text": datasets.Value("string")})
_DOC_FEATURES = datasets.Features({"text": datasets.Value("string"), "h0": datasets.Value("uint64"),
                                   "h1": datasets.Value("uint64")})  # fmt: skip


def _local_main_process_first():
    """Under a distributed launch (its state set up by the training arguments), the local main process prepares the
    corpus files first and the other processes then load them from datasets' cache; otherwise nothing to wait for."""
    from accelerate import PartialState

    if not PartialState._shared_state:
        return contextlib.nullcontext()
    return PartialState().local_main_process_first()


def _clean_batch(texts: list, indices: list[int], where: str, column: str, strict: bool) -> dict:
    """Stripped non-blank documents and the two halves of their 128-bit BLAKE2b hash. ``strict``: a value that is not
    a string is an error (local files, as :func:`load_texts`); otherwise it is skipped (hub datasets, as ``memory``)."""
    kept = []
    for i, text in zip(indices, texts):
        if not isinstance(text, str):
            if strict:
                raise DataError(f"{where}: line {i + 1}: {column!r} is not a string")
            continue
        text = text.strip()
        if text:
            kept.append(text)
    digests = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in kept)
    halves = np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2)
    return {"text": kept, "h0": halves[:, 0], "h1": halves[:, 1]}


def _clean(ds: datasets.Dataset, column: str, where: str, args: PretrainArguments, strict: bool) -> datasets.Dataset:
    return ds.map(_clean_batch, batched=True, with_indices=True, input_columns=[column], remove_columns=ds.column_names,
                  features=_DOC_FEATURES, num_proc=args.num_proc, desc=f"reading {where}",
                  fn_kwargs={"where": where, "column": column, "strict": strict})  # fmt: skip


def _generated_texts(path: str, read: str, column: str, stamp: str):
    """``Dataset.from_generator``'s generator: the documents of one local file (``stamp``, its size and time, is only
    in the arguments to change the cache's fingerprint when the file changes)."""
    texts = iter_paragraphs(path) if read == "txt" else load_texts(path, column)
    for text in texts:
        yield {"text": text}


def _local_documents(path: str, args: PretrainArguments) -> datasets.Dataset:
    """One local file's documents as a cleaned, on-disk dataset (``text``, ``h0``, ``h1``); errors name the file."""
    file = Path(path)
    if file.suffix not in (".txt", ".json", ".jsonl"):
        load_texts(file)  # raises the memory path's error for a wrong suffix
    if not file.is_file():
        raise DataError(f"text corpus {path!r} does not exist")
    if file.suffix == ".jsonl":
        ds = load_jsonl(file, cache_dir=args.cache_dir)
        if args.text_column not in ds.column_names:
            raise DataError(f"{file} lacks column {args.text_column!r}; it has {ds.column_names}")
        column, strict = args.text_column, True
    else:
        if file.suffix == ".txt" and next(iter_paragraphs(file), None) is None:
            raise DataError(f"text corpus {file} holds no text")  # from_generator fails on a generator of nothing
        stat = file.stat()
        try:
            ds = datasets.Dataset.from_generator(
                _generated_texts, features=_TEXT_FEATURES, cache_dir=args.cache_dir,
                gen_kwargs={"path": str(file.resolve()), "read": file.suffix[1:], "column": args.text_column,
                            "stamp": f"{stat.st_size}:{stat.st_mtime_ns}"},
            )  # fmt: skip
        except datasets.exceptions.DatasetGenerationError as e:
            if isinstance(e.__cause__, DataError):
                raise e.__cause__ from None
            raise
        column, strict = "text", True
    docs = _clean(ds, column, str(file), args, strict)
    if not len(docs):
        raise DataError(f"text corpus {file} holds no text")
    return docs


def load_corpus_dataset(args: PretrainArguments) -> tuple[datasets.Dataset, np.ndarray]:
    """``packing: disk``'s :func:`load_corpus`: every source's documents in order, as one on-disk dataset
    (``text`` and its hash ``h0``, ``h1``), and the row numbers of the documents to use (those that are not exact
    duplicates of an earlier one when ``dedupe``; see the module docstring)."""
    parts = [_local_documents(path, args) for path in args.corpus_files]
    if args.dataset_name:
        ds = datasets.load_dataset(args.dataset_name, args.dataset_config, split=args.dataset_split,
                                   cache_dir=args.cache_dir)  # fmt: skip
        if args.text_column not in ds.column_names:
            raise DataError(f"dataset {args.dataset_name!r} lacks text_column {args.text_column!r}; it has {ds.column_names}")
        parts.append(_clean(ds, args.text_column, f"dataset {args.dataset_name!r}", args, strict=False))
    docs = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if not len(docs):
        raise DataError("the corpus holds no text")
    if not args.dedupe:
        return docs, np.arange(len(docs), dtype=np.int64)
    h0, h1 = (docs.data.column(c).to_numpy() for c in ("h0", "h1"))
    order = np.lexsort((h1, h0))  # stable: a duplicate sorts after the earlier copies of its text
    first = np.ones(len(order), dtype=bool)
    first[1:] = (h0[order][1:] != h0[order][:-1]) | (h1[order][1:] != h1[order][:-1])
    return docs, np.sort(order[first])


def _disk_splits(args: PretrainArguments, tokenizer) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    docs, keep = load_corpus_dataset(args)
    perm = array("q", range(len(keep)))
    random.Random(args.corpus_seed).shuffle(perm)  # the permutation ``memory`` applies to its list of documents
    order = keep[np.frombuffer(perm, dtype=np.int64)]
    n_val, n_used = _split(len(order), args)

    def pack(start: int, stop: int, name: str):
        fingerprint = datasets.fingerprint.Hasher.hash([docs._fingerprint, args.dedupe, args.corpus_seed, start, stop])
        split = docs.select(order[start:stop], new_fingerprint=fingerprint)
        return pack_dataset(split, tokenizer, args.seq_length, args.packing_batch_documents, args.num_proc, name)

    train, stats = pack(n_val, n_used, "training corpus")
    val, val_stats = pack(0, n_val, "validation corpus") if n_val else (None, None)
    line = "; ".join(f"{name}: {s.documents} documents, {s.tokens} tokens -> {s.rows} rows of {args.seq_length}, "
                     f"{s.dropped} tokens dropped ({s.dropped / s.tokens:.2%})"
                     for name, s in (("training", stats), ("validation", val_stats)) if s)  # fmt: skip
    logger.info("packed the corpus on disk (batches of %d documents): %s", args.packing_batch_documents, line)
    if val is not None and args.validation_max_sequences is not None:
        val = val.select(range(min(len(val), args.validation_max_sequences)))
    return train, val
