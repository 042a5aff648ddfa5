"""Noisy-verifier GRPO on the tiny arithmetic task: each correction against its matched uncorrected control, plus clean
rewards, at equal budget over several seeds; one table and one plot (issues 7 and 17).

    python scripts/compare_noisy_grpo.py                         # every mode x 3 seeds, CPU, about 2 h on 2 cores
    python scripts/compare_noisy_grpo.py --modes backward_loo --seeds 0 --jobs 1    # + its control uncorrected_loo
    python scripts/compare_noisy_grpo.py --dry_run               # the runs and the pairs, checked; trains nothing

1. Warm start (``configs/grpo_noisy_math/tiny_sft.yaml``): stories260K fine-tuned with cross-entropy on the 400
   training problems, so that GRPO starts with some correct samples (an untrained model gets no reward at all).
2. GRPO from it with ``configs/grpo_noisy_math/tiny_<mode>.yaml``: a rule-based verifier whose correct verdicts are
   flipped to 0 with probability 0.3 (injected false negatives, seeded), except ``clean``; each seed changes the
   training seed and the noise stream. Every correction runs with its matched control (arXiv 2510.00915, B.5:
   ``MATCHED_CONTROL``, the uncorrected run through the same advantage path), added when not asked for; the pair's
   configs must agree on every key that shapes the control's advantages (``matched_control_mismatches``).
3. From each run's ``log_history.json``: the clean correctness of the training rollouts (``noisy/clean_reward``, the
   oracle verdict of the same completions, never used for training), held-out pass@1 on the 64 test problems every
   50 steps (``heldout/pass@1``, 8 samples per problem), the appeals' rho1^ and the B.10 audit against the matched
   control (``noisy/audit_*``); from ``eval/MATH_SUMMARY.json`` the final held-out pass@1 and pass@16 (16 samples);
   for each correction, its difference from its control per seed (mean ± s.e. over seeds).

Writes into ``--out``: ``noisy_grpo.md``, ``noisy_grpo.json`` (every number, the machine and the wall times) and
``noisy_grpo.png``. A finished run is reused (``--rerun`` trains it again), so an interrupted comparison resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmpost.config import load_yaml  # noqa: E402
from llmpost.eval.stats import markdown_table, mean_stderr  # noqa: E402
from llmpost.pipeline import LOG_HISTORY_FILE  # noqa: E402
from llmpost.report import curve, mean_curve, plot_curves  # noqa: E402
from llmpost.runner import RecipeRunner  # noqa: E402
from llmpost.utils import atomic_write_json, atomic_write_text  # noqa: E402

CONFIGS = ROOT / "configs" / "grpo_noisy_math"
MODES = ["clean", "uncorrected", "backward", "forward", "forward_appeals", "uncorrected_loo", "backward_loo"]
# Each correction and the uncorrected run through its advantage path (arXiv 2510.00915, B.5), tiny_<mode>.yaml
MATCHED_CONTROL = {"backward": "uncorrected", "forward": "uncorrected", "forward_appeals": "uncorrected",
                   "backward_loo": "uncorrected_loo"}
# The same pairs of the GPU configs, math_<mode>.yaml (not run by this script; tested like the tiny ones)
MATH_MATCHED_CONTROL = {"forward": "uncorrected", "backward": "uncorrected_loo",
                        "forward_appeals": "uncorrected_appeals", "rule_based_appeals": "rule_based_uncorrected",
                        "rule_based_tinyv_appeals": "rule_based_tinyv_uncorrected", "vllm_server": "uncorrected_appeals"}
INJECTED_RHO1 = 0.3  # configs/grpo_noisy_math_tiny.yaml
TAIL = 50  # steps over which the end-of-training rollout rewards are averaged
ALWAYS_DIFFERENT = {"correction", "output_dir"}  # what a corrected run and its control differ in by definition
RATE_KEYS = {"rho0", "rho1", "appeals_fraction", "appeals_estimator", "appeals_seed", "appeal_verifier",
             "appeals_recover"}  # shape the control's advantages only through a rate-derived scale
SERVER_KEYS = {"vllm_mode", "vllm_server_host", "vllm_server_port"}  # where generation runs, not what it computes


def matched_control_mismatches(corrected: dict, control: dict) -> list[str]:
    """The keys on which a control config (resolved, ``load_yaml``) fails to match a corrected one (B.5): every key
    but ``correction`` and ``output_dir`` must agree, except the rates and appeals settings when the corrected run's
    scale does not depend on the rates (``scale_mode`` fixed/ema/one, or a standardising ``advantage_norm``) and it
    does not recover appeals -- then they cannot change the control's advantages (its scores are R~)."""
    rate_scaled = (corrected.get("advantage_norm", "none") == "none"
                   and corrected.get("scale_mode", "fixed") in ("kappa", "one_minus_rho1"))
    ignored = ALWAYS_DIFFERENT | SERVER_KEYS | (set() if rate_scaled or corrected.get("appeals_recover") else RATE_KEYS)
    missing = object()
    return sorted(k for k in (set(corrected) | set(control)) - ignored if corrected.get(k, missing) != control.get(k, missing))


