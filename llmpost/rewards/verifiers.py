"""Binary verifiers ``(completion, gold) -> 0/1`` for RL with verifiable (and noisy) rewards (issue 7, section 2).

A verifier is a plain callable with metadata attributes (``name``, ``description``). Three kinds:

* ``rule_based_verifier``: a brittle exact match of the last ``\\boxed{}`` after light normalisation. It rejects
  equivalent forms (``12/36`` vs ``1/3``, ``\\frac{1}{2}`` vs ``0.5``, ``\\dfrac`` vs ``\\frac``): real false
  negatives, the example the paper (arXiv 2510.00915, abstract) gives for rule-based checkers.
* ``math_verify_verifier``: the math-verify equivalence checker of ``llmpost.grading.verify`` (the stronger one).
* ``NoisyVerifier``: wraps any verifier and flips its verdicts at rates (rho0, rho1), seeded, for controlled
  experiments with the noise channel of ``llmpost.losses.noisy_grpo``.

``safe_verify`` is how callers should invoke a verifier: an empty completion is 0, and a verifier that raises or
returns something other than 0/1 counts as 0 (and is counted in ``VerifyStats``), so one bad completion never
crashes a training step. Wall time is the base verifier's job: the rule-based one is linear in the text, and
``math_verify_verifier`` is bounded by ``is_correct``'s ``timeout`` (a killed worker subprocess).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llmpost.grading.normalize import extract_boxed
from llmpost.grading.verify import is_correct

__all__ = ["Verifier", "VerifyStats", "math_verify_verifier", "normalize_answer",
           "rule_based_verifier", "safe_verify"]

Verifier = Callable[[str, str], int]

_STRIP = re.compile(r"\\left|\\right|\\!|\s|\$")


def normalize_answer(answer: str) -> str:
    """Light normalisation: drop whitespace, ``\\left``, ``\\right``, ``\\!`` and ``$``, then trailing ``.``.

    Nothing semantic (no fraction, decimal or ``\\dfrac`` rewriting): that brittleness is the point.
    """
    return _STRIP.sub("", answer).rstrip(".")


def rule_based_verifier(completion: str, gold: str) -> int:
    """1 iff the last ``\\boxed{}`` of ``completion`` equals ``gold`` after ``normalize_answer``, else 0.

    No box, an unclosed box or non-string input is 0. Rejects ``12/36`` vs ``1/3`` and ``\\frac{1}{2}`` vs ``0.5``.
    """
    if not isinstance(completion, str) or not isinstance(gold, str):
        return 0
    pred = extract_boxed(completion)
    if pred is None:
        return 0
    return int(normalize_answer(pred) == normalize_answer(gold))


rule_based_verifier.name = "rule_based"
rule_based_verifier.description = "exact match of the last \\boxed{} after light normalisation (brittle)"


def math_verify_verifier(completion: str, gold: str, timeout: float = 5.0) -> int:
    """1 iff math-verify finds ``completion``'s final answer equivalent to ``gold`` (``math_grading.is_correct``).

    Bounded by ``timeout`` seconds; a timeout, junk input or any grading error is 0. Raises only ImportError when
    math-verify is not installed (a setup error, meant to surface before training starts).
    """
    if not isinstance(completion, str) or not isinstance(gold, str):
        return 0
    return int(is_correct(completion, gold, timeout=timeout))


math_verify_verifier.name = "math_verify"
math_verify_verifier.description = "math-verify symbolic equivalence, bounded in wall time (llmpost.grading.verify)"


@dataclass
class VerifyStats:
    """Counters kept by ``safe_verify``: calls, empty completions (0) and failing verifiers (raised or non-0/1: 0)."""

    calls: int = 0
    empty: int = 0
    errors: int = 0


def safe_verify(verifier: Verifier, completion: str, gold: str, stats: VerifyStats | None = None) -> int:
    """``verifier(completion, gold)`` as 0/1 that never raises: empty/blank/non-string completion -> 0 (not called),
    an exception or a result other than 0/1/True/False -> 0 and ``stats.errors += 1``."""
    if stats is not None:
        stats.calls += 1
    if not isinstance(completion, str) or not completion.strip():
        if stats is not None:
            stats.empty += 1
        return 0
    try:
        result = verifier(completion, gold)
    except Exception:  # any failure of a verifier on one completion is a 0, never a crashed step
        result = None
    if isinstance(result, (bool, int, np.integer)) and result in (0, 1):
        return int(result)
    if stats is not None:
        stats.errors += 1
    return 0


RHO1_CAP = 0.5  # rho1^ is clipped to [0, RHO1_CAP) (issue 7, section 3)


