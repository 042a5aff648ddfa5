"""Judges for the win rate (SRPO, arXiv 2406.01660, sec. 5; see :mod:`llmpost.benchmarks.preference.winrate`): the
:class:`Judge` interface, its :class:`JudgeResult`, and the ROUGE-L judge against the gold completion. The model-based
judges (a reward model, a pairwise LLM judge over both orders) and :func:`build_judge
<llmpost.benchmarks.preference.model_judges.build_judge>` are in :mod:`llmpost.benchmarks.preference.model_judges`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmpost.eval.metrics import rouge_scores
from llmpost.utils import StrEnum


class JudgeKind(StrEnum):
    ROUGE = "rouge"
    REWARD_MODEL = "reward_model"
    PAIRWISE_LLM = "pairwise_llm"


@dataclass
class JudgeResult:
    """Per-example judgements of candidates against references, in the examples' order.

    ``scores``: in [0, 1], what the judge's docstring says (a similarity, a win indicator or a win probability).
    ``wins``: 1 (candidate better), 0.5 (tie) or 0 (reference better) for win-type judges, ``None`` for similarity
    judges. ``probs``: a win probability kept beside win indicators (the reward model's Bradley-Terry probability),
    else ``None``. ``details``: judge-specific per-example values (e.g. the rewards).
    """

    scores: list[float]
    wins: list[float] | None = None
    probs: list[float] | None = None
    details: dict[str, list[float]] = field(default_factory=dict)

    def select(self, indices: Sequence[int]) -> JudgeResult:
        """The result restricted to ``indices`` (in that order)."""
        pick = lambda xs: None if xs is None else [xs[i] for i in indices]  # noqa: E731
        return JudgeResult(pick(self.scores), pick(self.wins), pick(self.probs),
                           {k: pick(v) for k, v in self.details.items()})  # fmt: skip


class Judge(ABC):
    """Compares candidates with references, prompt by prompt. ``name`` labels the results; subclasses implement
    :meth:`judge` (equal-length lists in, a :class:`JudgeResult` of that length out)."""

    name: str = "judge"

    @abstractmethod
    def judge(self, prompts: Sequence[str], candidates: Sequence[str], references: Sequence[str]) -> JudgeResult: ...

    @staticmethod
    def _check(prompts, candidates, references) -> None:
        if not len(prompts) == len(candidates) == len(references):
            raise ValueError(f"prompts, candidates and references must have the same length, got {len(prompts)}, "
                             f"{len(candidates)} and {len(references)}")  # fmt: skip


def tie_win(diff: float) -> float:
    """A win indicator from a score difference: 1 (candidate better), 0.5 (tie) or 0."""
    return 1.0 if diff > 0 else 0.5 if diff == 0 else 0.0


# ----- ROUGE ---------------------------------------------------------------------------------------------------------
class RougeJudge(Judge):
    """ROUGE-L F1 of the candidate against the reference (:func:`llmpost.eval.metrics.rouge_scores`, Porter stemmer on
    by default): a similarity in [0, 1], not a win (``wins`` is ``None``). The prompt is not used."""

    name = "rougeL_f1"

    def __init__(self, use_stemmer: bool = True):
        self.use_stemmer = use_stemmer

    def judge(self, prompts, candidates, references) -> JudgeResult:
        self._check(prompts, candidates, references)
        scores = [rouge_scores(c, r, use_stemmer=self.use_stemmer)["rougeL_f1"] for c, r in zip(candidates, references)]
        return JudgeResult(scores=[float(s) for s in scores])
