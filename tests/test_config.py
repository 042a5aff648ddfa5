"""Config parsing: every shipped YAML loads into its recipe's dataclasses; bad keys, types and values are errors
that name the key and the file; CLI flags override YAML."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from trl import ModelConfig

from conftest import ROOT
from llmpost.benchmarks.tofu.data import TofuArguments
from llmpost.config import ConfigError, parse_config
from llmpost.trainers.unlearn import UnlearnConfig, UnlearnMethod

UNLEARN = (ModelConfig, TofuArguments, UnlearnConfig)


def _recipe_types(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[f"recipe_{name}"] = mod  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def _types_for(config: Path):
    if config.name.startswith("finetune_tofu"):
        from trl import SFTConfig

        return (ModelConfig, TofuArguments, _recipe_types("finetune_tofu").FinetuneArguments, SFTConfig)
    if config.name.startswith("npo_tofu"):
        return UNLEARN
    if config.name.startswith("rmu_"):  # recipes/npo_tofu.py (rmu_tofu*) or npo_muse.py (rmu_muse*, rmu_wmdp)
        from llmpost.benchmarks.muse.data import MuseArguments
        from llmpost.trainers.rmu import RmuConfig

        return (ModelConfig, TofuArguments if config.name.startswith("rmu_tofu") else MuseArguments, RmuConfig)
    if config.name.startswith("finetune_muse"):
        from trl import SFTConfig

        from llmpost.benchmarks.muse.data import MuseArguments

        return (ModelConfig, MuseArguments, _recipe_types("finetune_muse").FinetuneArguments, SFTConfig)
    if config.name.startswith("npo_muse"):
        from llmpost.benchmarks.muse.data import MuseArguments

        return (ModelConfig, MuseArguments, UnlearnConfig)
    if config.name.startswith("grpo_noisy_math") or (config.parent.name == "grpo_noisy_math"
                                                     and not config.name.startswith("tiny_sft")):
        from llmpost.benchmarks.math.data import MathArguments
        from llmpost.trainers.noisy_grpo import NoisyGRPOConfig

        recipe = _recipe_types("grpo_noisy_math")
        return (ModelConfig, MathArguments, recipe.RewardArguments, recipe.CurveArguments, NoisyGRPOConfig)
    if config.name.startswith("reweight_pretrain"):
        from llmpost.data.pretrain import PretrainArguments
        from llmpost.trainers.reweight import ReweightConfig

        return (ModelConfig, PretrainArguments, ReweightConfig)
    if config.parent.name == "preference":
        from trl import DPOConfig

        from llmpost.benchmarks.preference.data import PreferenceArguments
        from llmpost.trainers.implicit_sft import ImplicitSFTConfig
        from llmpost.trainers.srpo import SRPOConfig

        stage = {"srpo": SRPOConfig, "dpo": DPOConfig, "ipo": DPOConfig, "sft": ImplicitSFTConfig}[config.name.split("_")[0]]
        return (ModelConfig, PreferenceArguments, stage)
    if config.name.startswith(("dco_math", "tiny_sft")):
        from llmpost.benchmarks.math.data import MathArguments
        from llmpost.trainers.dco import DCOConfig

        return (ModelConfig, MathArguments, DCOConfig)
    raise AssertionError(f"no recipe known for shipped config {config.name}; add it to this test")


SHIPPED = sorted([*(ROOT / "configs").glob("*.yaml"), *(ROOT / "configs").glob("grpo_noisy_math/*.yaml"),
                  *(ROOT / "configs").glob("preference/*.yaml")])


def test_there_are_shipped_configs():
    assert {p.name for p in SHIPPED} >= {"npo_tofu.yaml", "npo_tofu_tiny.yaml", "finetune_tofu.yaml", "finetune_tofu_tiny.yaml",
                                       "npo_muse.yaml", "npo_muse_tiny.yaml", "finetune_muse.yaml", "finetune_muse_tiny.yaml",
                                       "dco_math.yaml", "dco_math_tiny.yaml", "dco_math_cot.yaml", "dco_math_cot_tiny.yaml"}


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_yaml_loads(config, monkeypatch):
    monkeypatch.chdir(ROOT)
    # GPU configs ask for bf16, which needs a GPU to validate; override on CPU only what the hardware decides
    extra = ["--bf16", "false", "--use_cpu", "true"]
    parsed = parse_config(_types_for(config), ["--config", str(config), *extra])
    assert parsed[0].model_name_or_path


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = _write(tmp_path, "output_dir: x\nbetta: 0.2\n")
    with pytest.raises(ConfigError) as e:
        parse_config(UNLEARN, ["--config", path])
    assert path in str(e.value) and "'betta'" in str(e.value) and "did you mean 'beta'" in str(e.value)


def test_wrong_type_names_expected_type(tmp_path):
    path = _write(tmp_path, "output_dir: x\nbeta: high\n")
    with pytest.raises(ConfigError, match=r"key 'beta' expects float, got 'high'"):
        parse_config(UNLEARN, ["--config", path])
    path = _write(tmp_path, "output_dir: x\nnum_train_epochs: true\n")
    with pytest.raises(ConfigError, match="num_train_epochs"):
        parse_config(UNLEARN, ["--config", path])


def test_bad_enum_value_lists_choices(tmp_path):
    path = _write(tmp_path, "output_dir: x\nmethod: npoo\n")
    with pytest.raises(ConfigError, match=r"key 'method' expects one of \['grad_ascent'"):
        parse_config(UNLEARN, ["--config", path])


def test_out_of_range_value_names_file_and_key(tmp_path):
    path = _write(tmp_path, "output_dir: x\nuse_cpu: true\nbeta: -1.0\n")
    with pytest.raises(ConfigError, match=rf"{path}: .*beta: must be > 0"):
        parse_config(UNLEARN, ["--config", path])


def test_out_of_range_value_from_the_command_line_says_so(tmp_path):
    path = _write(tmp_path, "output_dir: x\nuse_cpu: true\nbeta: 0.1\n")
    with pytest.raises(ConfigError, match=r"^command line \(--beta\): beta: must be > 0") as e:
        parse_config(UNLEARN, ["--config", path, "--beta", "-1"])
    assert path not in str(e.value)
    with pytest.raises(ConfigError, match=r"^command line \(--beta\): beta: must be > 0"):
        parse_config(UNLEARN, ["--output_dir", "x", "--use_cpu", "true", "--beta=-1"])


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_config(UNLEARN, ["--config", _write(tmp_path, "- a\n- b\n")])
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(UNLEARN, ["--config", str(tmp_path / "nope.yaml")])


def test_base_config_is_overridden_key_by_key(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("output_dir: x\nuse_cpu: true\nbeta: 0.3\nmethod: npo\n")
    (tmp_path / "mid.yaml").write_text("base: root.yaml\nbeta: 0.5\n")
    leaf = tmp_path / "sub" / "leaf.yaml"
    leaf.write_text("base: ../mid.yaml\nmethod: simnpo\n")  # relative to the file's own folder
    _, _, args = parse_config(UNLEARN, ["--config", str(leaf)])
    assert (args.beta, args.method, args.output_dir) == (0.5, UnlearnMethod.SIMNPO, "x")
    _, _, args = parse_config(UNLEARN, ["--config", str(leaf), "--beta", "0.7"])  # the command line still wins
    assert args.beta == 0.7
    (tmp_path / "mid.yaml").write_text("base: root.yaml\nbetta: 0.5\n")  # keys of every file are checked
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'sub' / '..' / 'mid.yaml'}: unknown key 'betta'"):
        parse_config(UNLEARN, ["--config", str(leaf)])  # the error names the file that has the key


@pytest.mark.parametrize("text,match", [("base: a.yaml\n", "makes a cycle"), ("base: missing.yaml\n", "does not exist"),
                                        ("base: 3\n", "key 'base' expects the path")])
def test_bad_base_config(tmp_path, text, match):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        parse_config(UNLEARN, ["--config", str(tmp_path / "a.yaml")])
    assert "b.yaml" in str(e.value)


def test_cli_overrides_yaml(tmp_path):
    path = _write(tmp_path, "output_dir: x\nuse_cpu: true\nbeta: 0.3\nmethod: npo\n")
    _, _, args = parse_config(UNLEARN, ["--config", path, "--beta", "0.7", "--method", "simnpo"])
    assert args.beta == 0.7 and args.method == UnlearnMethod.SIMNPO
    _, _, args = parse_config(UNLEARN, ["--config", path])
    assert args.beta == 0.3 and args.method == UnlearnMethod.NPO


def _run_recipe(*argv, cwd=ROOT):
    return subprocess.run([sys.executable, "recipes/npo_tofu.py", *argv], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_recipe_user_errors_exit_2_with_one_clear_line(tmp_path):
    base = ["--config", "configs/npo_tofu_tiny.yaml", "--model_name_or_path", "../shared/models/stories260K"]
    r = _run_recipe(*base, "--output_dir", str(tmp_path / "a"), "--bettta", "0.1")
    assert r.returncode == 2 and "--bettta" in r.stderr
    r = _run_recipe("--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 2 and "missing.yaml" in r.stderr and "does not exist" in r.stderr
    r = _run_recipe(*base, "--output_dir", str(tmp_path / "b"), "--model_name_or_path", "./no/such/model")
    assert r.returncode == 2 and "'./no/such/model' does not exist" in r.stderr
    r = _run_recipe(*base, "--output_dir", str(tmp_path / "c"), "--forget_split", "forget11")
    assert r.returncode == 2 and "'forget11' not found" in r.stderr and "forget10" in r.stderr
    # FLAT without its template answers, and an empty template file
    r = _run_recipe(*base, "--output_dir", str(tmp_path / "f"), "--method", "flat",
                    "--template_answers_path", str(tmp_path / "none.txt"))
    assert r.returncode == 2 and "none.txt' does not exist" in r.stderr and not (tmp_path / "f").exists()
    (tmp_path / "empty.txt").write_text("\n")
    r = _run_recipe(*base, "--output_dir", str(tmp_path / "g"), "--method", "idk_dpo",
                    "--template_answers_path", str(tmp_path / "empty.txt"))
    assert r.returncode == 2 and "holds no answer" in r.stderr and not (tmp_path / "g").exists()
    r = _run_recipe(*base, "--output_dir", str(tmp_path / "h"), "--method", "flat", "--flat_divergence", "chi2")
    assert r.returncode == 2 and "flat_divergence" in r.stderr and "'chi2'" in r.stderr
    # a malformed local data file: the file and the line, exit 2, nothing written
    bad = tmp_path / "tofu"
    bad.mkdir()
    for split in ("forget10", "retain90"):
        (bad / f"{split}.jsonl").write_text((ROOT.parent / "shared/data/tofu" / f"{split}.jsonl").read_text())
    with (bad / "forget10.jsonl").open("a") as f:
        f.write('{"question": "broken\n')
    r = _run_recipe(*base, "--output_dir", str(tmp_path / "e"), "--data_dir", str(bad))
    assert r.returncode == 2 and "forget10.jsonl: line 401" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "e").exists()
    # an output directory holding results is not overwritten
    out = tmp_path / "d"
    out.mkdir()
    (out / "TOFU_SUMMARY.json").write_text('{"keep": 1}')
    r = _run_recipe(*base, "--output_dir", str(out))
    assert r.returncode == 2 and "already holds results" in r.stderr
    assert (out / "TOFU_SUMMARY.json").read_text() == '{"keep": 1}' and sorted(p.name for p in out.iterdir()) == ["TOFU_SUMMARY.json"]
    assert "Traceback" not in r.stderr
