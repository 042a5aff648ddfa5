"""MATH (Hendrycks et al., arXiv 2103.03874): problems from a local JSON-lines file or the hub, prompts, training targets;
and a seeded synthetic arithmetic task in the same format for CPU-scale runs.

Rows have MATH-500's columns: ``problem``, ``solution``, ``answer``, ``subject``, ``level``, ``unique_id``. The local
copies live in ``../shared/data/math/`` (``math500_test.jsonl``, ``train12k.jsonl``); a value that is not an existing
path and looks like ``org/name`` is loaded from the hub (``HuggingFaceH4/MATH-500``), only when given.

Prompts reuse the TOFU template fields (:class:`llmpost.data.templates.TemplateArgs`): for base models
``user_start_tag + problem + user_end_tag + asst_start_tag``, for instruct models the tokenizer's chat template
(``apply_chat_template``). Presets, set in the YAML configs:

* the default asks for a final answer in ``\\boxed{}``: ``"Problem: "``, ``"\\nGive the final answer in
  \\\\boxed{}.\\n"``, ``"Solution: "``;
* DCO's direct-answer prompt (the authors' ``math_no_COT`` template, ``allanraventos/refine``,
  ``refine/training/registry.py``): ``"Please give the answer to the following question directly! No need to write any
  steps.\\nQuestion: "``, ``"\\n"``, ``"Answer: "``, with the target ``$answer$`` (:class:`MathTarget`).

``problem_template`` (default ``"{problem}"``) wraps the problem text before either path, so a chat model's single user
turn can carry an instruction, e.g. the noisy-GRPO paper's E.1 template (arXiv 2510.00915): the problem, then "Let's
think step by step ... MUST BE within \\boxed{}." (``configs/grpo_noisy_math.yaml``).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field

import datasets

from llmpost.data.files import load_jsonl
from llmpost.data.templates import TemplateArgs, chat_messages, encode_prompt, encode_qa, wrap_question
from llmpost.utils import DataError, StrEnum, parse_enum

logger = logging.getLogger(__name__)

MATH_COLUMNS = ("problem", "solution", "answer", "subject", "level", "unique_id")
MATH500_HUB_ID = "HuggingFaceH4/MATH-500"


class MathTask(StrEnum):
    """Where the recipes' problems come from: ``math`` (``train_file`` / ``eval_file``) or ``arithmetic`` (the seeded
    synthetic task of :func:`arithmetic_problems`)."""

    MATH = "math"
    ARITHMETIC = "arithmetic"


class MathTarget(StrEnum):
    """What a training example's answer is: the worked ``solution`` (ends in ``\\boxed{}``), the final answer alone as
    ``$answer$`` (``direct``, the DCO paper's direct-answer setting: the authors' ``answer_s`` column), or
    ``\\boxed{answer}`` (``boxed``)."""

    SOLUTION = "solution"
    DIRECT = "direct"
    BOXED = "boxed"


def problem_text(template, problem: str) -> str:
    """``problem`` through the template's ``problem_template`` (``{problem}`` replaced by it; other braces, such as
    ``\\boxed{}``, are kept as written). A template without the field (a plain ``TemplateArgs``) leaves it unchanged."""
    return getattr(template, "problem_template", "{problem}").replace("{problem}", problem)


def target_text(row: dict, target: MathTarget | str) -> str:
    """The training answer of one row for ``target``."""
    match MathTarget(target):
        case MathTarget.SOLUTION:
            return row["solution"]
        case MathTarget.DIRECT:
            return f"${row['answer']}$"
        case MathTarget.BOXED:
            return f"\\boxed{{{row['answer']}}}"


def load_math(source: str, required=("problem", "answer", "unique_id")) -> datasets.Dataset:
    """MATH-format problems from a local ``.jsonl`` file, or from a hub dataset id (its ``test`` split, else ``train``).

    Raises :class:`DataError` naming the file for a missing file, a malformed line, missing columns or duplicate
    ``unique_id`` values.
    """
    if os.path.exists(source) or source.endswith((".jsonl", ".json")) or source.count("/") != 1:
        ds = load_jsonl(source)
        where = source
    else:  # a hub id, used only when the user gave one
        loaded = datasets.load_dataset(source)
        split = "test" if "test" in loaded else "train"
        ds, where = loaded[split], f"{source} ({split})"
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise DataError(f"{where}: lacks column(s) {missing}; it has {ds.column_names}")
    if "unique_id" in ds.column_names:
        ids = ds["unique_id"]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DataError(f"{where}: unique_id {dup!r} occurs more than once")
    return ds


def arithmetic_problems(split: str, size: int, seed: int = 0, max_operand: int = 30) -> list[dict]:
    """A synthetic addition task in MATH's format, for runs on a tiny model on CPU.

    Every ordered pair ``(a, b)`` with ``0 <= a, b <= max_operand`` is one problem "What is a + b?" with the answer
    ``a + b`` and the solution ``\\boxed{a + b}``. The pairs are shuffled with ``seed``; ``test`` takes the first ``size``
    of them and ``train`` the next ``size`` (so the splits never share a problem, for any two sizes). ``level`` is
    1 + the number of carries, ``subject`` is ``"Arithmetic"``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"arithmetic split must be 'train' or 'test', got {split!r}")
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    random.Random(seed).shuffle(pairs)
    half = len(pairs) // 2
    if not 1 <= size <= half:
        raise ValueError(f"arithmetic size must be in [1, {half}] for max_operand={max_operand}, got {size}")
    chosen = pairs[:size] if split == "test" else pairs[half : half + size]
    rows = []
    for i, (a, b) in enumerate(chosen):
        rows.append({"problem": f"What is {a} + {b}?", "solution": f"\\boxed{{{a + b}}}", "answer": str(a + b),
                     "subject": "Arithmetic", "level": 1 + _carries(a, b), "unique_id": f"arithmetic/{split}/{i:05d}"})  # fmt: skip
    return rows


