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
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets

from .files import DataError, load_jsonl, read_json

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


def pack_documents(texts: list[str], tokenizer, seq_length: int, name: str = "corpus") -> datasets.Dataset:
    """Pretraining rows: every document tokenised as ``BOS text EOS`` (the special tokens the tokenizer has),
    concatenated in order and cut into rows of exactly ``seq_length`` tokens; the last partial row is dropped (no
    padding, as in the reweighting authors' and most pretraining pipelines). Rows hold ``input_ids``, ``labels``
    (= ``input_ids``: every token is predicted), ``position_ids`` (restarting at 0 at the start of each row and of
    each document in it, so that per-document losses can be told apart and a padding-free attention kernel can keep
    documents apart) and
    ``index``. Raises :class:`DataError` naming ``name`` if the corpus is shorter than one row."""
    if seq_length < 2:
        raise DataError(f"{name}: seq_length must be >= 2, got {seq_length}")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    import numpy as np

    encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    docs = [bos + doc + eos for doc in encoded]
    total = sum(len(d) for d in docs)
    rows = total // seq_length
    if rows == 0:
        raise DataError(f"{name}: {total} tokens from {len(texts)} documents, fewer than one sequence of "
                        f"seq_length={seq_length}; add text or lower seq_length")
    ids = np.fromiter((t for d in docs for t in d), dtype=np.int64, count=total)[: rows * seq_length]
    is_start = np.zeros(total, dtype=bool)
    is_start[np.cumsum([0] + [len(d) for d in docs[:-1]])] = True
    is_start = is_start[: rows * seq_length].reshape(rows, seq_length)
    is_start[:, 0] = True  # positions also restart at every row
    index = np.broadcast_to(np.arange(seq_length), (rows, seq_length))
    last_start = np.maximum.accumulate(np.where(is_start, index, 0), axis=1)
    input_ids = ids.reshape(rows, seq_length)
    position_ids = index - last_start
    return datasets.Dataset.from_dict({  # numpy in: arrow columns without Python lists of every token
        "input_ids": input_ids, "labels": input_ids, "position_ids": position_ids, "index": np.arange(rows),
    })  # fmt: skip
