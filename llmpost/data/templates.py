"""Prompt templates and their tokenisation, shared by the benchmarks, the trainers and generation.

* :class:`TemplateArgs`: the question/answer template of TOFU-style data (base-model tags or the model's chat template),
  :func:`encode_prompt` and :func:`encode_qa` (labels on the answer only).
* :class:`PreferenceTemplates`: the generation and self-revision prompts of the preference methods,
  :func:`tokenize_prompt_completion` (tokenised as TRL's DPO tokenises) and :func:`cut_prompt`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from llmpost.ops import IGNORE_INDEX

logger = logging.getLogger(__name__)


@dataclass
class TemplateArgs:
    """Prompt template, with open-unlearning's ``template_args`` field names and its base-model defaults."""

    apply_chat_template: bool = field(default=False, metadata={"help": "Use the tokenizer's chat template."})
    system_prompt: str | None = field(default=None, metadata={"help": "System prompt (chat template only)."})
    user_start_tag: str = field(default="Question: ", metadata={"help": "Text before the question (base models)."})
    user_end_tag: str = field(default="\n", metadata={"help": "Text after the question (base models)."})
    asst_start_tag: str = field(default="Answer: ", metadata={"help": "Text before the answer (base models)."})
    asst_end_tag: str = field(default="\n\n", metadata={"help": "Text after an answer (few-shot examples only)."})
    date_string: str | None = field(default=None, metadata={"help": "date_string passed to the chat template."})

    @classmethod
    def from_obj(cls, obj) -> TemplateArgs:
        """Build from any object (e.g. a parsed config) carrying the template field names."""
        return cls(**{name: getattr(obj, name) for name in cls.__dataclass_fields__})


def _ids(enc):
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True)
    return list(enc["input_ids"] if not isinstance(enc, list) else enc)


def encode_prompt(tokenizer, template: TemplateArgs, question: str, max_length: int) -> list[int]:
    """Token ids of the prompt a generation starts from (ends with the assistant start tag)."""
    if template.apply_chat_template:
        chat = chat_messages(template, question, None)
        return _ids(tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, **_date(template)))
    return tokenizer(wrap_question(template, question), add_special_tokens=True, max_length=max_length, truncation=True)[
        "input_ids"
    ]


def encode_qa(tokenizer, template: TemplateArgs, question: str, answer: str, max_length: int) -> dict[str, list[int]]:
    """``input_ids``, ``labels`` (``-100`` over the prompt) and ``attention_mask`` for one question/answer pair."""
    if template.apply_chat_template:
        chat = chat_messages(template, question, answer)
        full = _ids(tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=False, **_date(template)))
    else:
        full = tokenizer(
            wrap_question(template, question) + answer, add_special_tokens=True, max_length=max_length, truncation=True
        )["input_ids"]
    return _qa_example(tokenizer, full, encode_prompt(tokenizer, template, question, max_length), question)


def encode_qa_batch(tokenizer, template: TemplateArgs, pairs, max_length: int) -> list[dict[str, list[int]]]:
    """``[encode_qa(tokenizer, template, q, a, max_length) for q, a in pairs]``, the same lists, with one tokenizer
    call for all texts and each distinct question's prompt tokenised once (the chat template goes pair by pair)."""
    if template.apply_chat_template:
        return [encode_qa(tokenizer, template, q, a, max_length) for q, a in pairs]
    if not pairs:
        return []
    kw = dict(add_special_tokens=True, max_length=max_length, truncation=True)
    fulls = tokenizer([wrap_question(template, q) + a for q, a in pairs], **kw)["input_ids"]
    questions = list(dict.fromkeys(q for q, _ in pairs))
    prompts = dict(zip(questions, tokenizer([wrap_question(template, q) for q in questions], **kw)["input_ids"]))
    return [_qa_example(tokenizer, full, prompts[q], q) for full, (q, _) in zip(fulls, pairs)]


def _qa_example(tokenizer, full, prompt, question: str) -> dict[str, list[int]]:
    full = list(full)
    if full[-1] != tokenizer.eos_token_id:
        full.append(tokenizer.eos_token_id)
    n = len(prompt)
    if n >= len(full):
        logger.warning("Tokenisation left no answer token for question %r", question[:80])
    labels = [IGNORE_INDEX] * n + full[n:]
    return {"input_ids": full, "labels": labels[: len(full)], "attention_mask": [1] * len(full)}


def wrap_question(t: TemplateArgs, question: str) -> str:
    """The base-model prompt of ``question``: user tags around it, then the assistant's start tag."""
    return t.user_start_tag + question + t.user_end_tag + t.asst_start_tag


def chat_messages(t: TemplateArgs, question: str, answer: str | None) -> list[dict]:
    """The chat-template messages of ``question`` (and ``answer`` when given), after the optional system prompt."""
    chat = [{"role": "system", "content": t.system_prompt}] if t.system_prompt else []
    chat.append({"role": "user", "content": question})
    if answer is not None:
        chat.append({"role": "assistant", "content": answer})
    return chat


def _date(t: TemplateArgs) -> dict:
    return {"date_string": t.date_string} if t.date_string is not None else {}


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