def _carries(a: int, b: int) -> int:
    count = carry = 0
    while a or b:
        carry = int(a % 10 + b % 10 + carry >= 10)
        count += carry
        a, b = a // 10, b // 10
    return count


@dataclass
class MathTemplateArgs(TemplateArgs):
    """The prompt template (:class:`TemplateArgs`' fields) with the default MATH prompt asking for ``\\boxed{}``."""

    user_start_tag: str = field(default="Problem: ", metadata={"help": "Text before the problem (base models)."})
    user_end_tag: str = field(default="\nGive the final answer in \\boxed{}.\n", metadata={"help": "Text after the problem."})
    asst_start_tag: str = field(default="Solution: ", metadata={"help": "Text before the answer (base models)."})
    problem_template: str = field(default="{problem}", metadata={"help": "The problem's text in the prompt (chat: the "
                                  "user turn); {problem} is replaced by the problem."})

    def __post_init__(self):
        if "{problem}" not in self.problem_template:
            raise ValueError(f"problem_template: must contain {{problem}}, got {self.problem_template!r}")


@dataclass
class MathArguments(MathTemplateArgs):
    """Data, prompt and evaluation options of the MATH recipes (the prompt template fields are inherited)."""

    task: MathTask = field(default=MathTask.MATH, metadata={"help": "'math' (train_file / eval_file) or 'arithmetic' (synthetic, seeded)."})
    train_file: str = field(default="../shared/data/math/train12k.jsonl", metadata={"help": "Training problems (.jsonl or hub id)."})
    eval_file: str = field(default="../shared/data/math/math500_test.jsonl", metadata={"help": "Evaluation problems (.jsonl or hub id)."})
    target: MathTarget = field(default=MathTarget.DIRECT, metadata={"help": "Training answer: solution | direct ($answer$) | boxed."})
    arithmetic_seed: int = field(default=0, metadata={"help": "Synthetic task: the seed of the problem shuffle."})
    arithmetic_max_operand: int = field(default=30, metadata={"help": "Synthetic task: operands are 0..this."})
    arithmetic_train_size: int = field(default=400, metadata={"help": "Synthetic task: training problems."})
    arithmetic_test_size: int = field(default=64, metadata={"help": "Synthetic task: evaluation problems."})
    eval_after_training: bool = field(default=True, metadata={"help": "Evaluate pass@k on eval_file after training."})
    eval_num_samples: int = field(default=16, metadata={"help": "Samples per problem (n of pass@k)."})
    eval_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (0: greedy)."})
    eval_top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    eval_max_new_tokens: int = field(default=32, metadata={"help": "Generation length (direct answers are short)."})
    eval_seed: int = field(default=0, metadata={"help": "Seed of the evaluation samples."})
    eval_max_problems: int | None = field(default=None, metadata={"help": "Evaluate the first N problems only (smoke runs)."})
    generation_backend: str = field(default="transformers", metadata={"help": "'transformers' or 'vllm' (GPU, optional)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Allow writing into an output_dir that holds results."})
    max_prompt_tokens: int | None = field(default=None, metadata={"help": "GRPO: drop training problems whose prompt is "
                                          "longer than this many tokens (None: keep all)."})

    def __post_init__(self):
        super().__post_init__()
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens: must be >= 1 or null, got {self.max_prompt_tokens}")
        for name, enum in (("target", MathTarget), ("task", MathTask)):
            setattr(self, name, parse_enum(name, getattr(self, name), enum))
        if self.eval_num_samples < 1:
            raise ValueError(f"eval_num_samples: must be >= 1, got {self.eval_num_samples}")
        if self.eval_temperature < 0:
            raise ValueError(f"eval_temperature: must be >= 0, got {self.eval_temperature}")

    def problems(self, split: str) -> datasets.Dataset:
        """The ``train`` or ``test`` problems of the configured task."""
        if self.task == MathTask.ARITHMETIC:
            size = self.arithmetic_train_size if split == "train" else self.arithmetic_test_size
            rows = arithmetic_problems(split, size, self.arithmetic_seed, self.arithmetic_max_operand)
            return datasets.Dataset.from_list(rows)
        if split == "train":  # training rows need no unique_id (e.g. agentica-org/DeepScaleR-Preview-Dataset has none)
            ds = load_math(self.train_file, required=("problem", "answer"))
            missing = [c for c in ("solution",) if self.target == MathTarget.SOLUTION and c not in ds.column_names]
            if missing:
                raise DataError(f"{self.train_file}: target 'solution' needs a 'solution' column")
            return ds
        return load_math(self.eval_file)


