"""NoisyGRPOTrainer (issues 7 and 17): 2 optimizer steps of the tiny recipe per correction mode on CPU, the advantages
it produces against ``advantages(corrected_scores(...))`` computed by hand (EMA, leave-one-out baseline, PGFC scales),
the cancellation under group standardisation, the matched-control audit, appeals that estimate only or recover, and
config errors that name the key."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY_MODEL
from llmpost.losses.noisy_grpo import (
    AdvantageNorm,
    Correction,
    NoiseRates,
    advantage_audit,
    advantages,
    corrected_scores,
    leave_one_out_baseline,
)
from llmpost.trainers.noisy_grpo import Baseline, NoisyGRPOConfig, NoisyGRPOTrainer

pytestmark = pytest.mark.usefixtures("one_thread")

_spec = importlib.util.spec_from_file_location("grpo_noisy_math", ROOT / "recipes" / "grpo_noisy_math.py")
recipe = importlib.util.module_from_spec(_spec)
sys.modules["grpo_noisy_math"] = recipe  # dataclasses need the module registered
_spec.loader.exec_module(recipe)

# Injected noise with false positives, so the untrained model gets some 1s (the verdicts vary within groups).
BASE = ["--config", str(ROOT / "configs" / "grpo_noisy_math_tiny.yaml"), "--model_name_or_path", str(TINY_MODEL),
        "--max_steps", "2", "--logging_steps", "1", "--eval_after_training", "false", "--noise_rho0", "0.4",
        "--noise_rho1", "0.3", "--rho0", "0.4", "--rho1", "0.3", "--disable_tqdm", "true", "--heldout_eval_steps", "0",
        "--num_generations", "4", "--per_device_train_batch_size", "16"]
MODES = {
    "none": ["--correction", "none"],
    "backward": ["--correction", "backward"],
    "forward": ["--correction", "forward"],
    "forward_appeals": ["--correction", "forward", "--appeals_fraction", "0.5"],
    "backward_loo": ["--correction", "backward", "--baseline", "loo"],
}


class CaptureTrainer(NoisyGRPOTrainer):
    """Records the gathered raw rewards, the rates used and the advantages of each generation batch."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        self.captured = getattr(self, "captured", [])
        self.captured.append((self._raw_rewards.clone(), self.current_rates(), out["advantages"].clone(),
                              self.baseline_ema.value, self.scale_ema.value))
        self.lengths = getattr(self, "lengths", [])
        self.lengths.append(out["completion_mask"].sum(dim=1))
        return out


