"""MUSE-News (arXiv 2407.06460): loading the evaluation sets, and tokenising them as each protocol does.

Splits are named as on the hub (``muse-bench/MUSE-News``: subset ``verbmem`` split ``forget``; ``knowmem``:
``forget_qa``, ``retain_qa``, ``forget_qa_icl``, ``retain_qa_icl``; ``privleak``: ``forget``, ``retain``,
``holdout``; ``raw``: ``forget``, ...). With ``data_dir`` they are read from the offline layout of
``../shared/data/muse_news`` (JSON files, not JSON lines): ``verbmem/forget.json`` ({prompt, gt} objects),
``knowmem/forget_qa.json`` and ``knowmem/retain2_qa.json`` ({question, answer}), ``knowmem/*_icl.json``,
``privleak/{forget,retain2,holdout}.json``, ``raw/{forget,retain1,retain2,holdout}.json`` and
``sust/forget_{1..4}.json`` (lists of strings). The names that muse_bench's own
``load_data.py`` writes (``knowmem/retain_qa.json``, ``privleak/retain.json``) are accepted too. Without ``data_dir``
the hub dataset is loaded. Rows come back as dicts; a string list becomes ``{"text": ...}`` rows (the hub column).

The tokenisation functions (:func:`verbmem_item`, :func:`knowmem_item`, :func:`privleak_item`) implement the two
protocols described in :mod:`llmpost.benchmarks.muse.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import datasets

from llmpost.data.files import read_json
from llmpost.utils import DataError, StrEnum

MUSE_NEWS_HUB_ID = "muse-bench/MUSE-News"
KNOWMEM_STOPS = ("\n\n", "\nQuestion", "Question:")  # muse_bench metrics/knowmem.py, cut in this order
OU_KNOWMEM_MAX_LENGTH = 512  # open-unlearning configs/data/datasets/MUSE_{forget,retain}_knowmem.yaml
OU_TEXT_MAX_LENGTH = 2048  # open-unlearning configs/data/datasets/MUSE_{MIA,forget_verbmem}.yaml

# (subset, split) -> (local files, first existing wins; required columns, None for a list of strings)
_SPLITS: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    ("verbmem", "forget"): (("verbmem/forget.json",), ("prompt", "gt")),
    ("knowmem", "forget_qa"): (("knowmem/forget_qa.json",), ("question", "answer")),
    ("knowmem", "forget_qa_icl"): (("knowmem/forget_qa_icl.json",), ("question", "answer")),
    ("knowmem", "retain_qa"): (("knowmem/retain2_qa.json", "knowmem/retain_qa.json"), ("question", "answer")),
    ("knowmem", "retain_qa_icl"): (("knowmem/retain2_qa_icl.json", "knowmem/retain_qa_icl.json"),
                                   ("question", "answer")),
    ("privleak", "forget"): (("privleak/forget.json",), None),
    ("privleak", "retain"): (("privleak/retain2.json", "privleak/retain.json"), None),
    ("privleak", "holdout"): (("privleak/holdout.json",), None),
    ("raw", "forget"): (("raw/forget.json",), None),
    ("raw", "retain1"): (("raw/retain1.json",), None),
    ("raw", "retain2"): (("raw/retain2.json",), None),
    ("raw", "holdout"): (("raw/holdout.json",), None),
    **{("sust", f"forget_{k}"): ((f"sust/forget_{k}.json",), None) for k in range(1, 5)},
    **{("scal", f"forget_{k}"): ((f"scal/forget_{k}.json",), None) for k in range(1, 5)},
}  # fmt: skip


class MuseProtocol(StrEnum):
    """Whose MUSE code the numbers reproduce (the differences are listed in :mod:`llmpost.benchmarks.muse.evaluate`)."""

    MUSE = "muse"  # the benchmark's own code, swj0419/muse_bench metrics/*.py
    OPEN_UNLEARNING = "open_unlearning"  # locuslab/open-unlearning's port (configs/eval/muse_metrics/*.yaml)


def _check_rows(rows, where: str, columns: tuple[str, ...] | None) -> list[dict]:
    if not isinstance(rows, list):
        raise DataError(f"{where}: expected a JSON list, got {type(rows).__name__}")
    out = []
    for i, row in enumerate(rows):
        if columns is None:
            row = row.get("text") if isinstance(row, dict) else row
            if not isinstance(row, str):
                raise DataError(f"{where}: item {i} is not a string (expected a list of texts)")
            out.append({"text": row})
            continue
        if not isinstance(row, dict):
            raise DataError(f"{where}: item {i} is {type(row).__name__}, expected an object with {list(columns)}")
        missing = [c for c in columns if not isinstance(row.get(c), str)]
        if missing:
            raise DataError(f"{where}: item {i} lacks string column(s) {missing}; it has {sorted(row)}")
        out.append({c: row[c] for c in columns})
    if not out:
        raise DataError(f"{where}: no rows")
    return out


def load_muse_split(subset: str, split: str, data_dir: str | Path | None = None) -> list[dict]:
    """Rows of one MUSE-News split, from ``data_dir`` (module layout) or, when it is ``None``, from the hub.

    Raises :class:`DataError` naming the subset, split and file (and what is available) when the split, a file or a
    column is missing or malformed.
    """
    if (subset, split) not in _SPLITS:
        known = ", ".join(f"{a}/{b}" for a, b in _SPLITS)
        raise DataError(f"unknown MUSE split {subset}/{split}; known: {known}")
    files, columns = _SPLITS[(subset, split)]
    if data_dir is None:
        try:
            ds = datasets.load_dataset(MUSE_NEWS_HUB_ID, subset, split=split)
        except Exception as e:  # hub errors vary (offline, missing config or split): one line naming what was asked
            raise DataError(f"could not load {MUSE_NEWS_HUB_ID} subset {subset!r} split {split!r}: {e}") from e
        needed = columns or ("text",)
        missing = [c for c in needed if c not in ds.column_names]
        if missing:
            raise DataError(f"{MUSE_NEWS_HUB_ID} {subset}/{split} lacks column(s) {missing}; it has {ds.column_names}")
        rows = ds.to_list()
        where = f"{MUSE_NEWS_HUB_ID} {subset}/{split}"
        return _check_rows([r["text"] for r in rows] if columns is None else rows, where, columns)
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"MUSE data_dir {str(root)!r} does not exist or is not a directory")
    for name in files:
        if (root / name).is_file():
            return _check_rows(read_json(root / name), str(root / name), columns)
    folder = root / subset
    available = sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []
    raise DataError(
        f"MUSE {subset}/{split}: no {' or '.join(files)} in {str(root)!r}; "
        + (f"{subset}/ holds {available}" if available else f"there is no {subset}/ folder with JSON files")
    )


# ----------------------------------------------------------------------------------------------------------------------
# Tokenisation per protocol


@dataclass
class GenerationItem:
    """One greedy-generation example: the prompt's token ids, the prompt as logged, and the reference text."""

    prompt_ids: list[int]
    input_text: str
    ground_truth: str


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=True)


