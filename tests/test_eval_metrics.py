"""Tier 1: every TOFU/MUSE metric function against hand-derived values (no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from llmpost.eval import metrics as M
from llmpost.eval import mia


def test_avg_nll_and_probability_from_token_logps():
    logps = torch.tensor([[-1.0, -2.0, -3.0, 0.0], [-0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    nll = M.avg_nll(logps, mask)
    assert nll[:2].tolist() == pytest.approx([2.0, 0.5])
    assert math.isnan(nll[2])  # no answer token: undefined, not a fake probability of 1
    res = M.probability(nll[:2].tolist(), indices=[7, 9])
    assert list(res["value_by_index"]) == ["7", "9"]
    assert res["value_by_index"]["7"] == {"prob": pytest.approx(math.exp(-2)), "avg_loss": 2.0}
    assert res["agg_value"] == pytest.approx((math.exp(-2) + math.exp(-0.5)) / 2)


def test_probability_with_answer_lists_and_missing_values():
    res = M.probability([[1.0, 3.0], None, [2.0, 2.0]])
    assert res["value_by_index"]["0"]["prob"] == pytest.approx([math.exp(-1), math.exp(-3)])
    assert res["value_by_index"]["1"] == {"prob": None, "avg_loss": None}
    # mean over options, then over examples; the None example is left out
    expected = ((math.exp(-1) + math.exp(-3)) / 2 + math.exp(-2)) / 2
    assert res["agg_value"] == pytest.approx(expected)


def test_normalised_probability():
    correct = M.probability([-math.log(0.5), -math.log(0.2)])
    wrong = M.probability([[-math.log(p) for p in (0.1, 0.2, 0.2)], [-math.log(p) for p in (0.2, 0.2, 0.4)]])
    res = M.normalised_probability(correct, wrong)
    assert res["value_by_index"]["0"]["prob"] == pytest.approx(0.5 / 1.0)
    assert res["value_by_index"]["1"]["prob"] == pytest.approx(0.2 / 1.0)
    assert res["agg_value"] == pytest.approx(0.35)
    with pytest.raises(ValueError, match="same indices"):
        M.normalised_probability(correct, M.probability([[1.0]], indices=[5]))


def test_truth_ratio_uses_geometric_mean_of_perturbed_and_each_aggregator():
    # true answer: avg NLL 1 (p = e^-1); perturbed: NLLs 0.5, 1.5, 2.5 -> mean 1.5 -> geometric-mean prob e^-1.5
    correct = M.probability([1.0, 2.0])
    wrong = M.probability([[0.5, 1.5, 2.5], [1.0, 1.0, 1.0]])
    r0, r1 = math.exp(-1.5) / math.exp(-1.0), math.exp(-1.0) / math.exp(-2.0)  # 0.6065, 2.718
    res = M.truth_ratio(correct, wrong, "closer_to_1_better")
    assert [v["score"] for v in res["value_by_index"].values()] == pytest.approx([r0, r1], rel=1e-9)
    assert res["agg_value"] == pytest.approx((r0 + 1 / r1) / 2)  # mean(min(R, 1/R))
    assert M.truth_ratio(correct, wrong, "true_better")["agg_value"] == pytest.approx((1 - r0 + 0) / 2)
    assert M.truth_ratio(correct, wrong, "prob_mean")["agg_value"] == pytest.approx((r0 + r1) / 2)
    # arithmetic mean of probabilities would differ: the geometric mean is what TOFU's code and open-unlearning use
    arith = np.mean(np.exp(-np.array([0.5, 1.5, 2.5]))) / math.exp(-1.0)
    assert abs(arith - r0) > 0.05
    with pytest.raises(ValueError):
        M.truth_ratio(correct, wrong, "closest")


def test_rouge_recall_on_toy_strings():
    s = M.rouge_scores("the cat is on a mat", "The cat sat on the mat.")
    assert s["rougeL_recall"] == pytest.approx(4 / 6)  # LCS the,cat,on,mat over 6 reference words
    assert s["rouge1_recall"] == pytest.approx(4 / 6)
    assert s["rougeL_f1"] == pytest.approx(2 * (4 / 6) * (4 / 6) / (4 / 6 + 4 / 6))
    # the Porter stemmer makes "writes" match "writing"
    assert M.rouge_scores("she writing books", "She writes books")["rougeL_recall"] == pytest.approx(1.0)
    res = M.rouge(["a b", "x"], ["a b c d", "y"], inputs=["q1", "q2"])
    assert res["value_by_index"]["0"]["rougeL_recall"] == pytest.approx(0.5)
    assert res["value_by_index"]["0"]["input"] == "q1" and res["value_by_index"]["1"]["generation"] == "x"
    assert set(res["value_by_index"]["1"]) == {"rouge1_recall", "rougeL_f1", "rougeL_recall", "input",
                                               "ground_truth", "generation"}  # fmt: skip
    assert res["agg_value"] == pytest.approx(0.25)


def test_forget_quality_is_the_ks_p_value():
    res = M.forget_quality([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert res["agg_value"] == pytest.approx(0.1)  # exact KS: D = 1, p = 2 / C(6, 3)
    x, y = [0.3, 1.2, 0.8, 0.5, 2.0], [0.9, 0.4, 1.1, 0.7]
    assert M.forget_quality(x, y)["agg_value"] == pytest.approx(stats.ks_2samp(x, y).pvalue)
    assert M.forget_quality(x, x)["agg_value"] == pytest.approx(1.0)
    # TOFU's reciprocal convention gives the same p-value
    inv = [1 / v for v in x], [1 / v for v in y]
    assert M.forget_quality(*inv)["agg_value"] == pytest.approx(M.forget_quality(x, y)["agg_value"])
    assert M.forget_quality(x, None)["agg_value"] is None


def test_model_utility_is_the_harmonic_mean_of_nine_values():
    values = dict(zip(M.MODEL_UTILITY_KEYS, [1.0, 0.5, 0.25, 1.0, 0.5, 0.25, 1.0, 0.5, 0.25]))
    assert M.model_utility(values)["agg_value"] == pytest.approx(9 / (3 * (1 + 2 + 4)))
    assert M.model_utility({**values, "wf_Q_A_ROUGE": 0.0})["agg_value"] == 0.0
    assert M.model_utility({k: v for k, v in values.items() if k != "ra_Q_A_ROUGE"})["agg_value"] is None


def test_min_k_auc_and_privleak():
    assert mia.min_k_score([-1.0, -5.0, -3.0, -2.0, -4.0], k=0.4) == pytest.approx(4.5)  # two lowest: -5, -4
    assert mia.min_k_score([-1.0, -2.0], k=0.4) == pytest.approx(2.0)  # at least one token
    assert mia.min_k_score([], k=0.4) == 0.0
    # holdout > forget in 3 of 4 pairs, one tie counts 1/2
    assert mia.auc([1.0, 2.0], [3.0, 2.0]) == pytest.approx(0.875)
    assert mia.auc([1.0, 1.0], [1.0, 1.0]) == pytest.approx(0.5)
    entry = mia.mia([1.0, 2.0], [3.0, 2.0])
    assert entry["agg_value"] == entry["auc"] == pytest.approx(0.875)
    assert entry["forget"]["value_by_index"]["1"] == {"score": 2.0} and entry["holdout"]["agg_value"] == 2.5
    assert mia.privleak(0.875, 0.5)["agg_value"] == pytest.approx((0.125 - 0.5) / 0.5 * 100)  # -75
    assert mia.privleak(0.6, 0.6)["agg_value"] == pytest.approx(0.0)


def test_extraction_strength():
    assert mia.extraction_strength_score([5, 6, 7, 8], [5, 6, 7, 8]) == 1.0
    assert mia.extraction_strength_score([0, 6, 7, 8], [5, 6, 7, 8]) == pytest.approx(0.75)
    assert mia.extraction_strength_score([5, 6, 0, 8], [5, 6, 7, 8]) == pytest.approx(0.25)
    # no matching suffix: open-unlearning's loop leaves k = n - 1 (1/n), the paper would give 0
    assert mia.extraction_strength_score([0, 0, 0, 0], [5, 6, 7, 8]) == pytest.approx(0.25)
    assert mia.extraction_strength_score([], []) == 0.0
    res = mia.extraction_strength([1.0, 0.5], indices=[3, 4])
    assert res == {"agg_value": 0.75, "value_by_index": {"3": {"score": 1.0}, "4": {"score": 0.5}}}