class AlwaysOverturn(CaptureTrainer):
    """Appeals to a "stronger" checker that overturns every negative it sees."""

    def __init__(self, *args, appeal_verifier=None, **kwargs):
        super().__init__(*args, appeal_verifier=lambda completion, gold: 1, **kwargs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, extra in MODES.items():
        trainer = recipe.main([*BASE, *extra, "--output_dir", str(tmp_path_factory.mktemp(name))])
        out[name] = trainer
    return out


@pytest.mark.parametrize("mode", list(MODES))
def test_two_steps_change_parameters_and_log(runs, mode):
    trainer = runs[mode]
    assert trainer.state.global_step == 2
    before = load_file(str(TINY_MODEL / "model.safetensors"))
    after = load_file(f"{trainer.args.output_dir}/model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
    logs = [h for h in trainer.state.log_history if "noisy/raw_reward" in h]
    assert len(logs) == 2
    keys = ["noisy/raw_reward", "noisy/clean_reward", "noisy/corrected_score", "noisy/rho1", "noisy/baseline",
            "noisy/scale"]
    if mode == "forward_appeals":
        keys += ["noisy/rho1_hat", "noisy/appeals", "noisy/overturns"]
        assert any(h["noisy/appeals"] > 0 for h in logs)
    if mode != "none":  # B.10's audit against the matched control, every logging step
        keys += ["noisy/audit_mean_abs_diff", "noisy/audit_max_abs_diff", "noisy/audit_cosine"]
    else:
        assert not any(k.startswith("noisy/audit") for h in logs for k in h)
    for h in logs:
        for k in keys:
            assert math.isfinite(h[k]), (k, h)
        # The oracle (the clean verifier) sees what the untrained model really does: nothing correct. The verifier's
        # injected false positives (rho0 = 0.4) are what the policy is trained on.
        assert h["noisy/clean_reward"] == 0.0 and h["noisy/raw_reward"] > 0.0
    history = json.loads((Path(trainer.args.output_dir) / "log_history.json").read_text())
    assert [h["noisy/raw_reward"] for h in history if "noisy/raw_reward" in h] == [h["noisy/raw_reward"] for h in logs]


def _capture(tmp_path, *extra, steps="1"):
    trainer, _ = recipe.build([*BASE, "--max_steps", steps, *extra, "--output_dir", str(tmp_path)], CaptureTrainer)
    trainer.train()
    return trainer


def test_advantages_match_hand_computation(tmp_path):
    trainer = _capture(tmp_path, "--correction", "backward", "--baseline", "ema", steps="2")
    g = trainer.num_generations
    ema_before = None
    for raw, rates, adv, ema_after, _ in trainer.captured:
        assert set(raw.tolist()) <= {0.0, 1.0}
        scores = corrected_scores(raw, Correction.BACKWARD, rates)
        base = scores.mean().item() if ema_before is None else ema_before
        expected = advantages(scores, g, AdvantageNorm.NONE, baseline=base, scale=1.0)
        torch.testing.assert_close(adv, expected)  # one process: the slice is everything
        plain = advantages(corrected_scores(raw, Correction.NONE, rates), g, AdvantageNorm.NONE, baseline=0.0)
        assert not torch.allclose(adv, plain)  # without standardisation the correction acts
        ema_before = ema_after
    assert rates == NoiseRates(0.4, 0.3)


def test_ema_baseline_and_scale_match_hand_computation(tmp_path):
    trainer = _capture(tmp_path, "--correction", "backward", "--baseline", "ema", "--scale_mode", "ema",
                       "--ema_decay", "0.5", steps="3")
    g, base_ema, scale_ema = trainer.num_generations, None, None
    for raw, rates, adv, base_after, scale_after in trainer.captured:
        scores = corrected_scores(raw, Correction.BACKWARD, rates)
        std = scores.std().item()
        base = scores.mean().item() if base_ema is None else base_ema  # the previous steps' EMA; step 1: its own
        scale = (std if std > 0 else 1.0) if scale_ema is None else scale_ema
        torch.testing.assert_close(adv, advantages(scores, g, AdvantageNorm.NONE, baseline=base, scale=scale))
        base_ema = scores.mean().item() if base_ema is None else 0.5 * base_ema + 0.5 * scores.mean().item()
        if std > 0:
            scale_ema = std if scale_ema is None else 0.5 * scale_ema + 0.5 * std
        assert (base_after, scale_after) == pytest.approx((base_ema, scale_ema))
    assert scale_ema is not None and scale_ema != 1.0  # the EMA scale was really used


def test_leave_one_out_baseline_and_audit_match_hand_computation(tmp_path):
    """B.2: PGBC with the leave-one-out baseline; B.10: against the matched control (R~, leave-one-out, same scale),
    the advantages are the control's times 1/kappa: cosine 1, mean |difference| = (1/kappa - 1) mean |control|."""
    trainer = _capture(tmp_path, "--correction", "backward", "--baseline", "loo", "--advantage_scale", "2.0")
    raw, rates, adv, _, _ = trainer.captured[0]
    g, lengths = trainer.num_generations, trainer.lengths[0]
    scores = corrected_scores(raw, Correction.BACKWARD, rates)
    torch.testing.assert_close(adv, (scores - leave_one_out_baseline(scores, g)) / 2.0)
    control = advantages(raw, g, "none", baseline=leave_one_out_baseline(raw, g), scale=2.0)
    assert control.abs().sum() > 0  # some group has varying verdicts: a non-trivial check
    audit = advantage_audit(adv, control, lengths)
    assert audit["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert audit["mean_abs_diff"] == pytest.approx(
        (1 / rates.kappa - 1) * ((control.abs() * lengths).sum() / lengths.sum()).item(), rel=1e-5)
    log = next(h for h in trainer.state.log_history if "noisy/audit_cosine" in h)
    assert (log["noisy/audit_mean_abs_diff"], log["noisy/audit_max_abs_diff"], log["noisy/audit_cosine"]) == \
        pytest.approx((audit["mean_abs_diff"], audit["max_abs_diff"], audit["cosine"]), rel=1e-5)


@pytest.mark.parametrize("mode,expected_scale", [("kappa", 1 - 0.4 - 0.3), ("one_minus_rho1", 0.7), ("one", 1.0)])
def test_forward_scales_match_hand_computation(tmp_path, mode, expected_scale):
    """B.3: a = w / s_FC with b = 0; the audit's control is R~ / s_FC (same path, correction none)."""
    trainer = _capture(tmp_path, "--correction", "forward", "--baseline", "zero", "--scale_mode", mode)
    raw, rates, adv, _, _ = trainer.captured[0]
    torch.testing.assert_close(adv, (raw - (1 - 0.3)) / expected_scale)
    log = next(h for h in trainer.state.log_history if "noisy/scale" in h)
    assert log["noisy/scale"] == pytest.approx(expected_scale)
    assert log["noisy/audit_max_abs_diff"] == pytest.approx(0.7 / expected_scale, rel=1e-5)  # the constant shift


@pytest.mark.parametrize("recover", [False, True])
def test_appeals_estimate_only_or_recover(tmp_path, recover):
    """E.1 (default): the overturned verdicts only feed rho1^, the advantages stay those of R~; appeals_recover (Table
    4's caption): they count as 1. The paper's estimator with q = 1 and every negative overturned:
    rho1^ = (N + 1e-5) / (N + P + 2e-5)."""
    extra = ["--correction", "none", "--baseline", "zero", "--appeals_fraction", "1.0", "--appeals_estimator", "paper"]
    trainer, _ = recipe.build([*BASE, "--max_steps", "1", *extra, "--appeals_recover", str(recover).lower(),
                               "--output_dir", str(tmp_path)], AlwaysOverturn)
    trainer.train()
    raw, _, adv, _, _ = trainer.captured[0]
    negatives, positives = int((raw == 0).sum()), int(raw.sum())
    assert negatives > 0
    torch.testing.assert_close(adv, torch.ones_like(raw) if recover else raw)
    assert trainer.appeals.rho1 == pytest.approx((negatives + 1e-5) / (negatives + positives + 2e-5), rel=1e-12)
    log = next(h for h in trainer.state.log_history if "noisy/rho1_hat" in h)
    assert log["noisy/overturns"] == negatives
    if recover:  # the audit compares with the control on the raw verdicts: every negative moved by 1
        lengths = trainer.lengths[0]
        assert log["noisy/audit_max_abs_diff"] == 1.0
        assert log["noisy/audit_mean_abs_diff"] == pytest.approx(
            (lengths * (raw == 0)).sum().item() / lengths.sum().item(), rel=1e-5)
    else:
        assert "noisy/audit_cosine" not in log


def test_paper_defaults_of_the_config(tmp_path):
    make = lambda **kw: NoisyGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **kw)  # noqa: E731
    assert make(correction="backward").baseline == Baseline.LOO
    assert make(correction="forward").baseline == Baseline.ZERO
    assert make(correction="backward", baseline="ema").baseline == Baseline.EMA
    cfg = make()
    assert (cfg.appeals_estimator, cfg.appeals_recover, cfg.ema_decay) == ("paper", False, 0.9)


def test_heldout_curve_is_logged_and_saved(tmp_path):
    trainer = recipe.main([*BASE, "--max_steps", "2", "--heldout_eval_steps", "1", "--heldout_num_samples", "2",
                           "--arithmetic_test_size", "8", "--output_dir", str(tmp_path)])
    history = json.loads((tmp_path / "log_history.json").read_text())
    points = [(h["step"], h["heldout/pass@1"]) for h in history if "heldout/pass@1" in h]
    assert [s for s, _ in points] == [0, 1, 2]  # before training and after every step
    assert [h["step"] for h in history if "noisy/raw_reward" in h] == [1, 2]  # the regular logs are all still there
    assert all(0.0 <= v <= 1.0 for _, v in points)
    assert trainer.model.training  # the callback puts the model back in training mode


def test_group_standardisation_cancels_backward(tmp_path):
    trainer = _capture(tmp_path, "--correction", "backward", "--advantage_norm", "group")
    raw, rates, adv, _, _ = trainer.captured[0]
    g = trainer.num_generations
    assert (raw.view(-1, g).std(dim=1) > 0).any()  # a non-trivial check: some group has varying verdicts
    uncorrected = advantages(corrected_scores(raw, Correction.NONE, rates), g, AdvantageNorm.GROUP)
    torch.testing.assert_close(adv, uncorrected, atol=1e-3, rtol=1e-3)  # eps=1e-4 makes it approximate
    ungrouped_b = advantages(corrected_scores(raw, Correction.BACKWARD, rates), g, AdvantageNorm.NONE)
    ungrouped_n = advantages(corrected_scores(raw, Correction.NONE, rates), g, AdvantageNorm.NONE)
    assert not torch.allclose(ungrouped_b, ungrouped_n)


@pytest.mark.parametrize("key,value", [("correction", "sideways"), ("advantage_norm", "global"), ("baseline", "mean"),
                                       ("rho1", 1.2), ("rho0", -0.1), ("ema_decay", 1.0), ("appeals_fraction", 1.5),
                                       ("advantage_scale", 0.0), ("scale_mode", "std"),
                                       ("appeals_estimator", "median"), ("appeals_recover", True)])
def test_config_errors_name_the_key(tmp_path, key, value):
    with pytest.raises(ValueError, match=key):
        NoisyGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **{key: value})