def check_pairs(pairs: dict[str, str], prefix: str) -> dict[str, str]:
    """Load each pair's configs (``configs/grpo_noisy_math/<prefix><mode>.yaml``) and check it: the control runs
    ``correction: none``, the corrected run does not, and they match (``matched_control_mismatches``). Returns the
    pairs; ValueError naming the files and keys otherwise."""
    for mode, control in pairs.items():
        corrected_cfg, control_cfg = (load_yaml(str(CONFIGS / f"{prefix}{m}.yaml")) for m in (mode, control))
        if control_cfg.get("correction") != "none" or corrected_cfg.get("correction", "none") == "none":
            raise ValueError(f"{prefix}{mode}.yaml must correct and {prefix}{control}.yaml must not")
        bad = matched_control_mismatches(corrected_cfg, control_cfg)
        if bad:
            raise ValueError(f"{prefix}{control}.yaml is not the matched control of {prefix}{mode}.yaml: {bad} differ")
    return pairs


def plan_modes(modes: list[str]) -> list[str]:
    """The modes to run: those asked for, each followed by its matched control (once, in order)."""
    out: list[str] = []
    for mode in modes:
        for m in (mode, MATCHED_CONTROL.get(mode)):
            if m is not None and m not in out:
                out.append(m)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/noisy_grpo", help="output directory (runs, table, plot)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=2, help="GRPO runs at a time (one thread each)")
    p.add_argument("--warm_start", default=None, help="use this model as the warm start instead of training one")
    p.add_argument("--rerun", action="store_true", help="train and evaluate again even where results exist")
    p.add_argument("--dry_run", action="store_true", help="print the runs and the matched pairs (checked), train nothing")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every GRPO run")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    return args


def _mean_err(values: list[float | None]) -> tuple[float | None, float | None]:
    """``mean_stderr`` of the values that are not None (a metric some modes lack), else ``(None, None)``."""
    values = [v for v in values if v is not None]
    return mean_stderr(values) if values else (None, None)


def run_metrics(run_dir: Path) -> dict:
    """The numbers of one GRPO run."""
    history = json.loads((run_dir / LOG_HISTORY_FILE).read_text())
    summary = json.loads((run_dir / "eval" / "MATH_SUMMARY.json").read_text())
    steps, clean = curve(history, "noisy/clean_reward")
    if not steps:  # the clean run has no oracle: its verdicts are clean
        steps, clean = curve(history, "noisy/raw_reward")
    last = steps[-1]
    tail = [v for s, v in zip(steps, clean) if s > last - TAIL]
    h_steps, heldout = curve(history, "heldout/pass@1")
    r_steps, rho1_hat = curve(history, "noisy/rho1_hat")
    settled = [v for st, v in zip(r_steps, rho1_hat) if st > 100]  # after the moving averages fill
    _, raw = curve(history, "noisy/raw_reward")
    audit = {k: curve(history, f"noisy/audit_{k}")[1] for k in ("mean_abs_diff", "cosine")}
    return {
        "clean_reward_start": clean[0], "clean_reward_end": sum(tail) / len(tail),
        "verifier_reward_end": sum(raw[-len(tail):]) / len(tail),
        "heldout_pass@1_start": heldout[0] if h_steps and h_steps[0] == 0 else None,
        "heldout_pass@1_end": summary["pass@k"]["1"]["mean"], "heldout_pass@16_end": summary["pass@k"]["16"]["mean"],
        "rho1_hat_end": rho1_hat[-1] if rho1_hat else None,
        "rho1_hat_mean_after_100": sum(settled) / len(settled) if settled else None,
        "audit_mean_abs_diff": sum(audit["mean_abs_diff"]) / len(audit["mean_abs_diff"]) if audit["mean_abs_diff"] else None,
        "audit_cosine": sum(audit["cosine"]) / len(audit["cosine"]) if audit["cosine"] else None, "steps": last,
    }  # fmt: skip


def paired_differences(corrected: list[dict], control: list[dict], keys=("clean_reward_end", "heldout_pass@1_end")) -> dict:
    """Per seed, corrected minus control (the same seed: the same warm start, noise stream and sampling seed), as
    ``{key + "_minus_control": (mean, stderr)}`` over seeds."""
    return {f"{k}_minus_control": mean_stderr([a[k] - b[k] for a, b in zip(corrected, control, strict=True)])
            for k in keys}


