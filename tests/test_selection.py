"""Checkpoint selection rules (llmpost.eval.selection) on runs with known curves."""

from __future__ import annotations

import pytest

from llmpost.eval.selection import Evaluation, SelectRule, check_rule, select


def _run(**curves) -> list[Evaluation]:
    """Evaluations at steps 0, 10, 20, ... with the given per-key curves."""
    n = len(next(iter(curves.values())))
    return [Evaluation(10 * i, f"ckpt-{10 * i}", {k: v[i] for k, v in curves.items() if v[i] is not None})
            for i in range(n)]  # fmt: skip


def test_last_and_empty():
    evals = _run(forget_quality=[0.1, 0.5, 0.2])
    assert select("last", evals).index == 2
    assert select("last", evals, early_stop=True, patience=1).stop is False  # last never stops early
    assert select("max_forget_quality", []).index is None


def test_max_forget_quality_takes_the_earliest_maximum_and_stops_on_patience():
    evals = _run(forget_quality=[1e-5, 0.3, 0.7, 0.7, 0.2, 0.1])
    s = select("max_forget_quality", evals)
    assert s.index == 2 and "0.7 at step 20" in s.reason and not s.stop
    assert select("max_forget_quality", evals, early_stop=True, patience=3).stop  # 3 evaluations after step 20
    assert not select("max_forget_quality", evals, early_stop=True, patience=4).stop
    assert not select("max_forget_quality", evals[:4], early_stop=True, patience=3).stop


def test_pareto_bounds_utility_by_the_target_at_step_0():
    #          step:   0     10    20    30    40
    evals = _run(forget_quality=[1e-9, 0.01, 0.2, 0.6, 0.9], model_utility=[0.50, 0.48, 0.46, 0.44, 0.30])
    s = select("pareto", evals, utility_fraction=0.9)  # bound 0.45: steps 0-20 qualify
    assert s.index == 2 and s.details["utility_bound"] == pytest.approx(0.45)
    assert select("pareto", evals, utility_fraction=0.85).index == 3  # bound 0.425
    assert select("max_forget_quality", evals).index == 4  # without the utility bound
    with pytest.raises(ValueError, match="step 0"):
        select("pareto", evals[1:])


def test_pareto_with_nothing_feasible_reports_the_last():
    evals = _run(forget_quality=[None, 0.5, 0.6], model_utility=[1.0, 0.1, 0.1])  # step 0 has no forget quality
    s = select("pareto", evals, utility_fraction=0.9)
    assert s.index == 2 and "no checkpoint keeps model_utility" in s.reason


def test_muse_bench_is_the_earliest_at_or_below_the_retrained_model():
    evals = _run(forget_knowmem_ROUGE=[0.9, 0.5, 0.30, 0.2], forget_verbmem_ROUGE=[0.9, 0.2, 0.25, 0.1])
    ref = {"forget_knowmem_ROUGE": 0.30, "forget_verbmem_ROUGE": 0.2}
    s = select("muse_bench", evals, reference=ref, early_stop=True)
    assert s.index == 2 and s.stop and "step 20" in s.reason  # "at or below": 0.30 <= 0.30
    both = select("muse_bench", evals, reference=ref, metrics=("forget_knowmem_ROUGE", "forget_verbmem_ROUGE"))
    assert both.index == 3 and not both.stop  # VerbMem 0.25 > 0.2 at step 20
    none = select("muse_bench", evals[:2], reference=ref, early_stop=True)
    assert none.index == 1 and not none.stop and "no checkpoint reached" in none.reason
    with pytest.raises(ValueError, match="retrained"):
        select("muse_bench", evals, reference={})


def test_check_rule_names_the_key():
    assert check_rule("last", "muse", has_retain_logs=False) == SelectRule.LAST
    with pytest.raises(ValueError, match="select: muse_bench is a MUSE rule; this run evaluates TOFU"):
        check_rule("muse_bench", "tofu", has_retain_logs=True)
    with pytest.raises(ValueError, match="needs retain_logs_path"):
        check_rule("max_forget_quality", "tofu", has_retain_logs=False)
    with pytest.raises(ValueError, match="select"):
        check_rule("best", "tofu", has_retain_logs=True)
