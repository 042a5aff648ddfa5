"""An LLM appeal verifier: any causal LM, prompted with TinyV's template, answers whether a model answer that a
rule-based checker rejected is correct after all (TinyV, Xu et al., arXiv 2505.14625; repository uw-nsl/TinyV).

The prompt is TinyV's (``verl/verl/utils/reward_score/tinyv_config.json``, keyed by verifier model id): the placeholders
``{{QUESTION}}``, ``{{GROUND_TRUTH_ANSWER}}`` and ``{{MODEL_ANSWER}}`` are replaced, and the text is sent as one user
message, through the tokenizer's chat template when it has one (TinyV sends it to an OpenAI-compatible chat endpoint,
which applies the model's chat template) and as plain text otherwise. Decoding is greedy (TinyV: temperature 0,
top_p 1) with ``max_completion_tokens`` new tokens (8 for TinyV-1.5B), batched through :mod:`llmpost.generation`
(vLLM when installed and a GPU is present, transformers otherwise).

**The verdict** (:func:`parse_verdict`): after stripping whitespace and leading quote or markdown characters
(``"``, ``'``, a backtick, ``*``), the answer *starts with* ``true`` (case-insensitive) as a whole word: overturned (1).
Anything else is "not overturned" (0): ``False``, an empty answer, ``It is True``, ``Truly``. Think models
(``is_think_model``) are judged on the text after the last ``</think>`` (else after the last ``Answer:``); with neither
the answer is invalid (0). TinyV's own check (``tinyv.py``, ``model_infer``) is ``'true' in text.lower()``, a
substring test that also accepts ``not true`` or ``untrue``; for TinyV's 8-token True/False answers both agree, and the
prefix test errs on the side the appeals need (a doubtful answer never invents a positive). Answers that are neither
True nor False are counted (``stats.invalid``).

**Failures never stop the caller**: a batch that raises (out of memory, a tokenizer error, ...) and the items of a
call still unanswered when its ``timeout`` expires count as "not overturned" (0); a warning is logged and
``stats.errors`` / ``stats.timeouts`` count them. A timeout cannot interrupt a running forward pass: generation runs in
a worker thread that stops before its next batch, and a later call waits (within its own time limit) for it to finish.

The model answer: a completion's last ``\\boxed{}`` content when it has one (TinyV passes the answer prime_math
extracted, not the whole solution), else the completion, keeping its last ``max_answer_chars`` characters.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmpost.generation import generate_greedy
from llmpost.grading.normalize import extract_boxed
from llmpost.rewards.verifiers import Verifier, VerifyStats
from llmpost.utils import DataError

__all__ = ["DEFAULT_VERIFIER_ID", "LLMVerifier", "LLMVerifyStats", "TINYV_PROMPTS", "VerifierPrompt",
           "load_verifier_prompts", "parse_verdict", "select_prompt"]  # fmt: skip

logger = logging.getLogger(__name__)

PLACEHOLDERS = ("{{QUESTION}}", "{{GROUND_TRUTH_ANSWER}}", "{{MODEL_ANSWER}}")


@dataclass(frozen=True)
class VerifierPrompt:
    """One entry of a ``tinyv_config.json``-style file: the template and how to decode and read the answer."""

    template: str
    max_completion_tokens: int = 8
    is_think_model: bool = False

    def render(self, question: str, gold: str, answer: str) -> str:
        """The template with its three placeholders replaced, in one pass (TinyV chains ``str.replace``; the same text
        unless a question or answer itself contains a placeholder, which one pass leaves alone)."""
        values = dict(zip(PLACEHOLDERS, (question, gold, answer)))
        return re.sub("|".join(map(re.escape, PLACEHOLDERS)), lambda m: values[m.group(0)], self.template)


DEFAULT_VERIFIER_ID = "zhangchenxu/TinyV-1.5B"
# TinyV's tinyv_config.json (uw-nsl/TinyV at 4a9d2c7, MIT), the entry of the default verifier; the other entries
# (TinyV-1.5B-Think, TinyV-Qwen3-1.7B[-Think]) are read from the file (``load_verifier_prompts``).
TINYV_PROMPTS = {
    DEFAULT_VERIFIER_ID: VerifierPrompt(
        template=(
            "You are an AI tasked with identifying false negatives in answer verification. A false negative occurs "
            "when a model's answer is essentially correct but is marked as incorrect due to minor discrepancies or "
            "formatting issues. Your job is to analyze the given question, ground truth answer, and model answer to "
            "determine if the model's answer is actually correct despite appearing different from the ground truth."
            "\n\n<question>{{QUESTION}}</question>\n\n<ground_truth_answer>{{GROUND_TRUTH_ANSWER}}"
            "</ground_truth_answer>\n\n<model_answer>{{MODEL_ANSWER}}</model_answer>\n\nReturn \"True\" if the model's "
            "answer is correct, otherwise return \"False\"."
        ),
        max_completion_tokens=8,
        is_think_model=False,
    ),
}


def load_verifier_prompts(path: str | Path) -> dict[str, VerifierPrompt]:
    """The entries of a ``tinyv_config.json``-style file: ``{model id: {template, max_completion_tokens,
    is_think_model, temperature, top_p}}``. Only greedy decoding is supported (``temperature`` 0, ``top_p`` 1, as in
    every TinyV entry). A missing file, bad JSON or a bad entry is a :class:`DataError` naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"verifier prompt file {str(path)!r} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: expected a non-empty JSON object keyed by verifier model id")
    prompts = {}
    for key, entry in raw.items():
        where = f"{path}: entry {key!r}"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
        template = entry.get("template")
        if not isinstance(template, str):
            raise DataError(f"{where}: 'template' must be a string")
        missing = [p for p in PLACEHOLDERS if p not in template]
        if missing:
            raise DataError(f"{where}: 'template' lacks the placeholder(s) {missing}")
        tokens = entry.get("max_completion_tokens", 8)
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise DataError(f"{where}: 'max_completion_tokens' must be an integer >= 1, got {tokens!r}")
        think = entry.get("is_think_model", False)
        if not isinstance(think, bool):
            raise DataError(f"{where}: 'is_think_model' must be true or false, got {think!r}")
        if entry.get("temperature", 0) != 0 or entry.get("top_p", 1) != 1:
            raise DataError(f"{where}: only greedy decoding is supported (temperature 0, top_p 1), got "
                            f"temperature={entry.get('temperature')!r}, top_p={entry.get('top_p')!r}")
        prompts[key] = VerifierPrompt(template, tokens, think)
    return prompts