def verbmem_reference(tokenizer, gt: str, max_tokens: int) -> str:
    """MUSE's VerbMem reference: ``gt`` tokenised with special tokens (BOS counts), cut to its first ``max_tokens`` ids,
    decoded without special tokens. Source: muse_bench ``metrics/verbmem.py`` (``gt_ids[:, :max_new_tokens]``)."""
    return _decode(tokenizer, tokenizer(gt, add_special_tokens=True)["input_ids"][:max_tokens])


def verbmem_item(tokenizer, prompt: str, gt: str, protocol: MuseProtocol, max_new_tokens: int) -> GenerationItem:
    """A VerbMem example. ``muse``: the prompt tokenised with special tokens (BOS + prompt for Llama), no truncation;
    reference :func:`verbmem_reference`. ``open_unlearning`` (``CompletionDataset`` with ``insert_space``,
    ``max_length=2048``): reference = the tokens of ``prompt + " " + gt`` after the prompt's length, at most 2048,
    decoded, with the decoded prompt removed, stripped."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if MuseProtocol(protocol) == MuseProtocol.MUSE:
        return GenerationItem(list(prompt_ids), prompt, verbmem_reference(tokenizer, gt, max_new_tokens))
    full = tokenizer(prompt + " " + gt, add_special_tokens=True)["input_ids"][: len(prompt_ids) + OU_TEXT_MAX_LENGTH]
    input_text = _decode(tokenizer, prompt_ids)
    reference = _decode(tokenizer, full[len(prompt_ids) :]).replace(input_text, "").strip()
    return GenerationItem(list(prompt_ids), input_text, reference)


def knowmem_prompt(icl: list[dict], question: str) -> str:
    """``"Question: {q}\\nAnswer: {a}\\n\\n"`` for each in-context pair in file order, then
    ``"Question: {question}\\nAnswer: "``. Source: muse_bench ``metrics/knowmem.py`` (open-unlearning's base-model
    template builds the same string)."""
    shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in icl)
    return shots + f"Question: {question}\nAnswer: "


def cut_knowmem_output(text: str) -> str:
    """The generation before the first ``"\\n\\n"``, then before ``"\\nQuestion"``, then before ``"Question:"``
    (muse_bench ``metrics/knowmem.py``, ``get_prefix_before_words_occur``)."""
    for word in KNOWMEM_STOPS:
        text = text.split(word)[0]
    return text


def knowmem_item(tokenizer, icl: list[dict], question: str, answer: str, protocol: MuseProtocol) -> GenerationItem:
    """A KnowMem example. ``muse``: :func:`knowmem_prompt` tokenised with special tokens, untruncated; reference the
    ``answer`` string. ``open_unlearning`` (``preprocess_chat_instance``): prompt and prompt + answer each truncated to
    512 tokens (from the right, so a long prompt loses its question); EOS appended to the latter; reference = its
    decoding with the decoded prompt removed, stripped (empty when the prompt was truncated)."""
    prompt = knowmem_prompt(icl, question)
    if MuseProtocol(protocol) == MuseProtocol.MUSE:
        return GenerationItem(list(tokenizer(prompt, add_special_tokens=True)["input_ids"]), prompt, answer)
    kw = {"add_special_tokens": True, "max_length": OU_KNOWMEM_MAX_LENGTH, "truncation": True}
    prompt_ids = tokenizer(prompt, **kw)["input_ids"]
    full = tokenizer(prompt + answer, **kw)["input_ids"]
    if full[-1] != tokenizer.eos_token_id:
        full = full + [tokenizer.eos_token_id]
    input_text = _decode(tokenizer, prompt_ids)
    return GenerationItem(list(prompt_ids), input_text, _decode(tokenizer, full).replace(input_text, "").strip())


@dataclass
class ScoreItem:
    """One PrivLeak text: token ids, and the positions ``[first, end)`` whose token log-probs the Min-K score uses."""

    input_ids: list[int]
    first: int
    end: int


def privleak_item(tokenizer, text: str, protocol: MuseProtocol) -> ScoreItem:
    """``muse`` (muse_bench ``metrics/privleak.py``, ``compute_ppl``): ``tokenizer.encode(text)`` (BOS + text), every
    token after the first scored. ``open_unlearning`` (``CompletionDataset`` with ``max_length=2048`` and
    ``tokenwise_logprobs``): the text truncated to 2048 tokens after the BOS, and the last token's log-prob left out
    (its "ignore EOS" rule, although a completion has no EOS)."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if MuseProtocol(protocol) == MuseProtocol.MUSE:
        return ScoreItem(ids, 1, len(ids))
    prefix = len(tokenizer("", add_special_tokens=True)["input_ids"])
    ids, first = ids[: prefix + OU_TEXT_MAX_LENGTH], max(1, prefix)
    return ScoreItem(ids, first, max(first, len(ids) - 1))


