"""Noisy-verifier GRPO on the tiny arithmetic task (arXiv 2510.00915, Sec. 4.4 at CPU scale): each correction against
its matched uncorrected control and the clean oracle, at equal budget over several seeds; then the misspecification grid
of the rates the corrections assume. Tables and plots (issues 7 and 17).

    python scripts/compare_noisy_grpo.py --grid                  # 6 modes x 3 seeds + the grid, CPU, ~2 h on 2 cores
    python scripts/compare_noisy_grpo.py --modes backward_loo --seeds 0 --jobs 1    # + its control uncorrected_loo
    python scripts/compare_noisy_grpo.py --dry_run --grid        # the runs and the pairs, checked; trains nothing

1. Warm start (``configs/grpo_noisy_math/tiny_sft.yaml``): stories260K fine-tuned with cross-entropy on the 400
   training problems, so that GRPO starts with some correct samples (an untrained model gets no reward at all).
2. GRPO from it with ``configs/grpo_noisy_math/tiny_<mode>.yaml``: a rule-based verifier seen through injected noise at
   the paper's rates (rho0 = 0.1: a wrong answer is rewarded; rho1 = 0.2: a right one is not; Sec. 4.2, seeded), except
   ``clean``; each seed changes the training seed and the noise stream. Every correction runs with its matched control
   (B.5: ``MATCHED_CONTROL``, the uncorrected run through the same advantage path), added when not asked for; the
   pair's configs must agree on every key that shapes the control's advantages (``matched_control_mismatches``).
3. ``--grid``: the corrections in ``--grid_modes`` (PGBC with the leave-one-out baseline, PGFC) at the first seed with
   every assumed rho0^ in ``GRID_RHO0`` and rho1^ in ``GRID_RHO1`` (Sec. 4.4), the injected rates unchanged; the cell
   of the injected rates is the main run of that seed. Each cell is compared with the mode's matched control.
4. From each run's ``log_history.json``: the clean correctness of the training rollouts (``noisy/clean_reward``, the
   oracle verdict of the same completions, never used for training), held-out pass@1 on the 64 test problems every
   50 steps (``heldout/pass@1``, 8 samples per problem), the appeals' rho1^ and the B.10 audit against the matched
   control (``noisy/audit_*``); from ``eval/MATH_SUMMARY.json`` the final held-out pass@1 and pass@16 (16 samples);
   for each correction, its difference from its control per seed (mean ± s.e. over seeds).

Writes into ``--out``: ``noisy_grpo.md``, ``noisy_grpo.json`` (every number, the machine and the wall times),
``noisy_grpo.png``, and with ``--grid`` ``noisy_grpo_grid.md`` and ``noisy_grpo_grid.png``. A finished run is reused
(``--rerun`` trains it again), so an interrupted comparison resumes.
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
DEFAULT_MODES = ["clean", "uncorrected", "uncorrected_loo", "backward_loo", "forward", "forward_appeals"]  # Sec. 4.4
# Each correction and the uncorrected run through its advantage path (arXiv 2510.00915, B.5), tiny_<mode>.yaml
MATCHED_CONTROL = {"backward": "uncorrected", "forward": "uncorrected", "forward_appeals": "uncorrected",
                   "backward_loo": "uncorrected_loo"}
# The same pairs of the GPU configs, math_<mode>.yaml (not run by this script; tested like the tiny ones)
MATH_MATCHED_CONTROL = {"forward": "uncorrected", "backward": "uncorrected_loo",
                        "forward_appeals": "uncorrected_appeals", "rule_based_appeals": "rule_based_uncorrected",
                        "rule_based_tinyv_appeals": "rule_based_tinyv_uncorrected", "vllm_server": "uncorrected_appeals"}
INJECTED_RHO0, INJECTED_RHO1 = 0.1, 0.2  # configs/grpo_noisy_math_tiny.yaml (Sec. 4.2)
GRID_RHO0, GRID_RHO1 = (0.0, 0.1, 0.2), (0.1, 0.2, 0.3)  # the assumed rates of the misspecification grid (Sec. 4.4)
GRID_MODES = ["backward_loo", "forward"]
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
    p.add_argument("--modes", nargs="+", choices=MODES, default=DEFAULT_MODES)
    p.add_argument("--grid", action="store_true", help="also run the misspecification grid (at the first seed)")
    p.add_argument("--grid_modes", nargs="+", choices=sorted(MATCHED_CONTROL), default=GRID_MODES)
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


def uses_rho0(mode: str) -> bool:
    """Whether rho0^ reaches a mode's advantages: PGBC's scores (R~ - rho0) / kappa do; PGFC's R~ - (1 - rho1) does
    only through a kappa scale (``scale_mode: kappa``). With s = 1 (the tiny configs) a PGFC run ignores rho0^."""
    cfg = load_yaml(str(CONFIGS / f"tiny_{mode}.yaml"))
    return cfg.get("correction") == "backward" or cfg.get("scale_mode") == "kappa"


def grid_cells(grid_modes: list[str]) -> list[tuple[str, float, float]]:
    """The misspecification grid's runs: each mode at every assumed (rho0^, rho1^) but the injected rates (whose cell
    is the mode's main run). A mode that ignores rho0^ (:func:`uses_rho0`) runs the injected rho0^ row, and one cell
    of another row as a check that it trains identically; its other cells are that row's runs (:func:`grid_dir`)."""
    cells = []
    for m in grid_modes:
        for r0 in GRID_RHO0:
            for r1 in GRID_RHO1:
                if (r0, r1) == (INJECTED_RHO0, INJECTED_RHO1):
                    continue
                if uses_rho0(m) or r0 == INJECTED_RHO0 or (r0, r1) == (GRID_RHO0[0], INJECTED_RHO1):
                    cells.append((m, r0, r1))
    return cells


