"""Loss-reweighted pretraining on CPU: uniform, LinUpper, Quadratic and Extremes at equal steps and tokens, over
several seeds; one table and one plot of validation loss against step (issue 9).

    python scripts/compare_reweight.py                                  # 4 strategies x 2 seeds, about 25 min on 2 cores
    python scripts/compare_reweight.py --strategies uniform linupper --seeds 0 --extra --max_steps 200

Every run is ``recipes/reweight_pretrain.py --config configs/reweight_pretrain_tiny.yaml`` (the stories260K
architecture from a random init, the deduplicated English text of ``../shared/data``, 2% of the documents held out)
with ``--reweight_strategy S --seed K``: the same initialisation and data order for every strategy at a given seed
(the seed sets both), so the strategies differ only in the weights. Validation loss is the token-mean loss on the
same 256 held-out rows every ``eval_steps``; the final one is ``eval/PRETRAIN_EVAL.json`` of the saved model.

Writes into ``--out``: ``reweight.md``, ``reweight.json`` (every number, the machine and the wall times) and
``reweight.png``. A finished run is reused (``--rerun`` trains it again), so an interrupted comparison resumes.
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

from llmpost.eval.lm_loss import PRETRAIN_EVAL_FILE  # noqa: E402
from llmpost.eval.stats import markdown_table, mean_stderr  # noqa: E402
from llmpost.losses.reweight import ReweightStrategy  # noqa: E402
from llmpost.pipeline import LOG_HISTORY_FILE  # noqa: E402
from llmpost.report import curve, mean_curve, plot_curves  # noqa: E402
from llmpost.runner import RecipeRunner  # noqa: E402
from llmpost.utils import atomic_write_json, atomic_write_text  # noqa: E402

STRATEGIES = [s.value for s in ReweightStrategy][::-1]  # uniform first
CONFIG = "configs/reweight_pretrain_tiny.yaml"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/reweight", help="output directory (runs, table, plot)")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=STRATEGIES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--rerun", action="store_true", help="train again even where results exist")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every run")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    runner = RecipeRunner(ROOT, args.rerun)
    os.environ["OMP_NUM_THREADS"] = "1"  # --jobs processes share the cores

    def run(job):
        strategy, seed = job
        run_dir = out / f"{strategy}_seed{seed}"
        runner.run(f"{strategy}/seed{seed}", run_dir / "eval" / PRETRAIN_EVAL_FILE,
                   ["recipes/reweight_pretrain.py", "--config", CONFIG, "--reweight_strategy", strategy, "--seed",
                    str(seed), "--output_dir", str(run_dir), "--overwrite_output_dir", "true", "--disable_tqdm", "true",
                    *args.extra])  # fmt: skip

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(run, [(s, k) for s in args.strategies for k in args.seeds]))

    rows, series, per_run, curves_by = {}, {}, {}, {}
    for strategy in args.strategies:
        dirs = [out / f"{strategy}_seed{k}" for k in args.seeds]
        finals = [json.loads((d / "eval" / PRETRAIN_EVAL_FILE).read_text()) for d in dirs]
        histories = [json.loads((d / LOG_HISTORY_FILE).read_text()) for d in dirs]
        curves = curves_by[strategy] = [curve(h, "eval_loss") for h in histories]
        series[strategy] = mean_curve(curves)
        ess = [curve(h, "reweight/ess_fraction")[1] for h in histories]
        loss, loss_err = mean_stderr([f["eval_loss"] for f in finals])
        ppl, _ = mean_stderr([f["perplexity"] for f in finals])
        rows[strategy] = {"final val loss": f"{loss:.4f} ± {loss_err:.4f}", "final perplexity": round(ppl, 2),
                          "mean ESS / B after warm-up": round(sum(sum(e[1:]) / max(1, len(e) - 1) for e in ess) / len(ess), 3),
                          "steps": max(h["step"] for h in histories[0] if "step" in h),
                          "val tokens": str(finals[0]["tokens"])}  # fmt: skip
        per_run[strategy] = {"final": finals, "eval_loss_curves": curves}
        if "uniform" in args.strategies:
            uniform_finals = [json.loads((out / f"uniform_seed{k}" / "eval" / PRETRAIN_EVAL_FILE).read_text())
                              for k in args.seeds]  # fmt: skip
            diff, err = mean_stderr([f["eval_loss"] - u["eval_loss"] for f, u in zip(finals, uniform_finals)])
            rows[strategy]["final val loss - uniform (paired)"] = f"{diff:+.4f} ± {err:.4f}"
    figure = [{"title": "validation loss (256 held-out rows x 128 tokens)", "ylabel": "token-mean loss (nats)",
               "series": series}]  # fmt: skip
    if "uniform" in curves_by:
        deltas = {}  # paired by seed: the same initialisation and data order, only the weights differ
        for strategy, curves in curves_by.items():
            if strategy == "uniform":
                continue
            paired = []
            for (steps, vals), (u_steps, u_vals) in zip(curves, curves_by["uniform"]):
                shared = [s for s in steps if s in u_steps]
                paired.append((shared, [vals[steps.index(s)] - u_vals[u_steps.index(s)] for s in shared]))
            deltas[strategy] = mean_curve(paired)
        figure.append({"title": "difference to uniform, paired by seed (below 0: better)",
                       "ylabel": "val loss - uniform val loss", "series": deltas, "hline": (0.0, "uniform")})  # fmt: skip
    plot_curves(figure, out / "reweight.png",
                title=f"Loss-reweighted pretraining, stories260K architecture from scratch, "
                      f"mean over {len(args.seeds)} seed(s)")  # fmt: skip
    keys = ["final val loss", "final val loss - uniform (paired)", "final perplexity", "mean ESS / B after warm-up",
            "steps", "val tokens"]
    table = markdown_table(rows, keys, first_column="strategy")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    atomic_write_json(out / "reweight.json", {"machine": machine, "seeds": args.seeds, "config": CONFIG,
                                              "extra": args.extra, "table": rows, "runs": per_run,
                                              "wall_time_s": runner.timings})  # fmt: skip
    atomic_write_text(out / "reweight.md", table + "\n")
    print(table)
    print(f"[compare] wrote {out / 'reweight.md'}, {out / 'reweight.json'} and {out / 'reweight.png'}")


if __name__ == "__main__":
    main()
