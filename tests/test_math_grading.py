"""MATH answer grading (extraction, Hendrycks string match, math-verify in bounded workers) and unbiased pass@k."""

from __future__ import annotations

import functools
import itertools
import json
import math
import multiprocessing
import threading
import time
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SHARED
from llmpost.eval.passk import pass_at_k, pass_at_k_curve, powers_of_two_upto
from llmpost.grading import verify as math_grading
from llmpost.grading.normalize import extract_boxed, is_equiv, strip_string
from llmpost.grading.verify import grade, is_correct

MATH500 = SHARED / "data" / "math" / "math500_test.jsonl"


@pytest.fixture(scope="module")
def math500():
    assert MATH500.exists(), f"MATH-500 data missing: {MATH500}"
    with open(MATH500) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 500
    return rows


@pytest.fixture(scope="module", autouse=True)
def _stop_workers():
    yield
    math_grading.shutdown()


# ------------------------------------------------------------------------------------------------------ pass@k
def _brute_pass_at_k(n: int, c: int, k: int) -> Fraction:
    samples = [True] * c + [False] * (n - c)
    draws = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in d) for d in draws), len(draws))


def test_pass_at_k_equals_enumeration_for_small_n():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(_brute_pass_at_k(n, c, k)), abs=1e-12), (n, c, k)


@pytest.mark.parametrize(("c", "k"), [(1, 1), (3, 10), (50, 100), (1000, 5), (9000, 500), (9999, 1), (5000, 5000)])
def test_pass_at_k_large_n_matches_exact_fraction(c, k):
    n = 10_000
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-10)
    assert pass_at_k(100_000, 1, 1) == pytest.approx(1e-5, rel=1e-10)


@pytest.mark.parametrize(
    ("args", "name"),
    [((0, 0, 1), "n="), ((5, -1, 1), "c="), ((5, 6, 1), "c="), ((5, 2, 0), "k="), ((5, 2, 6), "k=")],
)
def test_pass_at_k_errors_name_the_argument(args, name):
    with pytest.raises(ValueError, match=name):
        pass_at_k(*args)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_is_monotone_and_a_probability(nck):
    n, c, k = nck
    p = pass_at_k(n, c, k)
    assert 0.0 <= p <= 1.0
    if k < n:
        assert pass_at_k(n, c, k + 1) >= p - 1e-12
    if c < n:
        assert pass_at_k(n, c + 1, k) >= p - 1e-12


def test_pass_at_k_curve():
    ns, cs = [8, 10, 16], [0, 5, 16]
    curve = pass_at_k_curve(ns, cs)
    assert sorted(curve) == [1, 2, 4, 8]  # powers of two up to min(n) = 8, which is one
    for k, row in curve.items():
        values = [pass_at_k(n, c, k) for n, c in zip(ns, cs)]
        assert row["mean"] == pytest.approx(sum(values) / 3)
        assert row["stderr"] == pytest.approx(float(__import__("numpy").std(values, ddof=1)) / math.sqrt(3))
        assert 0.0 <= row["ci_low"] <= row["mean"] <= row["ci_high"] <= 1.0
    assert sorted(pass_at_k_curve([6, 7], [1, 2])) == [1, 2, 4, 6]
    assert pass_at_k_curve([6, 7], [1, 2], seed=3) == pass_at_k_curve([6, 7], [1, 2], seed=3)
    single = pass_at_k_curve([4], [2], ks=[1, 3])
    # log1p/expm1 give 0.5 to an ulp or so (0.49999999999999994 with numpy's AVX-512 log1p), not exactly
    assert single[1] == pytest.approx({"mean": 0.5, "stderr": 0.0, "ci_low": 0.5, "ci_high": 0.5}, rel=1e-12)
    assert powers_of_two_upto(9) == [1, 2, 4, 8] and powers_of_two_upto(0) == []
    with pytest.raises(ValueError, match="empty"):
        pass_at_k_curve([], [])
    with pytest.raises(ValueError, match="k=8"):
        pass_at_k_curve([8, 4], [1, 1], ks=[8])
    with pytest.raises(ValueError, match="same length"):
        pass_at_k_curve([8, 4], [1])


