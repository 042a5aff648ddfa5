"""`llmpost report tofu`: table, forget quality filled from the retain log, plot written."""

from __future__ import annotations

import json

import pytest
from scipy.stats import ks_2samp

from llmpost.cli import main


def _run(d, ratios, **summary):
    d.mkdir(parents=True)
    logs = {"forget_truth_ratio": {"agg_value": 0.5, "value_by_index": {str(i): {"score": r} for i, r in enumerate(ratios)}}}
    (d / "TOFU_EVAL.json").write_text(json.dumps(logs))
    (d / "TOFU_SUMMARY.json").write_text(json.dumps(summary))
    return str(d)


def test_report_table_fills_forget_quality_and_plots(tmp_path, capsys):
    retain_ratios, other = [0.1, 0.5, 0.7, 0.9, 0.3], [0.9, 0.95, 0.99, 0.8, 0.85]
    retain = _run(tmp_path / "retain", retain_ratios, model_utility=0.4, forget_Q_A_Prob=0.1, retain_Q_A_Prob=0.8)
    target = _run(tmp_path / "target", other, model_utility=0.5, forget_Q_A_Prob=0.9, retain_Q_A_Prob=0.85)
    npo = _run(tmp_path / "npo", other, forget_quality=0.25, model_utility=0.45, forget_Q_A_Prob=0.01, retain_Q_A_Prob=0.6)
    plot = tmp_path / "plot.png"
    code = main(["report", "tofu", "--retain_logs_path", f"{retain}/TOFU_EVAL.json", "--run", f"retain={retain}",
                 "--run", f"target={target}", "--run", f"npo={npo}", "--plot", str(plot), "--output", str(tmp_path / "t.txt")])
    assert code == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert lines["metric"] == ["retain", "target", "npo"]
    fq = [float(x) for x in lines["forget_quality"]]
    assert fq[0] == pytest.approx(1.0)  # the retain model against its own log
    assert fq[1] == pytest.approx(ks_2samp(other, retain_ratios).pvalue, rel=1e-3)  # from the retain log (table: 4 digits)
    assert fq[2] == pytest.approx(0.25)  # an existing value is kept
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "t.txt").read_text().startswith("metric")


def test_report_errors_exit_2(tmp_path, capsys):
    assert main(["report", "tofu", "--run", "nonsense"]) == 2
    assert "NAME=EVAL_DIR" in capsys.readouterr().err
    assert main(["report", "tofu", "--run", f"x={tmp_path}"]) == 2
    assert "no TOFU_SUMMARY.json" in capsys.readouterr().err


def test_markdown_table_and_muse_plot(tmp_path):
    import math

    from llmpost.benchmarks.muse.report import plot_muse_runs
    from llmpost.eval.stats import markdown_table

    runs = {"target": {"forget_verbmem_ROUGE": 0.61234, "retain_knowmem_ROUGE": 0.3, "privleak": None},
            "npo": {"forget_verbmem_ROUGE": 0.1, "retain_knowmem_ROUGE": 0.25, "privleak": math.nan}}
    table = markdown_table(runs, ("forget_verbmem_ROUGE", "privleak")).splitlines()
    assert table[0] == "| run | forget_verbmem_ROUGE | privleak |" and table[1] == "|---|---|---|"
    assert table[2:] == ["| target | 0.6123 | - |", "| npo | 0.1 | - |"]
    plot_muse_runs(runs, tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.tmp.png"))


def test_curves_from_log_history_and_their_plot(tmp_path):
    from llmpost.report import curve, mean_curve, plot_curves

    history = [{"loss": 1.0, "step": 1}, {"heldout/pass@1": 0.25, "step": 2}, {"heldout/pass@1": 0.5, "step": 0},
               {"heldout/pass@1": None, "step": 3}, {"train_runtime": 1.0}]  # fmt: skip
    assert curve(history, "heldout/pass@1") == ([0, 2], [0.5, 0.25])  # sorted by step, nulls and other keys skipped
    assert curve(history, "missing") == ([], [])
    steps, means, errs = mean_curve([([0, 2], [0.5, 0.25]), ([0, 1, 2], [0.1, 9.0, 0.75])])
    assert steps == [0, 2]  # only the steps every run logged
    assert means == pytest.approx([0.3, 0.5])
    assert errs == pytest.approx([0.2, 0.25])  # sample std / sqrt(2): |a - b| / 2
    assert mean_curve([([1], [0.4])]) == ([1], [0.4], [0.0])
    path = tmp_path / "curves.png"
    plot_curves([{"title": "a", "ylabel": "y", "series": {"run": (steps, means, errs)}, "hline": (0.3, "target")},
                 {"title": "b", "ylabel": "y", "series": {"run": ([1], [0.4], [0.0])}}], path, title="t")
    assert path.stat().st_size > 1000 and not list(tmp_path.glob("*.tmp.png"))