def main(argv=None) -> None:
    args = parse_args(argv)
    modes = plan_modes(args.modes)
    pairs = check_pairs({m: MATCHED_CONTROL[m] for m in modes if m in MATCHED_CONTROL}, "tiny_")
    if args.dry_run:
        print("runs:", ", ".join(f"{m} (seeds {args.seeds})" for m in modes))
        for mode, control in pairs.items():
            print(f"pair: tiny_{mode}.yaml vs its matched control tiny_{control}.yaml")
        return
    out = Path(args.out)
    runner = RecipeRunner(ROOT, args.rerun)
    sft = Path(args.warm_start) if args.warm_start else out / "sft"
    if not args.warm_start:
        runner.run("sft", sft / "eval" / "MATH_SUMMARY.json",
                   ["recipes/dco_math.py", "--config", "configs/grpo_noisy_math/tiny_sft.yaml", "--overwrite_output_dir",
                    "true", "--output_dir", str(sft)])  # fmt: skip
    os.environ["OMP_NUM_THREADS"] = "1"  # --jobs processes share the cores

    def grpo(job):
        mode, seed = job
        run_dir = out / f"{mode}_seed{seed}"
        runner.run(f"{mode}/seed{seed}", run_dir / "eval" / "MATH_SUMMARY.json",
                   ["recipes/grpo_noisy_math.py", "--config", f"configs/grpo_noisy_math/tiny_{mode}.yaml",
                    "--model_name_or_path", str(sft), "--output_dir", str(run_dir), "--overwrite_output_dir", "true",
                    "--seed", str(seed), "--noise_seed", str(seed), "--appeals_seed", str(seed), "--disable_tqdm",
                    "true", *args.extra])  # fmt: skip

    jobs = [(mode, seed) for mode in modes for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(grpo, jobs))

    rows, per_run, panels = {}, {}, {"clean": {}, "heldout": {}, "rho1": {}}
    for mode in modes:
        dirs = [out / f"{mode}_seed{seed}" for seed in args.seeds]
        per_run[mode] = [run_metrics(d) for d in dirs]
    for mode in modes:
        metrics = per_run[mode]
        row = {"matched_control": pairs.get(mode, "-")}
        for key in metrics[0]:
            m, e = _mean_err([x[key] for x in metrics])
            row[key] = m if key == "steps" or m is None else f"{m:.3f} ± {e:.3f}"
        if mode in pairs:
            for key, (m, e) in paired_differences(metrics, per_run[pairs[mode]]).items():
                row[key] = f"{m:+.3f} ± {e:.3f}"
        rows[mode] = row
        histories = [json.loads((d / LOG_HISTORY_FILE).read_text()) for d in dirs]
        key = "noisy/raw_reward" if mode == "clean" else "noisy/clean_reward"
        panels["clean"][mode] = mean_curve([curve(h, key) for h in histories])
        panels["heldout"][mode] = mean_curve([curve(h, "heldout/pass@1") for h in histories])
        if mode == "forward_appeals":
            panels["rho1"][mode] = mean_curve([curve(h, "noisy/rho1_hat") for h in histories])
    figure = [
        {"title": "training rollouts: clean correctness", "ylabel": "fraction correct (oracle)", "series": panels["clean"]},
        {"title": "held-out pass@1 (64 problems x 8 samples)", "ylabel": "pass@1", "series": panels["heldout"]},
    ]  # fmt: skip
    if panels["rho1"]:
        figure.append({"title": "appeals: online estimate of rho1", "ylabel": "rho1^ (EMA)", "series": panels["rho1"],
                       "hline": (INJECTED_RHO1, f"injected rho1 = {INJECTED_RHO1}")})  # fmt: skip
    plot_curves(figure, out / "noisy_grpo.png",
                title=f"GRPO with a noisy verifier (injected rho1 = {INJECTED_RHO1}), stories260K, "
                      f"mean ± s.e. over {len(args.seeds)} seeds")  # fmt: skip
    keys = ["matched_control", "clean_reward_start", "clean_reward_end", "clean_reward_end_minus_control",
            "verifier_reward_end", "heldout_pass@1_start", "heldout_pass@1_end", "heldout_pass@1_end_minus_control",
            "heldout_pass@16_end", "rho1_hat_end", "rho1_hat_mean_after_100", "audit_mean_abs_diff", "audit_cosine",
            "steps"]
    table = markdown_table(rows, keys, first_column="mode")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    atomic_write_json(out / "noisy_grpo.json", {"machine": machine, "seeds": args.seeds, "pairs": pairs,
                                                "runs": per_run, "table": rows, "wall_time_s": runner.timings})  # fmt: skip
    atomic_write_text(out / "noisy_grpo.md", table + "\n")
    print(table)
    print(f"[compare] wrote {out / 'noisy_grpo.md'}, {out / 'noisy_grpo.json'} and {out / 'noisy_grpo.png'}")


if __name__ == "__main__":
    main()
