"""WMDP and MMLU scoring against lm-evaluation-harness itself, on the tiny model and the shared data.

lm-eval runs its own WMDP and default-MMLU task configs (read from the installed package: template, description,
choices, few-shot settings, group aggregation), with only the dataset pointed at the shared files: WMDP's JSON files
as they are, MMLU's CSVs converted (with the csv module, in a temporary folder) to the hub's layout. Its HF model loads
the tiny model itself. Every question's choice must equal ours, every task and group accuracy too; the
log-likelihoods agree to float noise. Skipped only where lm_eval is not installed (``pip install 'llmpost[lm-eval]'``;
scripts/setup.sh installs it).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import SHARED, TINY_MODEL

lm_eval = pytest.importorskip("lm_eval", reason="lm_eval not installed (pip install 'llmpost[lm-eval]')")

pytestmark = pytest.mark.usefixtures("one_thread")

WMDP_DIR, MMLU_DIR = SHARED / "data" / "wmdp", SHARED / "data" / "mmlu"
WMDP_LIMIT, MMLU_LIMIT = 60, 30
SUBJECTS = ("anatomy", "virology", "sociology", "philosophy")  # one per category: stem, other, social, humanities
CATEGORY = {"anatomy": "stem", "virology": "other", "sociology": "social_sciences", "philosophy": "humanities"}


def _yaml(path):
    import yaml

    return yaml.safe_load(path.read_text())


def _mmlu_json(subject: str, split: str, out_dir):
    """The hub layout of one MMLU CSV (question, subject, choices, answer index), read with the csv module."""
    with (MMLU_DIR / split / f"{subject}_{split}.csv").open(newline="", encoding="utf-8") as f:
        rows = [{"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5])}
                for r in csv.reader(f)]  # fmt: skip
    path = out_dir / f"{subject}_{split}.json"
    path.write_text(json.dumps(rows))
    return str(path)


def _write_tasks(task_dir, data_dir) -> list[str]:
    """lm-eval task and group YAMLs (``cmp_*`` names) built from lm-eval's own WMDP and MMLU configs."""
    import yaml
    from lm_eval.tasks import TaskManager  # noqa: F401  (lm_eval.tasks is where the configs live)

    tasks_root = __import__("pathlib").Path(lm_eval.__file__).parent / "tasks"
    wmdp_tmpl = _yaml(tasks_root / "wmdp" / "_default_template_yaml")
    mmlu_tmpl = _yaml(tasks_root / "mmlu" / "default" / "_default_template_yaml")

    def write(name, cfg):
        (task_dir / f"{name}.yaml").write_text(yaml.safe_dump(cfg))

    for subset in ("bio", "chem", "cyber"):
        own = _yaml(tasks_root / "wmdp" / f"wmdp_{subset}.yaml")
        write(f"cmp_wmdp_{subset}", {**wmdp_tmpl, "task": f"cmp_wmdp_{subset}", "description": own["description"],
                                     "dataset_path": "json", "dataset_name": None,
                                     "dataset_kwargs": {"data_files": {"test": str(WMDP_DIR / f"{subset}_questions.json")}}})
    group = _yaml(tasks_root / "wmdp" / "_wmdp.yaml")
    write("cmp_wmdp", {**group, "group": "cmp_wmdp", "task": [f"cmp_wmdp_{s}" for s in ("bio", "chem", "cyber")]})

    top = _yaml(tasks_root / "mmlu" / "default" / "_mmlu.yaml")
    for shots in (0, 5):
        for subject in SUBJECTS:
            own = _yaml(tasks_root / "mmlu" / "default" / f"mmlu_{subject}.yaml")
            files = {"test": _mmlu_json(subject, "test", data_dir), "dev": _mmlu_json(subject, "dev", data_dir)}
            write(f"cmp{shots}_mmlu_{subject}", {**mmlu_tmpl, "task": f"cmp{shots}_mmlu_{subject}",
                                                 "description": own["description"], "num_fewshot": shots,
                                                 "dataset_path": "json", "dataset_name": None,
                                                 "dataset_kwargs": {"data_files": files}})
        for subject in SUBJECTS:
            category = _yaml(tasks_root / "mmlu" / "default" / f"_mmlu_{CATEGORY[subject]}.yaml")
            write(f"cmp{shots}_mmlu_{CATEGORY[subject]}",
                  {**category, "group": f"cmp{shots}_mmlu_{CATEGORY[subject]}", "task": [f"cmp{shots}_mmlu_{subject}"]})
        write(f"cmp{shots}_mmlu", {**top, "group": f"cmp{shots}_mmlu",
                                   "task": [f"cmp{shots}_mmlu_{c}" for c in ("stem", "other", "social_sciences", "humanities")]})
    return ["cmp_wmdp", "cmp0_mmlu", "cmp5_mmlu"]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """lm-eval's results (with per-sample records) for the cmp_* groups."""
    from lm_eval.tasks import TaskManager

    task_dir, data_dir = tmp_path_factory.mktemp("tasks"), tmp_path_factory.mktemp("mmlu_json")
    groups = _write_tasks(task_dir, data_dir)
    # limit applies per task: WMDP_LIMIT for each WMDP subset; MMLU_LIMIT via the same call would cut WMDP too, so
    # run the two benchmarks separately.
    out = {"task_dir": task_dir}
    for names, limit in ((groups[:1], WMDP_LIMIT), (groups[1:], MMLU_LIMIT)):
        res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={TINY_MODEL},dtype=float32", device="cpu",
                                      tasks=names, limit=limit, batch_size=16, log_samples=True, bootstrap_iters=0,
                                      task_manager=TaskManager(include_path=str(task_dir)))  # fmt: skip
        out.setdefault("results", {}).update(res["results"])
        out.setdefault("samples", {}).update(res["samples"])
    return out


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from llmpost.models import load_saved_model, load_tokenizer

    return load_saved_model(str(TINY_MODEL), "float32"), load_tokenizer(str(TINY_MODEL))