def grid_dir(out: Path, mode: str, rho0: float, rho1: float, seed: int) -> Path:
    """A grid cell's run directory; the injected rates' cell is the main run of that mode and seed, and a cell of a
    mode that ignores rho0^ is the run of its injected rho0^ row (but the check cell)."""
    if not uses_rho0(mode) and (rho0, rho1) != (GRID_RHO0[0], INJECTED_RHO1):
        rho0 = INJECTED_RHO0
    if (rho0, rho1) == (INJECTED_RHO0, INJECTED_RHO1):
        return out / f"{mode}_seed{seed}"
    return out / f"grid_{mode}_rho0_{rho0:g}_rho1_{rho1:g}_seed{seed}"


def grid_tables(out: Path, grid_modes: list[str], seed: int, per_run: dict, seeds: list[int]) -> tuple[str, dict]:
    """Markdown tables of the grid (one per mode and metric: rows rho0^, columns rho1^, each cell minus the mode's
    matched control at the same seed) and the numbers behind them."""
    lines, numbers = [], {}
    for mode in grid_modes:
        control = per_run[MATCHED_CONTROL[mode]][seeds.index(seed)]
        numbers[mode] = {"control": control, "cells": {}}
        for key in ("clean_reward_end", "heldout_pass@1_end"):
            lines += [f"**{mode}, {key}** (seed {seed}; its matched control {MATCHED_CONTROL[mode]}: "
                      f"{control[key]:.3f}; the difference from it in brackets; injected rho0 = {INJECTED_RHO0}, "
                      f"rho1 = {INJECTED_RHO1})", "",
                      "| rho0^ \\ rho1^ | " + " | ".join(f"{r1:g}" for r1 in GRID_RHO1) + " |",
                      "|---|" + "---|" * len(GRID_RHO1)]  # fmt: skip
            for r0 in GRID_RHO0:
                cells = []
                for r1 in GRID_RHO1:
                    m = run_metrics(grid_dir(out, mode, r0, r1, seed))
                    numbers[mode]["cells"][f"{r0:g},{r1:g}"] = m
                    cells.append(f"{m[key]:.3f} ({m[key] - control[key]:+.3f})")
                lines.append(f"| {r0:g} | " + " | ".join(cells) + " |")
            lines.append("")
        if not uses_rho0(mode):
            check = run_metrics(grid_dir(out, mode, GRID_RHO0[0], INJECTED_RHO1, seed))
            main_run = run_metrics(grid_dir(out, mode, INJECTED_RHO0, INJECTED_RHO1, seed))
            same = all(check[k] == main_run[k] for k in ("clean_reward_end", "heldout_pass@1_end", "heldout_pass@16_end"))
            numbers[mode]["rho0_check_identical"] = same
            lines += [f"{mode} ignores rho0^ (s = 1): its rows are one run per rho1^, repeated; the check run at "
                      f"rho0^ = {GRID_RHO0[0]:g}, rho1^ = {INJECTED_RHO1:g} trained "
                      f"{'identically (the same numbers)' if same else 'DIFFERENTLY (see noisy_grpo.json)'}.", ""]  # fmt: skip
    return "\n".join(lines), numbers