def tokenize_math(ds: datasets.Dataset, tokenizer, template: TemplateArgs, target: MathTarget | str,
                  max_length: int, generation_columns: bool = False) -> datasets.Dataset:
    """Tokenised training rows (``input_ids``, ``labels`` over the answer + EOS only, ``attention_mask``, ``index``).

    ``generation_columns``: also keep what sampling and grading a row need (DCO's ``dco_mode: cot``): ``prompt_ids``,
    the token ids of the generation prompt (:func:`math_prompts`' prompt), and ``answer``, the gold final answer as a
    string. The collators drop both; the trainer reads them by ``index``."""

    def fn(row, idx):
        question = problem_text(template, row["problem"])
        out = {**encode_qa(tokenizer, template, question, target_text(row, target), max_length), "index": idx}
        if generation_columns:
            out.update(prompt_ids=encode_prompt(tokenizer, template, question, max_length), answer=str(row["answer"]))
        return out

    return ds.map(fn, with_indices=True, remove_columns=ds.column_names, desc="Tokenising")


def math_prompts(rows, tokenizer, template: TemplateArgs, max_length: int) -> list[list[int]]:
    """Token ids of each problem's generation prompt (ends with the answer start tag or the chat generation prompt);
    ``rows``: a dataset or a list of rows with a ``problem``."""
    return [encode_prompt(tokenizer, template, problem_text(template, row["problem"]), max_length) for row in rows]


def grpo_prompts(ds: datasets.Dataset, template: TemplateArgs) -> datasets.Dataset:
    """TRL GRPO rows: ``prompt`` (the template's text for base models, chat messages when ``apply_chat_template``;
    TRL applies the chat template itself) and the gold ``answer`` (a string; reward functions get it as a kwarg)."""

    def fn(row):
        question = problem_text(template, row["problem"])
        prompt = chat_messages(template, question, None) if template.apply_chat_template else wrap_question(template, question)
        return {"prompt": prompt, "answer": str(row["answer"])}

    return ds.map(fn, remove_columns=ds.column_names, desc="Prompts")


def drop_long_prompts(ds: datasets.Dataset, tokenizer, template: TemplateArgs, max_tokens: int) -> datasets.Dataset:
    """The rows of ``grpo_prompts(ds, template)``-style data whose generation prompt (chat template applied, as TRL
    will) has at most ``max_tokens`` tokens (the paper's "max prompt length 512", arXiv 2510.00915 Table 7; verl's
    ``filter_overlong_prompts``). Logs how many were dropped; DataError if none is left."""
    def short(row):
        ids = (encode_prompt(tokenizer, template, row["prompt"][-1]["content"], max_tokens + 1)
               if template.apply_chat_template else tokenizer(row["prompt"], add_special_tokens=True)["input_ids"])
        return len(ids) <= max_tokens

    kept = ds.filter(short, desc=f"Prompts of <= {max_tokens} tokens")
    logger.info("max_prompt_tokens=%d: kept %d of %d training prompts", max_tokens, len(kept), len(ds))
    if len(kept) == 0:
        raise DataError(f"max_prompt_tokens={max_tokens}: every training prompt is longer")
    return kept