def select_prompt(model_id: str, prompts: Mapping[str, VerifierPrompt] | None = None,
                  key: str | None = None) -> tuple[str, VerifierPrompt]:  # fmt: skip
    """``(key, prompt)`` for a verifier model: ``key`` when given (an error lists the keys otherwise), else the entry
    named ``model_id``, else the entry whose last path component is ``model_id``'s (a local copy ``.../TinyV-1.5B``),
    else TinyV-1.5B's (logged)."""
    prompts = dict(TINYV_PROMPTS if prompts is None else prompts)
    if key is not None:
        if key not in prompts:
            raise ValueError(f"verifier prompt {key!r} is not one of {sorted(prompts)}")
        return key, prompts[key]
    if model_id in prompts:
        return model_id, prompts[model_id]
    tail = str(model_id).rstrip("/").rsplit("/", 1)[-1]
    matches = [k for k in prompts if k.rsplit("/", 1)[-1] == tail]
    if len(matches) == 1:
        return matches[0], prompts[matches[0]]
    fallback = DEFAULT_VERIFIER_ID if DEFAULT_VERIFIER_ID in prompts else next(iter(prompts))
    logger.info("verifier %r has no prompt entry of its own: using %r's template", model_id, fallback)
    return fallback, prompts[fallback]


_VERDICT = re.compile(r"[\s\"'`*]*(true|false)(?![a-z0-9_])", re.IGNORECASE)


def parse_verdict(text: str, is_think_model: bool = False) -> bool | None:
    """True / False when the answer starts with that word (module docstring), None when it is neither."""
    if not isinstance(text, str):
        return None
    if is_think_model:
        for marker in ("</think>", "Answer:"):
            if marker in text:
                text = text.rsplit(marker, 1)[1]
                break
        else:
            return None
    match = _VERDICT.match(text)
    return None if match is None else match.group(1).lower() == "true"


@dataclass
class LLMVerifyStats(VerifyStats):
    """``VerifyStats`` (calls, empty, errors: items of a batch that raised) plus the items a time limit cut off, the
    answers that were neither True nor False, and the overturns (True answers)."""

    timeouts: int = 0
    invalid: int = 0
    overturned: int = 0