def plot_grid(numbers: dict, path: Path) -> None:
    """One heatmap per grid mode and metric: the cell minus the matched control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("clean_reward_end", "heldout_pass@1_end")
    fig, axes = plt.subplots(len(numbers), len(keys), figsize=(5 * len(keys), 4 * len(numbers)), squeeze=False)
    for row, (mode, data) in enumerate(numbers.items()):
        for col, key in enumerate(keys):
            grid = [[data["cells"][f"{r0:g},{r1:g}"][key] - data["control"][key] for r1 in GRID_RHO1] for r0 in GRID_RHO0]
            ax = axes[row][col]
            bound = max(0.01, max(abs(v) for line in grid for v in line))
            image = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound)
            for i, line in enumerate(grid):
                for j, v in enumerate(line):
                    ax.text(j, i, f"{v:+.3f}", ha="center", va="center", fontsize=9)
            ax.set_xticks(range(len(GRID_RHO1)), [f"{r:g}" for r in GRID_RHO1])
            ax.set_yticks(range(len(GRID_RHO0)), [f"{r:g}" for r in GRID_RHO0])
            ax.set_xlabel("assumed rho1^")
            ax.set_ylabel("assumed rho0^")
            ax.set_title(f"{mode}: {key} minus control", fontsize=10)
            fig.colorbar(image, ax=ax)
    fig.suptitle(f"Misspecified rates (injected rho0 = {INJECTED_RHO0}, rho1 = {INJECTED_RHO1}), one seed")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> None:
    args = parse_args(argv)
    modes = plan_modes(args.modes + (args.grid_modes if args.grid else []))
    pairs = check_pairs({m: MATCHED_CONTROL[m] for m in modes if m in MATCHED_CONTROL}, "tiny_")
    cells = grid_cells(args.grid_modes) if args.grid else []
    if args.dry_run:
        print("runs:", ", ".join(f"{m} (seeds {args.seeds})" for m in modes))
        for mode, control in pairs.items():
            print(f"pair: tiny_{mode}.yaml vs its matched control tiny_{control}.yaml")
        if cells:
            print(f"grid (seed {args.seeds[0]}): {len(cells)} more runs, " + ", ".join(
                f"{m} rho0^={r0:g} rho1^={r1:g}" for m, r0, r1 in cells))
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
        mode, seed, run_dir, flags = job
        runner.run(f"{run_dir.name}", run_dir / "eval" / "MATH_SUMMARY.json",
                   ["recipes/grpo_noisy_math.py", "--config", f"configs/grpo_noisy_math/tiny_{mode}.yaml",
                    "--model_name_or_path", str(sft), "--output_dir", str(run_dir), "--overwrite_output_dir", "true",
                    "--seed", str(seed), "--noise_seed", str(seed), "--appeals_seed", str(seed), "--disable_tqdm",
                    "true", *flags, *args.extra])  # fmt: skip

    jobs = [(mode, seed, out / f"{mode}_seed{seed}", []) for mode in modes for seed in args.seeds]
    jobs += [(mode, args.seeds[0], grid_dir(out, mode, r0, r1, args.seeds[0]), ["--rho0", str(r0), "--rho1", str(r1)])
             for mode, r0, r1 in cells]
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
        histories = [json.loads((out / f"{mode}_seed{seed}" / LOG_HISTORY_FILE).read_text()) for seed in args.seeds]
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
                title=f"GRPO with a noisy verifier (injected rho0 = {INJECTED_RHO0}, rho1 = {INJECTED_RHO1}), stories260K, "
                      f"mean ± s.e. over {len(args.seeds)} seeds")  # fmt: skip
    keys = ["matched_control", "clean_reward_start", "clean_reward_end", "clean_reward_end_minus_control",
            "verifier_reward_end", "heldout_pass@1_start", "heldout_pass@1_end", "heldout_pass@1_end_minus_control",
            "heldout_pass@16_end", "rho1_hat_end", "rho1_hat_mean_after_100", "audit_mean_abs_diff", "audit_cosine",
            "steps"]
    table = markdown_table(rows, keys, first_column="mode")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    grid = None
    if cells:
        grid_md, grid = grid_tables(out, args.grid_modes, args.seeds[0], per_run, args.seeds)
        atomic_write_text(out / "noisy_grpo_grid.md", grid_md)
        plot_grid(grid, out / "noisy_grpo_grid.png")
        print(grid_md)
    atomic_write_json(out / "noisy_grpo.json", {"machine": machine, "seeds": args.seeds, "pairs": pairs, "runs": per_run,
                                                "table": rows, "grid": grid, "wall_time_s": runner.timings})  # fmt: skip
    atomic_write_text(out / "noisy_grpo.md", table + "\n")
    print(table)
    print(f"[compare] wrote {out / 'noisy_grpo.md'}, {out / 'noisy_grpo.json'} and {out / 'noisy_grpo.png'}")


if __name__ == "__main__":
    main()
