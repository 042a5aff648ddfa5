"""Model-based judges for the win rate (SRPO, arXiv 2406.01660, sec. 5; see
:mod:`llmpost.benchmarks.preference.winrate`): a scalar reward model, and a pairwise LLM judge over both orders; and
:func:`build_judge`, which builds any judge (these or :class:`llmpost.benchmarks.preference.judges.RougeJudge`) from
config values."""

from __future__ import annotations

import inspect
import logging
import math
import os
import string
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from llmpost.benchmarks.preference.judges import Judge, JudgeKind, JudgeResult, RougeJudge, tie_win
from llmpost.eval.shard import model_device
from llmpost.models import check_model_path, load_tokenizer, pad_token_id
from llmpost.utils import parse_enum

logger = logging.getLogger(__name__)


# ----- model-based judges: shared helpers ----------------------------------------------------------------------------
@contextmanager
def _eval_mode(model):
    """``model.eval()`` and ``torch.no_grad()`` for the block; the model's training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _load(model_or_path, tokenizer, auto_cls, dtype, key: str):
    """``(model, tokenizer)``: loaded from a local path (or hub id) when given one; a model object needs a tokenizer."""
    if isinstance(model_or_path, (str, os.PathLike)):
        path = check_model_path(str(model_or_path), key)
        model = auto_cls.from_pretrained(path, dtype=dtype)
        return model, tokenizer if tokenizer is not None else load_tokenizer(path)
    if tokenizer is None:
        raise ValueError(f"{key}: a model object was given without its tokenizer; pass tokenizer=...")
    return model_or_path, tokenizer


def _format_fields(template: str, key: str, needed: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """``(literal_text, field_name)`` pieces of ``template``; errors (naming ``key``) when a placeholder of ``needed``
    is missing or another one appears."""
    try:
        pieces = [(lit, name) for lit, name, _, _ in string.Formatter().parse(template)]
    except ValueError as e:
        raise ValueError(f"{key}: {e} in {template!r} (write {{{{ for a literal brace)") from e
    names = {n for _, n in pieces if n is not None}
    for name in needed:
        if name not in names:
            raise ValueError(f"{key}: must contain the placeholder {{{name}}}, got {template!r}")
    extra = sorted(names - set(needed))
    if extra:
        raise ValueError(f"{key}: only {', '.join('{' + n + '}' for n in needed)} may appear in braces, got "
                         f"{', '.join('{' + n + '}' for n in extra)} in {template!r} (write {{{{ for a literal brace)")  # fmt: skip
    return pieces


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def _batches(encoded: dict[str, list[int]], batch_size: int) -> list[list[str]]:
    """The texts in batches of ``batch_size``, ordered by (token length, text): the batches depend on the set of texts
    only, not on their order or on which examples they came from."""
    order = sorted(encoded, key=lambda t: (len(encoded[t]), t))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _pad(rows: list[list[int]], pad_id: int, side: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        sl = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, sl] = torch.tensor(row, dtype=torch.long)
        mask[i, sl] = 1
    return ids.to(device), mask.to(device)


# ----- reward model --------------------------------------------------------------------------------------------------
class RewardModelJudge(Judge):
    """A scalar reward model (``AutoModelForSequenceClassification`` with one label) scores the candidate and the
    reference; the candidate wins when its reward is higher.

    The model reads ``template.format(prompt=prompt, completion=completion)`` (default ``"{prompt}{completion}"``:
    the prompt text followed by the completion, as TRL's reward trainer concatenates them; give e.g.
    ``"Question: {prompt}\\nAnswer: {completion}"`` for a model trained on that format), tokenised with the special
    tokens the tokenizer adds, not truncated. Per example: ``scores`` = ``wins`` = ``1[r_c > r_r]``, 0.5 on a tie;
    ``probs`` = ``sigmoid(r_c - r_r)``; ``details``: ``reward_candidate`` and ``reward_reference``.

    Each distinct text is scored once (identical candidate and reference texts tie exactly), in batches of
    ``batch_size`` sorted by length, right-padded, under ``no_grad`` and in eval mode. The model takes the reward at
    the last token that is not its pad token: a tokenizer without a pad token gets its EOS as pad token, and a model
    config without ``pad_token_id`` gets the tokenizer's.
    """

    name = "reward_model"

    def __init__(self, model_or_path, tokenizer=None, *, batch_size: int = 16, template: str = "{prompt}{completion}",
                 dtype: str | torch.dtype = "float32"):  # fmt: skip
        from transformers import AutoModelForSequenceClassification

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        _format_fields(template, "reward model template", ("prompt", "completion"))
        self.model, self.tokenizer = _load(model_or_path, tokenizer, AutoModelForSequenceClassification, dtype,
                                           "reward model")  # fmt: skip
        num_labels = getattr(self.model.config, "num_labels", None)
        if num_labels != 1:
            raise ValueError(f"reward model: expected a sequence-classification model with one label (a scalar "
                             f"reward), got num_labels={num_labels}")  # fmt: skip
        if self.tokenizer.pad_token_id is None:
            if self.tokenizer.eos_token is None:
                raise ValueError("reward model: the tokenizer has neither a pad nor an EOS token; set its pad_token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        text_config = self.model.config.get_text_config()
        if text_config.pad_token_id is None:
            text_config.pad_token_id = self.tokenizer.pad_token_id
        self.pad_id = int(text_config.pad_token_id)  # what the model looks for to find each row's last token
        self.batch_size, self.template = batch_size, template

    def rewards(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """The reward of each (prompt, completion), as float."""
        texts = [self.template.format(prompt=p, completion=c) for p, c in zip(prompts, completions)]
        encoded = {t: _encode(self.tokenizer, t) for t in dict.fromkeys(texts)}
        values: dict[str, float] = {}
        device = model_device(self.model)
        with _eval_mode(self.model):
            for batch in _batches(encoded, self.batch_size):
                ids, mask = _pad([encoded[t] for t in batch], self.pad_id, "right", device)
                logits = self.model(input_ids=ids, attention_mask=mask).logits
                values.update(zip(batch, logits[:, 0].double().tolist()))
        return [values[t] for t in texts]

    def judge(self, prompts, candidates, references) -> JudgeResult:
        self._check(prompts, candidates, references)
        n = len(prompts)
        rewards = self.rewards(list(prompts) * 2, list(candidates) + list(references))
        r_c, r_r = rewards[:n], rewards[n:]
        wins = [tie_win(c - r) for c, r in zip(r_c, r_r)]
        probs = [1.0 / (1.0 + math.exp(-(c - r))) if c >= r else math.exp(c - r) / (1.0 + math.exp(c - r))
                 for c, r in zip(r_c, r_r)]  # fmt: skip
        return JudgeResult(scores=list(wins), wins=wins, probs=probs,
                           details={"reward_candidate": r_c, "reward_reference": r_r})  # fmt: skip


# ----- pairwise LLM judge --------------------------------------------------------------------------------------------
DEFAULT_PAIRWISE_TEMPLATE = (
    "Which of the two responses below answers the question better?\n\n"
    "Question: {prompt}\n\n"
    "Response A: {a}\n\n"
    "Response B: {b}\n\n"
    "Answer with A or B.\n"
    "Better response:"
)


class PairwiseLLMJudge(Judge):
    """A causal LM judges which of two responses is better from its next-token probabilities of the two labels.

    ``template`` holds ``{prompt}``, ``{a}`` and ``{b}`` and ends with fixed text after the last placeholder (the
    default ends with ``"Better response:"``); the labels (default ``" A"`` and ``" B"``) are what the model would write
    next. Each label is represented by its *first token* right after the formatted template, found once by tokenising
    the template's text with and without the label appended: with most LLM tokenizers ``" A"`` and ``" B"`` are single
    tokens; when a label takes several tokens only the first counts (a warning says so), and labels whose first tokens
    coincide are an error. ``P(A) = softmax(logit_A, logit_B)[0]`` at the last prompt position (float64).

    Both orders cancel position bias: with ``P_A(x, y)`` the probability of label A when ``x`` is response A and ``y``
    response B, the score is ``p = 0.5 * (P_A(c, r) + (1 - P_A(r, c)))``, i.e. the mean of ``P(A | candidate = A)`` and
    ``P(B | candidate = B)``. Swapping candidate and reference gives ``1 - p`` exactly (each formatted text is scored
    once, in batches that depend only on the set of texts), and identical candidate and reference give 0.5.
    ``wins`` = 1 if ``p > 0.5``, 0.5 if ``p == 0.5``, else 0; ``details``: ``p_a_first`` (``P_A(c, r)``) and
    ``p_a_second`` (``P_A(r, c)``).

    Batches of ``batch_size`` formatted texts (sorted by length), left-padded, under ``no_grad`` and in eval mode;
    texts are tokenised with the tokenizer's special tokens and not truncated.
    """

    name = "pairwise_llm"

    def __init__(self, model_or_path, tokenizer=None, *, template: str = DEFAULT_PAIRWISE_TEMPLATE,
                 labels: tuple[str, str] = (" A", " B"), batch_size: int = 16, dtype: str | torch.dtype = "float32"):  # fmt: skip
        from transformers import AutoModelForCausalLM

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pieces = _format_fields(template, "pairwise judge template", ("prompt", "a", "b"))
        if pieces[-1][1] is not None or not pieces[-1][0].strip():
            raise ValueError(f"pairwise judge template: must end with fixed text after the last placeholder (e.g. "
                             f"'Better response:'), which the label token follows; got {template!r}")  # fmt: skip
        if len(labels) != 2 or not all(isinstance(x, str) and x for x in labels) or labels[0] == labels[1]:
            raise ValueError(f"pairwise judge labels: must be two different non-empty strings, got {labels!r}")
        self.model, self.tokenizer = _load(model_or_path, tokenizer, AutoModelForCausalLM, dtype, "pairwise judge")
        self.template, self.labels, self.batch_size = template, tuple(labels), batch_size
        self.label_ids = self._label_ids()
        forward = inspect.signature(self.model.forward).parameters
        self._position_ids = "position_ids" in forward
        self._logits_to_keep = "logits_to_keep" in forward

    def _label_ids(self) -> tuple[int, int]:
        probe = self.template.format(prompt="What is it?", a="It is one.", b="It is two.")
        base = _encode(self.tokenizer, probe)
        ids = []
        for label in self.labels:
            full = _encode(self.tokenizer, probe + label)
            rest = full[len(base) :]
            if full[: len(base)] != base or not rest:
                raise ValueError(f"pairwise judge: the tokenizer merges the label {label!r} into the end of the "
                                 "template; end the template with text the label does not merge with")  # fmt: skip
            if len(rest) > 1:
                logger.warning("pairwise judge: label %r is %d tokens %s; only its first token is scored", label,
                               len(rest), self.tokenizer.convert_ids_to_tokens(rest))  # fmt: skip
            ids.append(rest[0])
        if ids[0] == ids[1]:
            raise ValueError(f"pairwise judge: labels {self.labels!r} start with the same token "
                             f"{self.tokenizer.convert_ids_to_tokens(ids[:1])}; choose labels whose first tokens differ")  # fmt: skip
        return ids[0], ids[1]

    def prob_first(self, texts: Sequence[str]) -> list[float]:
        """``P(label A) = softmax(logit_A, logit_B)[0]`` after each formatted judging text."""
        encoded = {t: _encode(self.tokenizer, t) for t in dict.fromkeys(texts)}
        values: dict[str, float] = {}
        device = model_device(self.model)
        pad = pad_token_id(self.tokenizer)
        with _eval_mode(self.model):
            for batch in _batches(encoded, self.batch_size):
                ids, mask = _pad([encoded[t] for t in batch], pad, "left", device)
                kwargs = {"logits_to_keep": 1} if self._logits_to_keep else {}
                if self._position_ids:
                    kwargs["position_ids"] = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
                logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).logits[:, -1]
                pair = logits[:, list(self.label_ids)].double()
                values.update(zip(batch, torch.softmax(pair, dim=-1)[:, 0].tolist()))
        return [values[t] for t in texts]

    def judge(self, prompts, candidates, references) -> JudgeResult:
        self._check(prompts, candidates, references)
        n = len(prompts)
        first = [self.template.format(prompt=p, a=c, b=r) for p, c, r in zip(prompts, candidates, references)]
        second = [self.template.format(prompt=p, a=r, b=c) for p, c, r in zip(prompts, candidates, references)]
        p_a = self.prob_first(first + second)
        p_first, p_second = p_a[:n], p_a[n:]
        scores = [0.5 * (x + (1.0 - y)) for x, y in zip(p_first, p_second)]
        return JudgeResult(scores=scores, wins=[tie_win(s - 0.5) for s in scores],
                           details={"p_a_first": p_first, "p_a_second": p_second})  # fmt: skip


# ----- building a judge from config values ---------------------------------------------------------------------------
def build_judge(kind: str | JudgeKind, model_path: str | None = None, *, tokenizer_path: str | None = None,
                batch_size: int = 16, template: str | None = None, dtype: str = "float32",
                key: str = "judge_model_path") -> Judge:  # fmt: skip
    """The judge of ``kind`` (``rouge``, ``reward_model`` or ``pairwise_llm``). Model-based judges load ``model_path``
    (a local directory or hub id; its tokenizer unless ``tokenizer_path``); a missing path is an error naming ``key``.
    ``template`` replaces the judge's default template (not used by ``rouge``)."""
    judge_kind = parse_enum("judge", kind, JudgeKind)
    if judge_kind is JudgeKind.ROUGE:
        return RougeJudge()
    if not model_path:
        raise ValueError(f"{key}: judge {judge_kind.value!r} needs a model; set {key} to a local model directory")
    path = check_model_path(model_path, key)
    tokenizer = load_tokenizer(check_model_path(tokenizer_path, "judge_tokenizer_path")) if tokenizer_path else None
    match judge_kind:
        case JudgeKind.REWARD_MODEL:
            extra = {"template": template} if template is not None else {}
            return RewardModelJudge(path, tokenizer, batch_size=batch_size, dtype=dtype, **extra)
        case JudgeKind.PAIRWISE_LLM:
            extra = {"template": template} if template is not None else {}
            return PairwiseLLMJudge(path, tokenizer, batch_size=batch_size, dtype=dtype, **extra)
    raise AssertionError("unreachable")