# ----------------------------------------------------------------------------------------------------------------------
# Training data options (recipes/finetune_muse.py, recipes/npo_muse.py)

DEFAULT_TEMPLATE_ANSWERS = (  # llmpost's built-in template answers for FLAT / IdkDPO on raw text (no MUSE source)
    "I don't know.",
    "I'm not sure.",
    "I have no information about this.",
    "I cannot recall anything about this.",
    "I'm unable to continue this text.",
)


def muse_texts(split: str, data_dir: str | Path | None = None) -> list[str]:
    """The texts of a MUSE raw-text split named ``subset/split`` (``raw/forget``, ``sust/forget_2``, ...)."""
    subset, _, name = split.partition("/")
    if not name:
        raise DataError(f"MUSE split {split!r}: expected 'subset/split', e.g. 'raw/forget' or 'sust/forget_2'")
    rows = load_muse_split(subset, name, data_dir)
    if "text" not in rows[0]:
        raise DataError(f"MUSE split {split!r} is not a text corpus (its rows have {sorted(rows[0])})")
    return [r["text"] for r in rows]


@dataclass
class MuseArguments:
    """Data and evaluation options of the MUSE recipes."""

    data_dir: str | None = field(default=None, metadata={"help": f"MUSE-News directory (../shared layout); unset: hub {MUSE_NEWS_HUB_ID}."})
    forget_split: str = field(default="raw/forget", metadata={"help": "Forget corpus, 'subset/split' (MUSE: raw/forget)."})
    forget_file: str | None = field(
        default=None, metadata={"help": "A local forget corpus (.txt, .json, .jsonl; llmpost.data.corpus); replaces forget_split (e.g. WMDP's corpora for RMU)."})
    forget_text_indices: list[int] | None = field(
        default=None, metadata={"help": "Only these documents of the forget corpus (tiny runs); unset: all."})
    retain_split: str | None = field(
        default="raw/retain1", metadata={"help": "Retain corpus, 'subset/split' (MUSE: raw/retain1); see retain_file."})
    retain_file: str | None = field(
        default=None, metadata={"help": "A local retain corpus (.txt, .json, .jsonl; llmpost.data.corpus); replaces retain_split."})
    max_retain_texts: int | None = field(default=None, metadata={"help": "Only the first N retain documents; unset: all."})
    template_answers_path: str | None = field(
        default=None, metadata={"help": "FLAT / IdkDPO / AltPO template answers, one per line; unset: llmpost's built-in list."})
    template_prompt_tokens: int = field(
        default=32, metadata={"help": "FLAT / IdkDPO / AltPO: the first N tokens of a chunk are the prompt of its template answer."})
    sustainability: bool = field(
        default=False, metadata={"help": "MUSE C6: unlearn sust/forget_1..sust_requests one after another."})
    sust_requests: int = field(default=4, metadata={"help": "Number of sequential requests (MUSE: 4)."})
    retain_logs_path: str | None = field(default=None, metadata={"help": "Retrained model's MUSE_EVAL.json (privleak's reference AUC)."})
    mia_reference_model_path: str | None = field(
        default=None, metadata={"help": "Reference model of the eval's mia_reference (e.g. the retrained model); unset: none."})
    eval_after_training: bool = field(default=True, metadata={"help": "Run the MUSE evaluation on the saved model."})
    eval_protocol: str = field(default="muse", metadata={"help": "muse (the benchmark's code) or open_unlearning."})
    eval_max_examples: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N rows of each split (smoke tests; not the benchmark)."})
    eval_verbmem_max_new_tokens: int = field(default=128, metadata={"help": "VerbMem generation length (MUSE: 128)."})
    eval_knowmem_max_new_tokens: int = field(default=32, metadata={"help": "KnowMem generation length (MUSE: 32)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into an output_dir that holds results."})

    def __post_init__(self):
        if self.eval_protocol not in {p.value for p in MuseProtocol}:
            raise ValueError(f"eval_protocol: must be one of {[p.value for p in MuseProtocol]}, got {self.eval_protocol!r}")
        for name in ("template_prompt_tokens", "eval_verbmem_max_new_tokens", "eval_knowmem_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.sust_requests <= 4:
            raise ValueError(f"sust_requests: must be in [1, 4] (MUSE-News has sust/forget_1..4), got {self.sust_requests}")
        for name in ("max_retain_texts", "eval_max_examples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