def _compare(ours: dict, samples: list[dict]) -> tuple[int, float]:
    """Every question's choice and 0/1 accuracy equal lm-eval's; log-likelihoods within float noise. Returns the
    number of questions and the largest log-likelihood difference."""
    by_index = ours["value_by_index"]
    assert len(samples) == len(by_index)
    worst = 0.0
    for s in samples:
        mine = by_index[str(s["doc_id"])]
        theirs = [float(ll) for ll, _ in s["filtered_resps"]]
        assert mine["pred"] == int(np.argmax(theirs)), (s["doc_id"], mine, theirs)
        assert float(mine["pred"] == mine["answer"]) == s["acc"]
        np.testing.assert_allclose(mine["loglikelihoods"], theirs, rtol=0, atol=1e-4)
        worst = max(worst, float(np.max(np.abs(np.subtract(mine["loglikelihoods"], theirs)))))
    return len(samples), worst


def test_wmdp_matches_lm_eval(harness, model_and_tokenizer):
    from llmpost.benchmarks.wmdp.evaluate import WmdpEvalSettings, compute_wmdp, summarize

    model, tokenizer = model_and_tokenizer
    logs = compute_wmdp(model, tokenizer, WmdpEvalSettings(str(WMDP_DIR), max_examples=WMDP_LIMIT, batch_size=4))
    summary = summarize(logs)
    n, worst = 0, 0.0
    for task, entry in logs.items():
        count, diff = _compare(entry, harness["samples"][f"cmp_{task}"])
        n, worst = n + count, max(worst, diff)
        assert entry["agg_value"] == pytest.approx(harness["results"][f"cmp_{task}"]["acc,none"], abs=1e-12)
    assert n == 3 * WMDP_LIMIT
    print(f"WMDP: {n} questions, choices equal; max |log-likelihood difference| {worst:.2e}")
    assert summary["wmdp"] == pytest.approx(harness["results"]["cmp_wmdp"]["acc,none"], abs=1e-12)


@pytest.mark.parametrize("shots", [0, 5])
def test_mmlu_matches_lm_eval(harness, model_and_tokenizer, shots):
    from llmpost.benchmarks.mmlu.evaluate import MmluEvalSettings, compute_mmlu, summarize

    model, tokenizer = model_and_tokenizer
    settings = MmluEvalSettings(str(MMLU_DIR), num_fewshot=shots, subjects=tuple(sorted(SUBJECTS)),
                                max_examples=MMLU_LIMIT, batch_size=4)  # fmt: skip
    logs = compute_mmlu(model, tokenizer, settings)
    summary = summarize(logs, shots)
    n, worst = 0, 0.0
    for task, entry in logs.items():
        count, diff = _compare(entry, harness["samples"][f"cmp{shots}_{task}"])
        n, worst = n + count, max(worst, diff)
        assert entry["agg_value"] == pytest.approx(harness["results"][f"cmp{shots}_{task}"]["acc,none"], abs=1e-12)
    assert n == len(SUBJECTS) * MMLU_LIMIT
    print(f"MMLU {shots}-shot: {n} questions, choices equal; max |log-likelihood difference| {worst:.2e}")
    for group in ("mmlu", "mmlu_stem", "mmlu_other", "mmlu_social_sciences", "mmlu_humanities"):
        assert summary[group] == pytest.approx(harness["results"][f"cmp{shots}_{group}"]["acc,none"], abs=1e-12)


def test_cli_lm_eval_pass_through_on_a_lora_adapter(harness, tmp_path):
    """``llmpost eval lm_eval`` merges a LoRA adapter (zero-initialised B: the merged model is the base model) and
    writes lm-eval's results, which then equal lm-eval's run on the base model."""
    from peft import LoraConfig, get_peft_model

    from llmpost.cli import main
    from llmpost.models import load_saved_model

    adapter = tmp_path / "adapter"
    get_peft_model(load_saved_model(str(TINY_MODEL), "float32"),
                   LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter)  # fmt: skip
    out = tmp_path / "out"
    assert main(["eval", "lm_eval", "--tasks", "cmp_wmdp_chem", "--include_path", str(harness["task_dir"]),
                 "--model_name_or_path", str(adapter), "--tokenizer_name_or_path", str(TINY_MODEL),
                 "--max_examples", str(WMDP_LIMIT), "--device", "cpu", "--output_dir", str(out)]) == 0  # fmt: skip
    results = json.loads((out / "LM_EVAL_RESULTS.json").read_text())["results"]
    assert results["cmp_wmdp_chem"]["acc,none"] == harness["results"]["cmp_wmdp_chem"]["acc,none"]
