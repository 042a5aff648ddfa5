"""Preference methods on CPU (issue: SRPO and the SFT/DPO implicit-reward variants): two tables and one plot.

    python scripts/compare_preference.py                     # about 45 min on 2 cores
    python scripts/compare_preference.py --parts methods --extra --max_train_pairs 64

Part ``methods``: SRPO, DPO and IPO from the same SFT warm start (``configs/preference/sft_tofu_tiny.yaml``: the
stories260K model fine-tuned on the chosen answers of the training pairs), on the same TOFU forget10 pairs (the true
answer chosen, a perturbed answer rejected; 10% of the questions held out), evaluated on the held-out pairs:
implicit-reward accuracy against the warm start, and the judge's score (ROUGE-L F1 to the gold answer on CPU) of the
model's draft after 0, 1 and 2 self-revisions. The SFT model itself is the first row.

An extra row ``SRPO, sums`` appears when ``--out``/``srpo_sum`` holds a run of ``recipes/srpo.py`` with
``--length_normalize false`` (made by hand: same command as the SRPO run).

Part ``sft_dpo``: the SFT -> DPO pipeline of arXiv 2507.00018: SFT variants (cross-entropy at the learning rate of
the warm start, cross-entropy at a tenth of it, Pearson chi^2 at both rates, squared Hellinger, forward KL), each
followed by the
same DPO stage from that SFT model (``recipes/sft_dpo.py``); for each, the SFT model's and the DPO model's held-out
numbers.

Writes into ``--out``: ``preference.md``, ``preference.json`` (every number, the machine and the wall times) and
``preference.png`` (score against the number of revisions). A finished run is reused (``--rerun`` trains it again).
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

from llmpost.benchmarks.preference.evaluate import PREFERENCE_EVAL_FILE  # noqa: E402
from llmpost.eval.stats import markdown_table  # noqa: E402
from llmpost.report import plot_curves  # noqa: E402
from llmpost.runner import RecipeRunner  # noqa: E402
from llmpost.utils import atomic_write_json, atomic_write_text  # noqa: E402

SFT, DPO, IPO, SRPO = ("configs/preference/sft_tofu_tiny.yaml", "configs/preference/dpo_tofu_tiny.yaml",
                       "configs/preference/ipo_tofu_tiny.yaml", "configs/preference/srpo_tofu_tiny.yaml")
SFT_VARIANTS = {  # name: SFT-stage flags (on top of the SFT config)
    "ce": [],
    "ce_lr/10": ["--learning_rate", "3e-4"],
    "pearson": ["--sft_divergence", "pearson"],
    "pearson_lr/10": ["--sft_divergence", "pearson", "--learning_rate", "3e-4"],
    "hellinger": ["--sft_divergence", "hellinger"],
    "forward_kl": ["--sft_divergence", "forward_kl"],
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/preference", help="output directory (runs, tables, plot)")
    p.add_argument("--parts", nargs="+", choices=["methods", "sft_dpo"], default=["methods", "sft_dpo"])
    p.add_argument("--variants", nargs="+", choices=list(SFT_VARIANTS), default=list(SFT_VARIANTS))
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--rerun", action="store_true", help="train again even where results exist")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="flags passed to every run")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    return args


def _summary(run_dir: Path) -> dict | None:
    path = run_dir / "eval" / PREFERENCE_EVAL_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _row(summary: dict | None) -> dict:
    if summary is None:
        return {"held-out implicit accuracy": "failed"}
    acc, (lo, hi) = summary["implicit_reward"]["accuracy"], summary["implicit_reward"]["accuracy_ci95"]
    revs = summary["revisions"]
    row = {"held-out implicit accuracy": f"{acc:.3f} [{lo:.2f}, {hi:.2f}]",
           "mean margin (nats)": round(summary["implicit_reward"]["mean_margin"], 2)}
    for r in revs:
        row[f"score y{r['step']}"] = f"{r['score']:.3f} [{r['score_ci_low']:.3f}, {r['score_ci_high']:.3f}]"
    last = revs[-1]
    row[f"y{last['step']} - y0 (paired)"] = (f"{last['improvement']:+.3f} [{last['improvement_ci_low']:+.3f}, "
                                             f"{last['improvement_ci_high']:+.3f}]")
    return row


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    runner = RecipeRunner(ROOT, args.rerun)
    os.environ["OMP_NUM_THREADS"] = "1"  # --jobs processes share the cores
    common = ["--overwrite_output_dir", "true", "--disable_tqdm", "true", *args.extra]
    marker = lambda d: d / "eval" / PREFERENCE_EVAL_FILE  # noqa: E731

    warm = out / "sft_ce"  # the warm start of part "methods" and the "ce" variant of part "sft_dpo"
    runner.run("sft/ce", marker(warm), ["recipes/implicit_sft.py", "--config", SFT, "--output_dir", str(warm), *common])
    jobs = []
    if "methods" in args.parts:
        for name, recipe, config in (("srpo", "recipes/srpo.py", SRPO), ("dpo", "recipes/dpo.py", DPO),
                                     ("ipo", "recipes/dpo.py", IPO)):
            d = out / name
            jobs.append((name, marker(d), [recipe, "--config", config, "--model_name_or_path", str(warm),
                                           "--output_dir", str(d), *common]))  # fmt: skip
    if "sft_dpo" in args.parts:
        for variant in args.variants:
            d = out / f"sft_dpo_{variant.replace('/', '_')}"
            sft_flags = ([] if variant == "ce" else SFT_VARIANTS[variant])
            jobs.append((f"sft_dpo/{variant}", marker(d / "dpo"),
                         ["recipes/sft_dpo.py", "--sft_config", SFT, "--dpo_config", DPO, "--output_dir", str(d),
                          "--sft", *sft_flags, *common, "--dpo", *common]))  # fmt: skip

    def run(job):
        name, done, cmd = job
        try:
            runner.run(name, done, cmd)
        except SystemExit as e:  # a diverging variant is a result, not the end of the comparison
            print(e, flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(run, jobs))

    tables, numbers, series = {}, {}, {}
    if "methods" in args.parts:
        rows = {}
        methods = [("SFT warm start", warm), ("SRPO", out / "srpo"), ("DPO", out / "dpo"), ("IPO", out / "ipo")]
        if (out / "srpo_sum").is_dir():  # an optional extra run: SRPO with length_normalize false (log-ratio sums)
            methods.insert(2, ("SRPO, sums", out / "srpo_sum"))
        for name, d in methods:
            s = _summary(d)
            numbers[name] = s
            rows[name] = _row(s)
            if s is not None:
                revs = s["revisions"]
                series[name] = ([r["step"] for r in revs], [r["score"] for r in revs],
                                [r.get("score_stderr", 0.0) for r in revs])
        tables["methods"] = markdown_table(rows, list(next(iter(rows.values())).keys()), first_column="method")
    if "sft_dpo" in args.parts:
        rows = {}
        for variant in args.variants:
            d = out / f"sft_dpo_{variant.replace('/', '_')}"
            sft_dir = warm if variant == "ce" and not (d / "sft" / "eval").is_dir() else d / "sft"
            for stage, sd in (("SFT", sft_dir), ("SFT -> DPO", d / "dpo")):
                s = _summary(sd)
                numbers[f"{variant} {stage}"] = s
                rows[f"{variant}: {stage}"] = _row(s)
        keys = sorted({k for r in rows.values() for k in r}, key=lambda k: list(_row(None)).count(k))
        first = next((r for r in rows.values() if len(r) > 1), None)
        tables["sft_dpo"] = markdown_table(rows, list(first) if first else keys, first_column="SFT variant: stage")
    if series:
        plot_curves([{"title": "held-out drafts vs gold answers", "ylabel": "ROUGE-L F1 to the gold answer (mean ± s.e.)",
                      "xlabel": "self-revisions k (draft y_k)", "xticks": sorted({k for v in series.values() for k in v[0]}),
                      "series": series}], out / "preference.png",
                    title="TOFU held-out questions, stories260K (CPU)")  # fmt: skip
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}"
    text = "\n\n".join(f"### {k}\n\n{v}" for k, v in tables.items())
    atomic_write_json(out / "preference.json", {"machine": machine, "extra": args.extra, "tables": tables,
                                                "numbers": numbers, "wall_time_s": runner.timings})  # fmt: skip
    atomic_write_text(out / "preference.md", text + "\n")
    print(text)
    print(f"[compare] wrote {out / 'preference.md'}, {out / 'preference.json'} and {out / 'preference.png'}")


if __name__ == "__main__":
    main()
