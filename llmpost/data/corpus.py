"""Raw-text corpora for language-model training and unlearning (MUSE's forget and retain sets): reading local text
files, and cutting a corpus into fixed-length token chunks the way MUSE's baselines do.

Local files (:func:`load_texts`), one document per:

* ``.txt``: paragraph separated by one or more blank lines (MUSE's ``load_data.py`` writes each corpus as its
  documents joined by ``"\\n\\n"``, so this reads those files back document by document);
* ``.json``: item of a list of strings (or of objects with a ``text`` string), as on the hub and in ``../shared``;
* ``.jsonl``: line, an object with a ``text`` string.

Chunking (:func:`chunk_texts`) follows muse_bench ``baselines/baselines/dataset.py`` (``DefaultDataset`` on a
``.txt`` corpus): the documents joined by ``"\\n\\n"`` are tokenised once without special tokens, cut into windows of
``max_length - 1`` tokens, each prefixed with BOS; the last, short window is filled up to ``max_length`` with the
first chunk's tokens (MUSE's "rotation"), so every chunk is exactly ``max_length`` long and nothing is padded. Labels
are every token (plain language modelling, as MUSE's GA/NPO losses use ``labels = input_ids``).

Packing (:func:`pack_documents` in memory, :func:`pack_dataset` batch by batch for corpora that do not fit there; both
cut documents into rows with :func:`pack_tokens`): ``BOS text EOS`` per document, concatenated, cut into rows of
``seq_length`` tokens with ``position_ids`` that restart at each row and each document; the partial row at the end is
dropped (of the corpus, or of each batch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from llmpost.data.files import load_jsonl, read_json
from llmpost.utils import DataError

TEXT_SUFFIXES = (".txt", ".json", ".jsonl")


def load_texts(path: str | Path, text_column: str = "text") -> list[str]:
    """The documents of a local text file (``.txt``, ``.json`` or ``.jsonl``; see the module docstring), objects'
    text read from ``text_column``. Blank documents are dropped; a file with none raises :class:`DataError`."""
    path = Path(path)
    if path.suffix not in TEXT_SUFFIXES:
        raise DataError(f"text corpus {str(path)!r}: expected a {', '.join(TEXT_SUFFIXES)} file")
    if not path.is_file():
        raise DataError(f"text corpus {str(path)!r} does not exist")
    if path.suffix == ".txt":
        try:
            texts = re.split(r"\n[ \t]*\n", path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    elif path.suffix == ".json":
        rows = read_json(path)
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of strings, got {type(rows).__name__}")
        texts = [r.get(text_column) if isinstance(r, dict) else r for r in rows]
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise DataError(f"{path}: item {bad} is not a string nor an object with a {text_column!r} string")
    else:
        ds = load_jsonl(path)
        if text_column not in ds.column_names:
            raise DataError(f"{path} lacks column {text_column!r}; it has {ds.column_names}")
        texts = list(ds[text_column])
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise DataError(f"{path}: line {bad + 1}: {text_column!r} is not a string")
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise DataError(f"text corpus {path} holds no text")
    return texts


def iter_paragraphs(path: str | Path):
    """The documents of a ``.txt`` file as :func:`load_texts` reads them (paragraphs separated by blank lines, stripped,
    blank ones dropped), streamed line by line so that the file need not fit in memory. A byte that is not UTF-8
    raises :class:`DataError` naming the file and the byte's offset."""
    path = Path(path)
    lines: list[str] = []
    with path.open(encoding="utf-8") as f:  # universal newlines, as Path.read_text
        try:
            for line in f:
                if line.strip(" \t\n"):
                    lines.append(line)
                    continue
                text = "".join(lines).strip()
                lines = []
                if text:
                    yield text
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 ({e.reason} at byte {_first_bad_utf8_byte(path)})") from None
    text = "".join(lines).strip()
    if text:
        yield text


def _first_bad_utf8_byte(path: Path) -> int:
    """The offset of the first byte of ``path`` that does not decode as UTF-8 (lines decode on their own: a newline
    byte is never part of a multi-byte character)."""
    offset = 0
    with path.open("rb") as f:
        for raw in f:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return offset + e.start
            offset += len(raw)
    return offset