def test_yaml_error_names_key_and_file(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("correction: sideways\n")
    with pytest.raises(ValueError, match="correction"):
        recipe.build(["--config", str(cfg), "--output_dir", str(tmp_path / "o")])


# ------------------------------------------------- scripts/compare_noisy_grpo.py: each correction vs its matched control
_cspec = importlib.util.spec_from_file_location("compare_noisy_grpo", ROOT / "scripts" / "compare_noisy_grpo.py")
compare = importlib.util.module_from_spec(_cspec)
_cspec.loader.exec_module(compare)


def test_every_shipped_correction_has_a_matched_control():
    """B.5: every correcting config of configs/grpo_noisy_math/ is paired with an uncorrected one through the same
    advantage path, and the pairs check out key by key."""
    from llmpost.config import load_yaml

    for prefix, pairs in (("tiny_", compare.MATCHED_CONTROL), ("math_", compare.MATH_MATCHED_CONTROL)):
        correcting = {p.stem[len(prefix):] for p in compare.CONFIGS.glob(f"{prefix}*.yaml")
                      if p.stem != "tiny_sft" and load_yaml(str(p)).get("correction", "none") != "none"}
        assert correcting == set(pairs), prefix
        assert compare.check_pairs(pairs, prefix) == pairs


def test_matched_control_mismatches_by_hand():
    corrected = {"correction": "backward", "baseline": "loo", "scale_mode": "fixed", "advantage_norm": "none",
                 "rho0": 0.1, "rho1": 0.2, "appeals_fraction": 0.1, "output_dir": "a", "seed": 1}
    control = {**corrected, "correction": "none", "output_dir": "b", "rho1": 0.0, "appeals_fraction": 0.0}
    assert compare.matched_control_mismatches(corrected, control) == []  # rates cannot reach the control's advantages
    assert compare.matched_control_mismatches(corrected, {**control, "baseline": "zero", "seed": 2}) == ["baseline",
                                                                                                         "seed"]
    rate_scaled = {**corrected, "scale_mode": "kappa"}  # s = 1 - rho0 - rho1: the rates and appeals now matter
    assert compare.matched_control_mismatches(rate_scaled, {**control, "scale_mode": "kappa"}) == [
        "appeals_fraction", "rho1"]
    assert compare.matched_control_mismatches(corrected, {k: v for k, v in control.items() if k != "seed"}) == ["seed"]
    with pytest.raises(ValueError, match="must correct"):
        compare.check_pairs({"uncorrected": "uncorrected"}, "tiny_")
    with pytest.raises(ValueError, match=r"not the matched control of tiny_backward_loo.yaml: \['baseline', 'scale_mode'\]"):
        compare.check_pairs({"backward_loo": "uncorrected"}, "tiny_")


def test_comparison_plan_adds_the_controls_and_dry_runs(capsys):
    assert compare.plan_modes(["backward_loo", "forward", "forward_appeals", "clean"]) == [
        "backward_loo", "uncorrected_loo", "forward", "uncorrected", "forward_appeals", "clean"]
    compare.main(["--dry_run", "--modes", "backward_loo", "--seeds", "0"])
    out = capsys.readouterr().out
    assert "runs: backward_loo (seeds [0]), uncorrected_loo (seeds [0])" in out
    assert "pair: tiny_backward_loo.yaml vs its matched control tiny_uncorrected_loo.yaml" in out
    compare.main(["--dry_run", "--grid", "--modes", "clean", "--seeds", "3", "4"])
    out = capsys.readouterr().out
    assert "backward_loo (seeds [3, 4]), uncorrected_loo (seeds [3, 4]), forward (seeds [3, 4])" in out
    assert "grid (seed 3): 11 more runs" in out  # PGBC: 3 x 3 less the injected cell; PGFC (s = 1): 2 + 1 check
    assert compare.uses_rho0("backward_loo") and not compare.uses_rho0("forward")
    cells = compare.grid_cells(["backward_loo"])
    assert len(cells) == 8 and ("backward_loo", 0.1, 0.2) not in cells and ("backward_loo", 0.0, 0.3) in cells
    assert compare.grid_cells(["forward"]) == [("forward", 0.0, 0.2), ("forward", 0.1, 0.1), ("forward", 0.1, 0.3)]
    assert compare.grid_dir(Path("o"), "backward_loo", 0.1, 0.2, 3) == Path("o/backward_loo_seed3")  # the main run
    assert compare.grid_dir(Path("o"), "backward_loo", 0.0, 0.3, 3) == Path("o/grid_backward_loo_rho0_0_rho1_0.3_seed3")
    assert compare.grid_dir(Path("o"), "forward", 0.2, 0.3, 3) == Path("o/grid_forward_rho0_0.1_rho1_0.3_seed3")
    assert compare.grid_dir(Path("o"), "forward", 0.0, 0.2, 3) == Path("o/grid_forward_rho0_0_rho1_0.2_seed3")
    diffs = compare.paired_differences([{"clean_reward_end": 0.5, "heldout_pass@1_end": 0.3}] * 2,
                                       [{"clean_reward_end": 0.4, "heldout_pass@1_end": 0.1},
                                        {"clean_reward_end": 0.2, "heldout_pass@1_end": 0.3}])
    assert diffs["clean_reward_end_minus_control"] == pytest.approx((0.2, 0.1))  # diffs 0.1, 0.3: mean 0.2, s.e. 0.1
    assert diffs["heldout_pass@1_end_minus_control"] == pytest.approx((0.1, 0.1))


def test_llm_appeal_verifier_from_the_recipe(tmp_path, monkeypatch):
    """appeal_verifier: llm builds TinyV's prompt on appeal_verifier_model (here the tiny model, for the plumbing only:
    its answers are not True/False) and shows it the training problem of each appealed gold answer."""
    from llmpost.rewards.llm_verifier import LLMVerifier

    extra = ["--correction", "forward", "--appeals_fraction", "0.5", "--appeal_verifier", "llm",
             "--appeal_verifier_model", str(TINY_MODEL), "--output_dir", str(tmp_path)]
    trainer, _ = recipe.build([*BASE, *extra])
    strong = trainer.appeals.strong
    answers = list(trainer.train_dataset["answer"])
    row = next(i for i, a in enumerate(answers) if answers.count(a) == 1)  # a gold answer of one problem only
    gold, prompt = answers[row], trainer.train_dataset[row]["prompt"]
    assert strong("The answer is \\boxed{" + gold + "}", gold) in (0, 1)  # the real model: a 0/1 verdict
    seen = []
    monkeypatch.setattr(LLMVerifier, "verify_batch", lambda self, q, g, c: seen.append((q, g, c)) or [1] * len(q))
    assert strong("x", gold) == 1
    (questions, golds, _), = seen
    assert golds == [gold] and questions[0] and questions[0] in prompt  # the question of that gold's problem


@pytest.mark.parametrize("flags,key", [(["--appeal_verifier", "llm"], "appeal_verifier_model"),
                                       (["--verifier", "llm"], "verifier")])
def test_llm_verifier_config_errors_name_the_key(tmp_path, flags, key):
    with pytest.raises(ValueError, match=key):
        recipe.build([*BASE, *flags, "--output_dir", str(tmp_path)])