# -------------------------------------------------------------------------------------------- extract_boxed
def test_extract_boxed_examples():
    assert extract_boxed("so $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert extract_boxed("\\boxed{1} then \\boxed{2}") == "2"
    assert extract_boxed("\\boxed{1} then \\fbox{x^{2}}") == "x^{2}"
    assert extract_boxed("\\boxed{\\{1, 2\\}}") == "\\{1, 2\\}"
    assert extract_boxed("\\boxed{\\boxed{a}}") == "\\boxed{a}"
    assert extract_boxed("answer: \\boxed 5$ done") == "5"
    assert extract_boxed("answer: \\boxed 5.") == "5."
    assert extract_boxed("no box") is None
    assert extract_boxed("\\boxed{1} and \\boxed{2") is None
    assert extract_boxed("\\boxed{") is None and extract_boxed("\\boxed") is None and extract_boxed("") is None
    assert extract_boxed(None) is None  # type: ignore[arg-type]


_plain = st.text(st.characters(blacklist_characters="{}\\", blacklist_categories=("Cs",)), max_size=5)
_escape = st.sampled_from(["\\{", "\\}", "\\\\", "\\frac", "\\boxed", "\\boxed ", "\\fbox"])
_balanced = st.recursive(
    st.lists(st.one_of(_plain, _escape), max_size=4).map("".join),
    lambda inner: st.lists(st.one_of(_plain, _escape, inner.map(lambda s: "{" + s + "}")), max_size=4).map("".join),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(_balanced)
def test_extract_boxed_recovers_balanced_content(s):
    assert extract_boxed("Hence ... \\boxed{" + s + "} ... done.") == s


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_extract_boxed_never_raises(text):
    out = extract_boxed(text)
    assert out is None or isinstance(out, str)
    out = extract_boxed("\\boxed{" + text)
    assert out is None or isinstance(out, str)


# ------------------------------------------------------------------------------------------- Hendrycks is_equiv
@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("\\frac{1}{2}", "0.5", True),  # the reference maps the literal "0.5" to \frac{1}{2}
        ("\\dfrac12", "\\frac{1}{2}", True),
        ("\\tfrac{1}{2}", "1/2", True),
        ("10\\%", "10", True),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
        ("x = 5", "5", True),
        ("90^\\circ", "90", True),
        ("\\$18.90", "18.90", True),
        ("5 \\text{ cm}", "5", True),
        (".5", "\\frac{1}{2}", True),
        ("\\sqrt2", "\\sqrt{2}", True),
        ("0.50", "0.5", False),  # string match, not numeric: 0.50 is not normalised
        ("2", "3", False),
        (None, "3", False),
        ("\\frac", "\\frac", True),  # malformed: the reference falls back to comparing raw strings
        ("\\frac", "1", False),
    ],
)
def test_is_equiv_hendrycks_examples(pred, gold, expected):
    assert is_equiv(pred, gold) is expected


def test_strip_string_steps():
    assert strip_string("\\dfrac{3}{4}\\!") == "\\frac{3}{4}"
    assert strip_string("k = \\frac 3 4") == "\\frac{3}{4}"
    assert strip_string("3/4") == "\\frac{3}{4}" and strip_string("03/4") == "03/4"
    with pytest.raises(ValueError):
        strip_string("\\sqrt")


# --------------------------------------------------------------------------------------------- math-verify
def test_math500_boxed_answers_and_reference_solutions_grade_correct(math500):
    golds = [row["answer"] for row in math500]
    results = grade(["\\boxed{" + g + "}" for g in golds] + [row["solution"] for row in math500], golds + golds)
    boxed, solutions = results[:500], results[500:]
    assert all(boxed), [g for g, ok in zip(golds, boxed) if not ok]
    assert sum(solutions) >= 499, [g for g, ok in zip(golds, solutions) if not ok]