def chunk_texts(texts: list[str], tokenizer, max_length: int, name: str = "corpus") -> datasets.Dataset:
    """Fixed-length chunks of a corpus as tokenised rows ``{input_ids, labels, attention_mask, index}`` (see the module
    docstring). Raises :class:`DataError` naming ``name`` when the corpus tokenises to no token."""
    if max_length < 2:
        raise DataError(f"{name}: max_length must be >= 2 to hold BOS and a token, got {max_length}")
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    if not ids:
        raise DataError(f"{name}: the texts tokenise to no token; nothing to train on")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    width = max_length - len(bos)
    chunks = [bos + ids[i : i + width] for i in range(0, len(ids), width)]
    if len(chunks[-1]) < max_length:  # muse_bench: concat the first chunk onto the last, cut to max_length
        chunks[-1] = (chunks[-1] + chunks[0] * (max_length // len(chunks[0]) + 1))[:max_length]
    return datasets.Dataset.from_dict({
        "input_ids": chunks, "labels": [list(c) for c in chunks], "attention_mask": [[1] * len(c) for c in chunks],
        "index": list(range(len(chunks))),
    })  # fmt: skip


def document_tokens(texts: list[str], tokenizer) -> list[list[int]]:
    """Each document tokenised as ``BOS text EOS`` (the special tokens the tokenizer has)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"] if len(texts) else []
    return [bos + doc + eos for doc in encoded]


def pack_tokens(tokens: np.ndarray, lengths: np.ndarray, seq_length: int) -> tuple[np.ndarray, np.ndarray]:
    """The packing itself, shared by :func:`pack_documents` (in memory) and :func:`pack_dataset` (on disk, per batch of
    documents): documents given as their concatenated ``tokens`` and their ``lengths`` (in order) cut into
    ``(input_ids, position_ids)``, two ``(rows, seq_length)`` arrays with ``rows = len(tokens) // seq_length``; the
    last partial row is dropped. ``position_ids`` restart at 0 at the start of each row and of each document."""
    rows = len(tokens) // seq_length
    kept = rows * seq_length
    starts = np.cumsum(lengths) - lengths  # each document's first token in ``tokens``
    is_start = np.zeros(kept, dtype=bool)
    is_start[starts[starts < kept]] = True
    is_start = is_start.reshape(rows, seq_length)
    is_start[:, 0] = True  # positions also restart at every row
    index = np.broadcast_to(np.arange(seq_length), (rows, seq_length))
    last_start = np.maximum.accumulate(np.where(is_start, index, 0), axis=1)
    return tokens[:kept].reshape(rows, seq_length), index - last_start


def _too_short(name: str, tokens: int, documents: int, seq_length: int) -> DataError:
    return DataError(f"{name}: {tokens} tokens from {documents} documents, fewer than one sequence of "
                     f"seq_length={seq_length}; add text or lower seq_length")  # fmt: skip


def pack_documents(texts: list[str], tokenizer, seq_length: int, name: str = "corpus") -> datasets.Dataset:
    """Pretraining rows: every document tokenised as ``BOS text EOS`` (the special tokens the tokenizer has),
    concatenated in order and cut into rows of exactly ``seq_length`` tokens; the last partial row is dropped (no
    padding, as in the reweighting authors' and most pretraining pipelines). Rows hold ``input_ids``, ``labels``
    (= ``input_ids``: every token is predicted), ``position_ids`` (restarting at 0 at the start of each row and of
    each document in it, so that per-document losses can be told apart and a padding-free attention kernel can keep
    documents apart) and
    ``index``. Raises :class:`DataError` naming ``name`` if the corpus is shorter than one row. In memory: for a
    corpus that does not fit there, see :func:`pack_dataset`."""
    if seq_length < 2:
        raise DataError(f"{name}: seq_length must be >= 2, got {seq_length}")
    docs = document_tokens(texts, tokenizer)
    lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
    total = int(lengths.sum())
    if total < seq_length:
        raise _too_short(name, total, len(texts), seq_length)
    ids = np.fromiter((t for d in docs for t in d), dtype=np.int64, count=total)
    input_ids, position_ids = pack_tokens(ids, lengths, seq_length)
    return datasets.Dataset.from_dict({  # numpy in: arrow columns without Python lists of every token
        "input_ids": input_ids, "labels": input_ids, "position_ids": position_ids, "index": np.arange(len(input_ids)),
    })  # fmt: skip


@dataclass(frozen=True)
class PackStats:
    """What :func:`pack_dataset` packed: ``tokens`` of ``documents`` (BOS and EOS included) into ``rows``;
    ``dropped`` tokens, the partial row at the end of each batch, are in no row."""

    documents: int
    tokens: int
    rows: int
    dropped: int


def _tokenize_batch(texts: list[str], tokenizer) -> dict:
    return {"ids": document_tokens(texts, tokenizer)}


def _pack_batch(batch: pa.Table, seq_length: int) -> dict:
    ids = batch.column("ids").combine_chunks()
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
    input_ids, position_ids = pack_tokens(ids.flatten().to_numpy(zero_copy_only=False), lengths, seq_length)
    return {"input_ids": input_ids, "labels": input_ids, "position_ids": position_ids}


def pack_dataset(documents: datasets.Dataset, tokenizer, seq_length: int, batch_documents: int = 10_000,
                 num_proc: int | None = None, name: str = "corpus",
                 text_column: str = "text") -> tuple[datasets.Dataset, PackStats]:  # fmt: skip
    """:func:`pack_documents` for a corpus that need not fit in memory: the documents (``text_column`` of
    ``documents``, in order) are tokenised by ``Dataset.map`` (``num_proc`` processes) and each batch of
    ``batch_documents`` consecutive documents is packed on its own by :func:`pack_tokens`, so that only one batch is
    ever in memory; with a memory-mapped ``documents`` (a hub dataset, ``datasets.load_dataset``, ``from_generator``)
    the tokens and rows are written next to its Arrow files (datasets' cache) and reused by a later call with the same
    input. Rows have the same columns, values and ``position_ids`` as :func:`pack_documents` (stored as int32, the
    ``index`` as int64); when one batch holds every document they are the same rows.

    The cost of batching: the partial row at the end of each batch is dropped, at most ``seq_length - 1`` tokens per
    batch (with ``num_proc`` each process's shard of the documents is batched on its own). ``PackStats.dropped``
    counts them (in all, also the last partial row that :func:`pack_documents` drops). Raises :class:`DataError`
    naming ``name`` if no row comes out."""
    if seq_length < 2:
        raise DataError(f"{name}: seq_length must be >= 2, got {seq_length}")
    if not len(documents):
        raise _too_short(name, 0, 0, seq_length)
    ids = datasets.List(datasets.Value("int32"))
    tokens = documents.map(
        _tokenize_batch, batched=True, batch_size=1000, num_proc=num_proc, input_columns=[text_column],
        remove_columns=documents.column_names, features=datasets.Features({"ids": ids}),
        fn_kwargs={"tokenizer": tokenizer}, desc=f"tokenising {name}",
    )  # fmt: skip
    total = int(pc.sum(pc.list_value_length(tokens.data.column("ids"))).as_py() or 0)
    if total < seq_length:
        raise _too_short(name, total, len(documents), seq_length)
    rows = tokens.with_format("arrow").map(
        _pack_batch, batched=True, batch_size=batch_documents, num_proc=num_proc, remove_columns=["ids"],
        features=datasets.Features({"input_ids": ids, "labels": ids, "position_ids": ids}),
        fn_kwargs={"seq_length": seq_length}, desc=f"packing {name}",
    ).with_format(None)  # fmt: skip
    if not len(rows):
        raise DataError(f"{name}: {total} tokens from {len(documents)} documents fill no row of seq_length="
                        f"{seq_length}: each batch of {batch_documents} documents is packed on its own and holds fewer "
                        "tokens than that; raise the batch size (packing_batch_documents) or lower seq_length")
    rows = rows.add_column("index", np.arange(len(rows), dtype=np.int64))
    return rows, PackStats(len(documents), total, len(rows), total - len(rows) * seq_length)
