"""SFT through the implicit reward (arXiv 2507.00018): cross-entropy or an f-divergence SFT loss (``sft_divergence``:
ce | pearson | hellinger | forward_kl) on the chosen answers of preference pairs, logging the implicit reward
``beta log(pi / pi_ref)`` of the targets; save, and evaluate like the preference recipes.

    python recipes/implicit_sft.py --config configs/preference/sft_tofu_tiny.yaml
    python recipes/implicit_sft.py --config configs/preference/sft_tofu_tiny.yaml --sft_divergence pearson

The SFT rows are the preference pairs' prompts with their chosen answers (one per prompt). The held-out evaluation's
implicit reward is measured against the starting model. ``recipes/sft_dpo.py`` chains this recipe with
``recipes/dpo.py`` (the paper's SFT -> DPO pipeline).
"""

from __future__ import annotations

from trl import ModelConfig
from trl.trainer.utils import get_peft_config

from llmpost.benchmarks.preference.data import PreferenceArguments
from llmpost.benchmarks.preference.evaluate import preference_evaluator
from llmpost.config import check_launch, parse_config, run_main
from llmpost.data.preference import sft_rows_from_pairs
from llmpost.models import load_model, load_tokenizer
from llmpost.pipeline import save_and_evaluate
from llmpost.trainers.implicit_sft import ImplicitSFTConfig, ImplicitSFTTrainer, tokenize_sft
from llmpost.utils import check_output_dir


def main(argv=None, end_training: bool = True):
    model_args, data_args, args = parse_config((ModelConfig, PreferenceArguments, ImplicitSFTConfig), argv)
    check_launch(args)
    check_output_dir(args.output_dir, data_args.overwrite_output_dir or bool(args.resume_from_checkpoint))
    train, heldout = data_args.splits()
    tokenizer = load_tokenizer(model_args.model_name_or_path, args.trust_remote_code)
    rows = tokenize_sft(sft_rows_from_pairs(train), tokenizer, data_args.templates(), args.max_length)
    model = load_model(model_args, args.trust_remote_code)
    evaluate = preference_evaluator(data_args, heldout, model, tokenizer, args.max_length, args.per_device_eval_batch_size)
    trainer = ImplicitSFTTrainer(model, args, rows, tokenizer, peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    return save_and_evaluate(trainer, evaluate, end_training=end_training)


if __name__ == "__main__":
    run_main(main)