class LLMVerifier:
    """A causal LM asked TinyV's question: is this answer correct despite differing from the ground truth?

    ``model``: a transformers causal LM (``backend="transformers"``) or a ``vllm.LLM`` (``backend="vllm"``);
    ``tokenizer``: its tokenizer. ``timeout``: seconds one :meth:`verify_batch` call may take (``None``: no limit,
    generation runs in the calling thread). ``use_chat_template``: ``None`` uses the tokenizer's chat template when it
    has one. Build one from a path or hub id with :meth:`from_pretrained`.
    """

    name = "llm"

    def __init__(self, model, tokenizer, prompt: VerifierPrompt | None = None, *, backend: str = "transformers",
                 batch_size: int = 32, timeout: float | None = 60.0, use_chat_template: bool | None = None,
                 max_answer_chars: int = 2000, model_id: str = ""):  # fmt: skip
        if backend not in ("transformers", "vllm"):
            raise ValueError(f"backend must be 'transformers' or 'vllm', got {backend!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds (or None), got {timeout}")
        if max_answer_chars < 1:
            raise ValueError(f"max_answer_chars must be >= 1, got {max_answer_chars}")
        self.model, self.tokenizer, self.backend = model, tokenizer, backend
        self.prompt = prompt or TINYV_PROMPTS[DEFAULT_VERIFIER_ID]
        self.batch_size, self.timeout, self.max_answer_chars = batch_size, timeout, max_answer_chars
        self.use_chat_template = bool(getattr(tokenizer, "chat_template", None)) if use_chat_template is None \
            else use_chat_template  # fmt: skip
        self.model_id = model_id
        self.description = f"LLM verifier {model_id or type(model).__name__} with TinyV's prompt (True/False)"
        self.stats = LLMVerifyStats()
        self.last_responses: list[str | None] = []  # the raw answers of the last call (None: not answered)
        self._busy = threading.Lock()  # one generation at a time (a timed-out one may still be running)

    @classmethod
    def from_pretrained(cls, model_name_or_path: str, *, prompts_file: str | None = None, prompt_key: str | None = None,
                        backend: str = "auto", dtype: str = "auto", device: str | None = None,
                        trust_remote_code: bool = False, gpu_memory_utilization: float = 0.3,
                        **kwargs) -> LLMVerifier:  # fmt: skip
        """Load a verifier: the tokenizer, then a ``vllm.LLM`` (``backend="vllm"``, or ``"auto"`` when vLLM is installed
        and CUDA is present) or a transformers model on ``device``. The prompt comes from ``prompts_file`` (a
        ``tinyv_config.json``) or the built-in TinyV-1.5B entry, chosen by :func:`select_prompt`. ``kwargs`` go to the
        constructor (``batch_size``, ``timeout``, ...)."""
        import torch

        from llmpost.models import check_model_path, load_saved_model, load_tokenizer

        path = check_model_path(model_name_or_path, "verifier model")
        prompts = load_verifier_prompts(prompts_file) if prompts_file else None
        key, prompt = select_prompt(model_name_or_path, prompts, prompt_key)
        if backend == "auto":
            has_vllm = importlib.util.find_spec("vllm") is not None
            backend = "vllm" if has_vllm and torch.cuda.is_available() else "transformers"
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        if backend == "vllm":
            try:
                import vllm
            except ImportError as e:
                raise ImportError("backend 'vllm' needs vLLM: `pip install llmpost[vllm]` (GPU only)") from e
            model = vllm.LLM(model=path, dtype=dtype, trust_remote_code=trust_remote_code,
                             gpu_memory_utilization=gpu_memory_utilization)  # fmt: skip
        elif backend == "transformers":
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = load_saved_model(path, dtype, trust_remote_code).to(device).eval()
        else:
            raise ValueError(f"backend must be 'auto', 'transformers' or 'vllm', got {backend!r}")
        logger.info("LLM verifier %s: backend %s, prompt %r", model_name_or_path, backend, key)
        return cls(model, tokenizer, prompt, backend=backend, model_id=model_name_or_path, **kwargs)

    # ----- prompts ---------------------------------------------------------------------------------------------------
    def answer_text(self, completion: str) -> str:
        """What goes into ``{{MODEL_ANSWER}}``: the last ``\\boxed{}`` content, else the completion (stripped), keeping
        its last ``max_answer_chars`` characters."""
        boxed = extract_boxed(completion)
        text = (boxed if boxed is not None else completion).strip()
        return text[-self.max_answer_chars :]

    def prompt_text(self, question: str, gold: str, completion: str) -> str:
        """The exact text the model continues: the rendered template, in the chat template when it is used."""
        content = self.prompt.render(question, gold, self.answer_text(completion))
        if not self.use_chat_template:
            return content
        return self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)  # fmt: skip

    def _prompt_ids(self, question: str, gold: str, completion: str) -> list[int]:
        # a chat template writes its own special tokens; plain text gets the tokenizer's (BOS)
        return self.tokenizer(self.prompt_text(question, gold, completion),
                              add_special_tokens=not self.use_chat_template)["input_ids"]  # fmt: skip

    # ----- verdicts --------------------------------------------------------------------------------------------------
    def verify_batch(self, questions: Sequence[str], golds: Sequence[str], completions: Sequence[str]) -> list[int]:
        """1 where the model overturns the rejection (answers True), else 0, in input order; never raises for a
        failing model (module docstring). Empty or non-string completions are 0 without a model call."""
        if not len(questions) == len(golds) == len(completions):
            raise ValueError(f"questions, golds and completions differ in length: {len(questions)}, {len(golds)}, "
                             f"{len(completions)}")
        n = len(completions)
        self.stats.calls += n
        todo = [i for i, c in enumerate(completions) if isinstance(c, str) and c.strip()]
        self.stats.empty += n - len(todo)
        state = {"answers": {}, "failed": set(), "closed": False}
        lock, stop = threading.Lock(), threading.Event()
        args = ([str(questions[i]) for i in todo], [str(golds[i]) for i in todo], [completions[i] for i in todo])
        if self.timeout is None:
            self._run(todo, *args, state, lock, stop)
        else:
            worker = threading.Thread(target=self._run, args=(todo, *args, state, lock, stop), daemon=True,
                                      name="llm-verifier")  # fmt: skip
            worker.start()
            worker.join(self.timeout)
            stop.set()
        with lock:
            state["closed"] = True
            answers, failed = dict(state["answers"]), set(state["failed"])
        timed_out = len(todo) - len(answers) - len(failed)
        if timed_out:
            self.stats.timeouts += timed_out
            logger.warning("LLM verifier: %d of %d items unanswered after its %.3g s time limit: not overturned",
                           timed_out, len(todo), self.timeout)
        self.last_responses = [answers.get(i) for i in range(n)]
        verdicts = []
        for i in range(n):
            verdict = parse_verdict(answers[i], self.prompt.is_think_model) if i in answers else False
            if i in answers and verdict is None:
                self.stats.invalid += 1
            verdicts.append(int(bool(verdict)))
        self.stats.overturned += sum(verdicts)
        return verdicts

    def _run(self, todo, questions, golds, completions, state, lock, stop) -> None:
        """Generate the answers chunk by chunk into ``state`` (the worker thread's body, or inline without a timeout)."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        if not self._busy.acquire(timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic())):
            return  # an earlier, timed-out call still holds the model: these items time out too
        try:
            for start in range(0, len(todo), self.batch_size):
                if stop.is_set():
                    return
                rows = range(start, min(start + self.batch_size, len(todo)))
                try:
                    prompts = [self._prompt_ids(questions[r], golds[r], completions[r]) for r in rows]
                    texts = generate_greedy(self.model, self.tokenizer, prompts,
                                            max_new_tokens=self.prompt.max_completion_tokens,
                                            batch_size=self.batch_size, backend=self.backend)  # fmt: skip
                    if len(texts) != len(prompts):
                        raise RuntimeError(f"generation returned {len(texts)} answers for {len(prompts)} prompts")
                except Exception as e:  # a failing batch is "not overturned", never a crashed step
                    logger.warning("LLM verifier failed on %d items (%s: %s): not overturned", len(rows),
                                   type(e).__name__, e)  # fmt: skip
                    with lock:
                        if not state["closed"]:
                            self.stats.errors += len(rows)
                            state["failed"].update(todo[r] for r in rows)
                    continue
                with lock:
                    if state["closed"]:
                        return
                    state["answers"].update((todo[r], t) for r, t in zip(rows, texts))
        finally:
            self._busy.release()

    def as_verifier(self, question_for: Mapping[str, str] | Callable[[str, str], str] | None = None) -> Verifier:
        """A ``Verifier`` ``(completion, gold) -> 0/1`` for callers that know no question (the appeals path of
        ``AppealEstimator``): ``question_for`` maps a gold answer to its question, or is a function
        ``(completion, gold) -> question``; ``None`` (or a gold the mapping lacks) sends an empty question, which
        TinyV's template allows but which gives the verifier less to go on. One model call per item."""

        def question(completion: str, gold: str) -> str:
            if question_for is None:
                return ""
            if callable(question_for):
                return question_for(completion, gold)
            return question_for.get(gold, "")

        def verify(completion: str, gold: str) -> int:
            return self.verify_batch([question(completion, gold)], [gold], [completion])[0]

        verify.name, verify.description = self.name, self.description
        return verify
