"""The SFT -> DPO pipeline of "Implicit Reward as the Bridge" (arXiv 2507.00018): an SFT stage
(``recipes/implicit_sft.py``: plain, reduced learning rate, or an f-divergence loss), then the same DPO stage
(``recipes/dpo.py``, stock TRL) from the SFT model, each saved and evaluated on the same held-out pairs.

    python recipes/sft_dpo.py --sft_config configs/preference/sft_tofu_tiny.yaml \
        --dpo_config configs/preference/dpo_tofu_tiny.yaml --output_dir runs/sft_dpo_ce
    python recipes/sft_dpo.py --sft_config configs/preference/sft_tofu_tiny.yaml \
        --dpo_config configs/preference/dpo_tofu_tiny.yaml --output_dir runs/sft_dpo_pearson --sft --sft_divergence pearson

Flags after ``--sft`` (up to ``--dpo``) override the SFT config, flags after ``--dpo`` the DPO config. The stages
write ``output_dir/sft`` and ``output_dir/dpo``; the DPO stage starts from (and uses as its reference) the SFT model.
Under ``accelerate launch`` both stages run in the same processes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from llmpost.config import run_main

HERE = os.path.dirname(os.path.abspath(__file__))


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"llmpost_recipe_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def split_argv(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """``(own, sft_overrides, dpo_overrides)``: the flags before ``--sft`` / ``--dpo`` and after each."""
    own, parts, current = [], {"--sft": [], "--dpo": []}, None
    for arg in argv:
        if arg in parts:
            current = arg
        elif current is None:
            own.append(arg)
        else:
            parts[current].append(arg)
    return own, parts["--sft"], parts["--dpo"]


def main(argv=None):
    own, sft_extra, dpo_extra = split_argv(list(sys.argv[1:] if argv is None else argv))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sft_config", required=True, help="the SFT stage's config (recipes/implicit_sft.py)")
    p.add_argument("--dpo_config", required=True, help="the DPO stage's config (recipes/dpo.py)")
    p.add_argument("--output_dir", required=True, help="writes output_dir/sft and output_dir/dpo")
    args = p.parse_args(own)
    for path, key in ((args.sft_config, "--sft_config"), (args.dpo_config, "--dpo_config")):
        if not os.path.isfile(path):
            raise SystemExit(f"{key}: {path} does not exist")
    sft_dir, dpo_dir = os.path.join(args.output_dir, "sft"), os.path.join(args.output_dir, "dpo")
    # Both stages' configs and output directories are checked before the first stage trains.
    from trl import DPOConfig, ModelConfig

    from llmpost.benchmarks.preference.data import PreferenceArguments
    from llmpost.config import parse_config
    from llmpost.utils import check_output_dir

    parse_config((ModelConfig, PreferenceArguments, DPOConfig), ["--config", args.dpo_config, *dpo_extra,
                                                                 "--output_dir", dpo_dir])
    check_output_dir(dpo_dir, "--overwrite_output_dir" in dpo_extra)
    sft = _recipe("implicit_sft").main(["--config", args.sft_config, *sft_extra, "--output_dir", sft_dir],
                                       end_training=False)
    dpo = _recipe("dpo").main(["--config", args.dpo_config, *dpo_extra, "--output_dir", dpo_dir,
                               "--model_name_or_path", sft_dir])
    return {"sft": sft, "dpo": dpo}


if __name__ == "__main__":
    run_main(main)
