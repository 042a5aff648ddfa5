"""Judges and win rates (llmpost.benchmarks.preference.judges, .model_judges, .winrate): ROUGE-L F1 by hand; the
pairwise LLM judge on the tiny real Llama (scores in [0, 1], exact swap symmetry from averaging both orders, batching
against single unpadded forwards, template and label validation); a random-init one-label reward model (ties, wins
against rewards computed directly); the percentile bootstrap; per-revision summaries on hand-made scores; build_judge's
dispatch and errors."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from conftest import TINY_MODEL
from llmpost.benchmarks.preference import judges as J
from llmpost.benchmarks.preference import model_judges as MJ
from llmpost.benchmarks.preference import winrate as W
from llmpost.eval.stats import bootstrap_mean

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

PROMPTS = ["Where did Tom go?", "What did Lily find?", "Why was the dog sad?"]
CANDIDATES = ["Tom went to the park with his mom.", "A shiny red ball.", ""]
REFERENCES = ["He went to the park.", "Lily found a little cat in the garden.", "The dog lost its bone."]


# ----- ROUGE ---------------------------------------------------------------------------------------------------------
def test_rouge_judge_by_hand():
    judge = J.RougeJudge()
    res = judge.judge(["q"] * 3, ["the cat sat on the mat", "alpha beta", "the cat sat"],
                      ["the cat sat on the mat", "gamma delta", "the cat ran away"])  # fmt: skip
    # "the cat sat" vs "the cat ran away": LCS 2, precision 2/3, recall 2/4, F1 = 2PR / (P + R) = 4/7
    assert res.scores == pytest.approx([1.0, 0.0, 4 / 7])
    assert res.wins is None and res.probs is None and judge.name == "rougeL_f1"
    with pytest.raises(ValueError, match="same length"):
        judge.judge(["q"], ["a", "b"], ["c", "d"])


# ----- pairwise LLM judge --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(TINY_MODEL, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def pairwise(lm, tokenizer):
    return MJ.PairwiseLLMJudge(lm, tokenizer, batch_size=4)


def test_pairwise_scores_are_probabilities_and_swap_symmetric(pairwise):
    forward = pairwise.judge(PROMPTS, CANDIDATES, REFERENCES)
    swapped = pairwise.judge(PROMPTS, REFERENCES, CANDIDATES)
    assert all(0.0 <= s <= 1.0 for s in forward.scores)
    assert len(set(forward.scores)) == 3 and all(abs(s - 0.5) > 1e-6 for s in forward.scores)  # not a constant
    # p(c, r) = 0.5 (P_A(c, r) + 1 - P_A(r, c)); p(r, c) = 0.5 (P_A(r, c) + 1 - P_A(c, r)) = 1 - p(c, r).
    np.testing.assert_allclose(np.add(forward.scores, swapped.scores), 1.0, atol=1e-6)
    assert forward.details["p_a_first"] == swapped.details["p_a_second"]
    assert forward.wins == [1.0 - w for w in swapped.wins]
    assert forward.wins == [1.0 if s > 0.5 else 0.0 for s in forward.scores]
    same = pairwise.judge(PROMPTS, REFERENCES, REFERENCES)
    assert same.scores == pytest.approx([0.5] * 3, abs=1e-12) and same.wins == [0.5] * 3


def test_pairwise_batched_matches_single_forward(pairwise, lm, tokenizer):
    res = pairwise.judge(PROMPTS, CANDIDATES, REFERENCES)
    a, b = pairwise.label_ids
    assert a != b
    for i in range(len(PROMPTS)):
        for text, p in ((MJ.DEFAULT_PAIRWISE_TEMPLATE.format(prompt=PROMPTS[i], a=CANDIDATES[i], b=REFERENCES[i]),
                         res.details["p_a_first"][i]),
                        (MJ.DEFAULT_PAIRWISE_TEMPLATE.format(prompt=PROMPTS[i], a=REFERENCES[i], b=CANDIDATES[i]),
                         res.details["p_a_second"][i])):  # fmt: skip
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            with torch.no_grad():
                logits = lm(input_ids=ids).logits[0, -1].double()
            expected = math.exp(logits[a]) / (math.exp(logits[a]) + math.exp(logits[b]))
            assert p == pytest.approx(expected, abs=1e-5)
        assert res.scores[i] == pytest.approx(0.5 * (res.details["p_a_first"][i] + 1 - res.details["p_a_second"][i]))


def test_pairwise_label_tokens(lm, tokenizer, caplog):
    probe = MJ.DEFAULT_PAIRWISE_TEMPLATE.format(prompt="What is it?", a="It is one.", b="It is two.")
    with caplog.at_level(logging.WARNING, logger="llmpost.benchmarks.preference.model_judges"):
        judge = MJ.PairwiseLLMJudge(lm, tokenizer)
    for label, token in zip(judge.labels, judge.label_ids):  # each label's first token right after the template
        base = tokenizer(probe)["input_ids"]
        assert tokenizer(probe + label)["input_ids"][len(base)] == token
    # stories260K's tiny vocabulary writes " A" as two tokens ("▁", "A"): only the first counts, and a warning says so
    assert "only its first token is scored" in caplog.text
    with pytest.raises(ValueError, match="start with the same token"):
        MJ.PairwiseLLMJudge(lm, tokenizer, labels=(" A", " Ax"))
    with pytest.raises(ValueError, match="two different"):
        MJ.PairwiseLLMJudge(lm, tokenizer, labels=(" A", " A"))


@pytest.mark.parametrize(
    ("template", "match"),
    [("Q: {prompt}\nA: {a}\nBetter:", r"placeholder \{b\}"),
     ("{a} {b}\nBetter:", r"placeholder \{prompt\}"),
     ("Q: {prompt} {a} {b} {c}\nBetter:", r"only \{prompt\}, \{a\}, \{b\}.*\{c\}"),
     ("Q: {prompt} A: {a} B: {b}", "must end with fixed text"),
     ("Q: {prompt} {a} {b} {\nBetter:", "literal brace")],
)  # fmt: skip
def test_pairwise_template_validation(lm, tokenizer, template, match):
    with pytest.raises(ValueError, match=match):
        MJ.PairwiseLLMJudge(lm, tokenizer, template=template)


def test_pairwise_needs_a_tokenizer_with_a_model_object(lm):
    with pytest.raises(ValueError, match="tokenizer"):
        MJ.PairwiseLLMJudge(lm)


# ----- reward model --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tokenizer):
    from transformers import AutoConfig, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(TINY_MODEL, num_labels=1)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # rewards of order 1: distinct texts get distinct rewards
    path = tmp_path_factory.mktemp("reward_model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_reward_model_judge(reward_model_dir, tokenizer):
    from transformers import AutoModelForSequenceClassification

    judge = MJ.RewardModelJudge(str(reward_model_dir), batch_size=2, template="Question: {prompt}\nAnswer: {completion}")
    res = judge.judge(PROMPTS, CANDIDATES, REFERENCES)
    direct = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()

    def reward(prompt, completion):  # one unpadded text: no pad token involved
        ids = torch.tensor([tokenizer(f"Question: {prompt}\nAnswer: {completion}")["input_ids"]])
        with torch.no_grad():
            return direct(input_ids=ids).logits[0, 0].item()

    r_c = [reward(p, c) for p, c in zip(PROMPTS, CANDIDATES)]
    r_r = [reward(p, r) for p, r in zip(PROMPTS, REFERENCES)]
    assert res.details["reward_candidate"] == pytest.approx(r_c, abs=1e-5)
    assert res.details["reward_reference"] == pytest.approx(r_r, abs=1e-5)
    assert min(abs(c - r) for c, r in zip(r_c, r_r)) > 1e-3  # the comparisons below are not decided by float noise
    expected = [1.0 if c > r else 0.0 for c, r in zip(r_c, r_r)]
    assert res.wins == expected and res.scores == expected
    assert res.probs == pytest.approx([1 / (1 + math.exp(r - c)) for c, r in zip(r_c, r_r)], abs=1e-5)
    assert judge.model.config.pad_token_id == tokenizer.pad_token_id  # set from the tokenizer (the config had none)

    tie = judge.judge(PROMPTS, REFERENCES, REFERENCES)
    assert tie.wins == [0.5] * 3 and tie.scores == [0.5] * 3 and tie.probs == [0.5] * 3


def test_reward_model_rejects_several_labels(tmp_path, tokenizer):
    from transformers import AutoConfig, LlamaForSequenceClassification

    model = LlamaForSequenceClassification(AutoConfig.from_pretrained(TINY_MODEL, num_labels=2))
    with pytest.raises(ValueError, match="num_labels=2"):
        MJ.RewardModelJudge(model, tokenizer)
    with pytest.raises(ValueError, match=r"\{completion\}"):
        MJ.RewardModelJudge(model, tokenizer, template="{prompt}")


# ----- build_judge ---------------------------------------------------------------------------------------------------
def test_build_judge(reward_model_dir):
    assert isinstance(MJ.build_judge("rouge", None), J.RougeJudge)
    assert isinstance(MJ.build_judge(J.JudgeKind.REWARD_MODEL, str(reward_model_dir)), MJ.RewardModelJudge)
    judge = MJ.build_judge("pairwise_llm", str(TINY_MODEL), batch_size=3)
    assert isinstance(judge, MJ.PairwiseLLMJudge) and judge.batch_size == 3
    with pytest.raises(ValueError, match="judge_model_path.*'reward_model' needs a model"):
        MJ.build_judge("reward_model", None)
    with pytest.raises(ValueError, match="eval.judge_model"):
        MJ.build_judge("pairwise_llm", "", key="eval.judge_model")
    with pytest.raises(ValueError, match=r"judge: 'gpt4' is not one of \['rouge', 'reward_model', 'pairwise_llm'\]"):
        MJ.build_judge("gpt4", None)
    with pytest.raises(FileNotFoundError, match="judge_model_path"):
        MJ.build_judge("reward_model", "/nonexistent/rm")


# ----- statistics ----------------------------------------------------------------------------------------------------
def test_bootstrap_mean():
    assert bootstrap_mean([0.1] * 7) == (0.1, 0.1, 0.1)  # the interval collapses, exactly
    x = np.random.default_rng(1).random(50)
    first = bootstrap_mean(x, n_resamples=500, seed=3)
    assert first == bootstrap_mean(list(x), n_resamples=500, seed=3)  # deterministic for a seed
    assert first != bootstrap_mean(x, n_resamples=500, seed=4)
    mean, low, high = first
    assert mean == pytest.approx(x.mean()) and low < mean < high
    se = x.std(ddof=1) / math.sqrt(len(x))  # the 95% interval is about mean +- 1.96 se
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.25)
    narrow = bootstrap_mean(x, n_resamples=500, seed=3, confidence=0.5)
    assert low < narrow[1] < narrow[2] < high
    assert bootstrap_mean([0.0, 1.0], n_resamples=200)[1:] != (0.0, 0.0)
    for bad in ({"values": []}, {"values": [1.0, float("nan")]}, {"values": [1.0], "n_resamples": 0},
                {"values": [1.0], "confidence": 1.0}):  # fmt: skip
        with pytest.raises(ValueError):
            bootstrap_mean(**bad)


class TableJudge(J.Judge):
    """A judge with hand-made scores: ``table[candidate]``, counted as wins."""

    name = "table"

    def __init__(self, table):
        self.table = table

    def judge(self, prompts, candidates, references):
        scores = [self.table[c] for c in candidates]
        return J.JudgeResult(scores=scores, wins=list(scores))


def test_revision_win_rates_on_hand_made_scores():
    # prompt i, step j -> draft "p{i}y{j}"; scores: y_0 = (0, .5, 1), y_1 = (1, .5, 1), y_2 = (1, 1, 0)
    scores = {0: (0.0, 0.5, 1.0), 1: (1.0, 0.5, 1.0), 2: (1.0, 1.0, 0.0)}
    table = {f"p{i}y{j}": scores[j][i] for i in range(3) for j in range(3)}
    drafts = [[f"p{i}y{j}" for j in range(3)] for i in range(3)]
    rows = W.revision_win_rates(drafts, ["a", "b", "c"], ["ra", "rb", "rc"], TableJudge(table), n_resamples=400)
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["n"] == 3 and r["judge"] == "table" for r in rows)
    assert [r["score"] for r in rows] == pytest.approx([0.5, 2.5 / 3, 2 / 3])
    assert [r["win_rate"] for r in rows] == pytest.approx([0.5, 2.5 / 3, 2 / 3])
    assert [r["improvement"] for r in rows] == pytest.approx([0.0, 1 / 3, 1 / 6])  # (1, 0, 0) and (1, .5, -1)
    assert rows[0]["improvement_ci_low"] == rows[0]["improvement_ci_high"] == 0.0
    assert rows[1]["improvement_ci_low"] == pytest.approx(0.0) and rows[1]["improvement_ci_high"] == pytest.approx(1.0)
    assert rows[2]["improvement_ci_low"] < 1 / 6 < rows[2]["improvement_ci_high"]
    assert rows[0]["score_stderr"] == pytest.approx(0.5 / math.sqrt(3))
    for r in rows:
        assert r["score_ci_low"] <= r["score"] <= r["score_ci_high"]
        # the paired interval equals the bootstrap of the per-prompt differences
        j = r["step"]
        diff = [scores[j][i] - scores[0][i] for i in range(3)]
        assert (r["improvement"], r["improvement_ci_low"], r["improvement_ci_high"]) == bootstrap_mean(
            diff, n_resamples=400)  # fmt: skip
    table_md = W.win_rate_table(rows)
    assert table_md.splitlines()[0].startswith("| revision | judge | n | score | score 95% CI")
    assert "| y_2 | table | 3 | 0.6667 |" in table_md


def test_revision_win_rates_with_rouge_and_shape_errors():
    drafts = [["the cat sat", "the cat sat on the mat"], ["alpha", "gamma delta"]]
    rows = W.revision_win_rates(drafts, ["q1", "q2"], ["the cat sat on the mat", "gamma delta"], J.RougeJudge())
    assert [r["score"] for r in rows] == pytest.approx([(2 / 3 + 0.0) / 2, 1.0])
    assert rows[1]["improvement"] == pytest.approx(1.0 - 1 / 3)
    assert "win_rate" not in rows[0] and "prob" not in rows[0]
    assert "| y_0 | rougeL_f1 | 2 |" in W.win_rate_table(rows) and "| - |" in W.win_rate_table(rows)
    with pytest.raises(ValueError, match="same, non-zero number of drafts"):
        W.revision_win_rates([["a", "b"], ["c"]], ["q1", "q2"], ["r1", "r2"], J.RougeJudge())
    with pytest.raises(ValueError, match="same length"):
        W.revision_win_rates([["a"]], ["q1", "q2"], ["r1", "r2"], J.RougeJudge())
