"""The sweep behind the quickstart's unlearning setting: methods x learning rates on tiny TOFU forget01.

    bash scripts/quickstart.sh                  # the target and retain model (runs/quickstart)
    python scripts/sweep_quickstart.py --jobs 2  # npo_rt simnpo grad_diff npo x lr 1e-4 5e-4, 8 epochs, eval every 10 steps
    python scripts/sweep_quickstart.py --methods simnpo --lrs 1e-3
    python scripts/sweep_quickstart.py ... --table_only --rule pareto     # tabulate the finished runs under another rule

Every run unlearns forget01 from the same target (``configs/finetune_tofu_tiny_forget01.yaml``) with
``configs/npo_tofu_tiny_forget01.yaml`` and ``--method M --learning_rate LR --num_train_epochs E``, and evaluates TOFU
during training every ``--eval_steps`` steps (``--select max_forget_quality``, so each checkpoint's evaluation is kept
in ``SELECTION.json``). To spare one evaluation per run, the runs do not evaluate the target at step 0 themselves: the
target's own evaluation (``--target``/eval: the same model, the same code) is put in front of each run's evaluations,
and ``--rule`` is applied to that list with :func:`llmpost.eval.selection.select`, giving the checkpoint the run would
report with ``--select RULE --eval_on_start true``: ``max_forget_quality`` (the quickstart's rule) or ``pareto`` (the
highest forget quality among checkpoints whose model utility is >= 0.9 x the target's). The table also says whether
that checkpoint meets the quickstart's targets (forget quality >= 0.1, retain_Q_A_Prob >= 0.9 x the target's).

Writes ``--out``/sweep_RULE.md (the table) and sweep_RULE.json (the evaluations of every run along the way). A run
whose ``SELECTION.json`` is final is reused, so an interrupted sweep continues where it stopped. ``--jobs`` runs that many recipes at a time
(each with ``OMP_NUM_THREADS=--threads``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmpost.eval.selection import Evaluation, select  # noqa: E402

KEYS = ("forget_quality", "model_utility", "forget_Q_A_Prob", "retain_Q_A_Prob")
FQ_TARGET, RETAIN_FRACTION, UTILITY_FRACTION = 0.1, 0.9, 0.9


def run_name(method: str, lr: str, epochs: int) -> str:
    return f"{method}_lr{lr}_ep{epochs}"


def run_one(a, method: str, lr: str, epochs: int) -> dict:
    out = Path(a.out) / run_name(method, lr, epochs)
    record = out / "SELECTION.json"
    if record.is_file() and json.loads(record.read_text()).get("status") == "final" and not a.rerun:
        return {"reused": True}
    cmd = [sys.executable, str(ROOT / "recipes/npo_tofu.py"), "--config", a.config, "--method", method,
           "--learning_rate", lr, "--num_train_epochs", str(epochs), "--model_name_or_path", a.target,
           "--retain_logs_path", a.retain_logs, "--output_dir", str(out), "--overwrite_output_dir", "true",
           "--eval_strategy", "steps", "--eval_steps", str(a.eval_steps), "--eval_on_start", "false",
           "--select", "max_forget_quality", "--disable_tqdm", "true", *a.extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(out.with_suffix(".log"), "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"{out.name} failed (rc {rc}); see {out.with_suffix('.log')}")
    (out / "WALL_TIME").write_text(f"{time.time() - start:.1f}\n")
    return {"reused": False}


def summarise(a, method: str, lr: str, epochs: int, target: dict) -> dict:
    out = Path(a.out) / run_name(method, lr, epochs)
    record = json.loads((out / "SELECTION.json").read_text())
    evals = [Evaluation(step=0, checkpoint=a.target, summary=target)]
    evals += [Evaluation.from_dict(e) for e in record["evaluations"] if int(e["step"]) > 0]
    sel = select(a.rule, evals, utility_fraction=UTILITY_FRACTION)
    chosen = evals[sel.index].summary
    meets = (chosen.get("forget_quality", 0) >= FQ_TARGET
             and chosen["retain_Q_A_Prob"] >= RETAIN_FRACTION * target["retain_Q_A_Prob"])  # fmt: skip
    wall = out / "WALL_TIME"
    return {"method": method, "lr": lr, "epochs": epochs, "step": evals[sel.index].step, "reason": sel.reason,
            "meets_targets": meets, **{k: chosen.get(k) for k in KEYS},
            "retain_vs_target": chosen["retain_Q_A_Prob"] / target["retain_Q_A_Prob"], "eval_every": evals[1].step,
            "wall_s": float(wall.read_text()) if wall.is_file() else None,
            "curve": [{"step": e.step, **{k: e.summary.get(k) for k in KEYS}} for e in evals]}  # fmt: skip


def table(rows: list[dict], target: dict) -> str:
    lines = ["| method | lr | epochs | eval every | selected step | forget_quality | model_utility | forget_Q_A_Prob | "
             "retain_Q_A_Prob (x target) | meets targets |", "|---|---|---|---|---|---|---|---|---|---|",
             f"| target | | | | | {target['forget_quality']:.3g} | {target['model_utility']:.3g} | "
             f"{target['forget_Q_A_Prob']:.3g} | {target['retain_Q_A_Prob']:.3g} (1.00) | |"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['method']} | {r['lr']} | {r['epochs']} | {r['eval_every']} | {r['step']} | {r['forget_quality']:.3g} | "
                     f"{r['model_utility']:.3g} | {r['forget_Q_A_Prob']:.3g} | {r['retain_Q_A_Prob']:.3g} "
                     f"({r['retain_vs_target']:.2f}) | {'yes' if r['meets_targets'] else 'no'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--target",
        default="runs/quickstart/target",
        help="The target model directory; its eval/ holds its TOFU evaluation (the quickstart's by default).",
    )
    p.add_argument(
        "--retain_logs",
        default="runs/quickstart/retain/eval/TOFU_EVAL.json",
        help="The retain model's TOFU_EVAL.json on forget01.",
    )
    p.add_argument("--out", default="runs/sweep_quickstart")
    p.add_argument("--config", default="configs/npo_tofu_tiny_forget01.yaml")
    p.add_argument("--methods", nargs="+", default=["npo_rt", "simnpo", "grad_diff", "npo"])
    p.add_argument("--lrs", nargs="+", default=["1e-4", "5e-4"])
    p.add_argument("--epochs", nargs="+", type=int, default=[8])
    p.add_argument("--eval_steps", type=int, default=10)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--rule",
        default="max_forget_quality",
        choices=["max_forget_quality", "pareto"],
        help="The rule that picks each run's checkpoint in the table (the quickstart's: max_forget_quality).",
    )
    p.add_argument("--rerun", action="store_true")
    p.add_argument(
        "--table_only",
        action="store_true",
        help="Run nothing: tabulate every finished run in --out (e.g. after sweeps with other grids).",
    )
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="More recipe flags, passed through.")
    a = p.parse_args(argv)
    a.target, a.retain_logs = str(Path(a.target).resolve()), str(Path(a.retain_logs).resolve())
    from llmpost.benchmarks.tofu.evaluate import load_retain_logs
    from llmpost.benchmarks.tofu.report import load_run

    target = load_run(Path(a.target) / "eval", load_retain_logs(a.retain_logs))
    grid = [(m, lr, e) for e in a.epochs for m in a.methods for lr in a.lrs]
    if a.table_only:
        found = [re.fullmatch(r"(.+)_lr(.+)_ep(\d+)", d.name) for d in sorted(Path(a.out).iterdir())
                 if (d / "SELECTION.json").is_file()]  # fmt: skip
        grid = [
            (m.group(1), m.group(2), int(m.group(3)))
            for m in found
            if m and json.loads((Path(a.out) / m.group(0) / "SELECTION.json").read_text()).get("status") == "final"
        ]
        order = {m: i for i, m in enumerate(a.methods)}
        grid.sort(key=lambda g: (order.get(g[0], len(order)), g[0], float(g[1]), g[2]))
    start = time.time()
    with ThreadPoolExecutor(a.jobs) as pool:
        futures = [] if a.table_only else [pool.submit(run_one, a, m, lr, e) for m, lr, e in grid]
        for (m, lr, e), fut in zip(grid, futures):
            fut.result()
            print(f"done: {run_name(m, lr, e)}", flush=True)
    rows = [summarise(a, m, lr, e, target) for m, lr, e in grid]
    md = table(rows, target)
    head = (f"`python scripts/sweep_quickstart.py {' '.join(argv if argv is not None else sys.argv[1:])}`, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, {os.cpu_count()} CPUs; "
            f"{time.time() - start:.0f} s wall for the runs not reused.\n\n")  # fmt: skip
    Path(a.out, f"sweep_{a.rule}.md").write_text(head + md)
    Path(a.out, f"sweep_{a.rule}.json").write_text(json.dumps({"target": target, "runs": rows}, indent=1))
    print(head + md)


if __name__ == "__main__":
    main()
