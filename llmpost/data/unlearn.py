"""The data every unlearning method shares: forget rows, each paired with a retain row and (FLAT, IdkDPO) a template
answer, both redrawn every epoch as pure functions of ``(seed, epoch, row)``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from llmpost.utils import DataError


def load_template_answers(path: str | Path) -> list[str]:
    """Template answers (refusals such as TOFU's ``idontknow.jsonl``): one per line, as plain text or as a JSON string
    or object with a ``text`` / ``answer`` field. Blank lines are skipped; an empty file is an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"template answers file {str(path)!r} does not exist")
    answers = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line[0] in "{\"":
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {lineno}, column {e.colno}: not valid JSON ({e.msg})") from None
            if isinstance(value, dict):
                value = value.get("text", value.get("answer"))
            if not isinstance(value, str):
                raise DataError(f"{path}: line {lineno}: expected a string or an object with 'text' or 'answer'")
            line = value.strip()
        if line:
            answers.append(line)
    if not answers:
        raise DataError(f"template answers file {path} holds no answer")
    return answers


def _draw(seed: int, epoch: int, idx: int, salt: int, n: int) -> int:
    """A uniform draw from ``range(n)``, a pure function of its arguments (``salt`` 0 is the retain pairing's
    original stream, kept so that earlier runs reproduce; other salts give independent streams)."""
    key = (seed * 1_000_003 + epoch) * 1_000_033 + idx
    g = torch.Generator().manual_seed(key if salt == 0 else key * 8 + salt)
    return int(torch.randint(n, (1,), generator=g))


class TemplateAnswers:
    """Template answers for the forget rows: ``encode(row, t)`` is forget row ``row``'s prompt with template answer
    ``t``, tokenised like the forget rows (labels on the answer only); encodings are cached.

    ``encode_fn(row, answer_text) -> {"input_ids", "labels", "attention_mask"}`` builds one (TOFU: the row's question
    with the template as answer; see :func:`llmpost.benchmarks.tofu.recipe.tofu_template_answers`).
    """

    def __init__(self, answers: Sequence[str], encode_fn: Callable[[int, str], dict]):
        if not answers:
            raise DataError("no template answers")
        self.answers, self.encode_fn, self._cache = list(answers), encode_fn, {}

    def __len__(self) -> int:
        return len(self.answers)

    def encode(self, row: int, t: int) -> dict:
        key = (row, t)
        if key not in self._cache:
            self._cache[key] = {**self.encode_fn(row, self.answers[t]), "index": row, "template_id": t}
        return self._cache[key]

    def __getstate__(self):  # data-loader workers get the answers, not the cache
        return {**self.__dict__, "_cache": {}}


class ForgetRetainDataset(Dataset):
    """Item ``i`` is forget example ``i`` with a retain example and a template answer drawn at random.

    The retain row and the template answer are pure functions of ``(seed, epoch, i)`` (seeded ``torch.Generator``s),
    so they differ from epoch to epoch, are identical on every rank, and are reproduced exactly when training resumes
    from a checkpoint. :class:`llmpost.epochs.EpochCallback` calls :meth:`set_epoch` at the start of each epoch
    (resumed ones too). Items hold ``forget``, and ``retain`` / ``template`` when those are given.
    """

    def __init__(self, forget, retain=None, seed: int = 0, templates: TemplateAnswers | None = None):
        self.forget, self.retain, self.seed, self.epoch, self.templates = forget, retain, seed, 0, templates

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.forget)

    def retain_index(self, idx: int, epoch: int | None = None) -> int:
        return _draw(self.seed, self.epoch if epoch is None else epoch, idx, 0, len(self.retain))

    def template_index(self, idx: int, epoch: int | None = None) -> int:
        return _draw(self.seed, self.epoch if epoch is None else epoch, idx, 1, len(self.templates))

    def __getitem__(self, idx: int) -> dict:
        item = {"forget": self.forget[idx]}
        if self.retain is not None and len(self.retain):
            item["retain"] = self.retain[self.retain_index(idx)]
        if self.templates is not None:
            item["template"] = self.templates.encode(idx, self.template_index(idx))
        return item