def test_wrong_and_equivalent_answers():
    completions = ["The answer is $\\boxed{3}$.", "so \\boxed{\\frac{2}{4}}", "\\boxed{(1,2)}", "\\boxed{x=6}",
                   "\\boxed{\\frac43}", "\\boxed{11\\sqrt2}", "\\boxed{2}", "no answer at all"]
    golds = ["4", "0.5", "(2,1)", "5", "\\frac{4}{3}", "11\\sqrt{2}", "\\frac{4}{2}", "7"]
    assert grade(completions, golds, workers=2) == [False, True, False, False, True, True, True, False]
    assert grade([], []) == []
    with pytest.raises(ValueError, match="length"):
        grade(["a"], [])


HOSTILE = [
    "(" * 5000,
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{(10^{10})!}",
    "\\boxed{" + "1+" * 20_000 + "1}",
    "\\boxed{" * 300 + "}}}",
    "}}}{{{\\frac{\\sqrt{",
    "",
    "\x00\udcff\\boxed{\u202e}",
]


@pytest.mark.parametrize("completion", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_completions_return_false_within_timeout(completion):
    is_correct("\\boxed{1}", "1")  # a warm worker, so only the grading itself is timed
    start = time.monotonic()
    assert is_correct(completion, "3", timeout=1.0) is False
    assert time.monotonic() - start < 1.0 + 2.0
    assert is_correct(None, "3") is False  # type: ignore[arg-type]
    assert is_correct("\\boxed{3}", None) is False  # type: ignore[arg-type]


def test_hung_job_is_killed_and_the_pool_still_answers():
    assert is_correct("\\boxed{1}", "1") is True
    pool = math_grading._get_pool()
    workers = set(pool.all)
    assert is_correct("\\boxed{9^{9^{9^{9}}}}", "1", timeout=1.0) is False
    assert len(pool.all) == len(workers) and pool.all != workers  # the stuck worker was replaced, not leaked
    assert is_correct("\\boxed{\\frac{1}{3}}", "\\frac{2}{6}") is True
    assert grade(["\\boxed{(10^{10})!}", "\\boxed{5}", "\\boxed{6}"], ["5", "5", "5"], timeout=1.0) == [
        False, True, False]


def test_is_correct_from_a_thread():
    results = []
    threads = [threading.Thread(target=lambda g=g: results.append(is_correct("\\boxed{" + g + "}", g)))
               for g in ("1", "\\frac{1}{2}", "x^2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [True, True, True]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_is_correct_from_daemonic_pool_workers(method):
    """multiprocessing.Pool workers are daemonic (no multiprocessing children); the subprocess workers still start."""
    with multiprocessing.get_context(method).Pool(1) as pool:
        out = pool.starmap(functools.partial(is_correct, timeout=1.0), [("\\boxed{2}", "2"), ("\\boxed{3}", "2"), ("\\boxed{9^{9^{9^{9}}}}", "1")])
    assert out == [True, False, False]


def test_fallback_in_process_when_no_subprocess_can_start(monkeypatch):
    def refuse():
        raise OSError("no subprocesses here")

    math_grading.shutdown()
    monkeypatch.setattr(math_grading, "_Worker", refuse)
    assert is_correct("\\boxed{\\frac{1}{2}}", "0.5") is True  # main thread: math-verify's signal timeouts
    assert is_correct("\\boxed{3}", "0.5") is False
    results = []
    thread = threading.Thread(target=lambda: results.append(is_correct("\\boxed{7}", "7")))
    thread.start()
    thread.join(timeout=60)
    assert results == [True]  # other threads: unbounded, but no signal error
    math_grading.shutdown()
