"""Train with SRPO (Self-Improving Robust Preference Optimization, arXiv 2406.01660) on preference pairs, save, and
evaluate on held-out pairs: implicit-reward accuracy and the win rate against the gold answers after 0..k
self-revisions.

Launch (any scale; the accelerate config alone sets it):

    python recipes/srpo.py --config configs/preference/srpo_tofu_tiny.yaml                 # CPU, TOFU pairs
    accelerate launch --config_file configs/accelerate/zero2.yaml recipes/srpo.py --config configs/preference/srpo_tldr.yaml

Pairs come from TOFU (``dataset: tofu:forget10``: the true answer is chosen, a perturbed one rejected), a local
file or a hub id in TRL's format (``prompt``, ``chosen``, ``rejected``). Writes the model (or LoRA adapter) to
``output_dir`` and, when ``eval_after_training``, ``output_dir/eval/PREFERENCE_EVAL.json`` and ``drafts.jsonl``.
"""

from __future__ import annotations

from trl import ModelConfig
from trl.trainer.utils import get_peft_config

from llmpost.benchmarks.preference.data import PreferenceArguments
from llmpost.benchmarks.preference.evaluate import preference_evaluator
from llmpost.config import check_launch, parse_config, run_main
from llmpost.models import load_model, load_tokenizer
from llmpost.pipeline import save_and_evaluate
from llmpost.trainers.srpo import SRPOConfig, SRPOTrainer
from llmpost.utils import check_output_dir


def main(argv=None, end_training: bool = True):
    model_args, data_args, args = parse_config((ModelConfig, PreferenceArguments, SRPOConfig), argv)
    check_launch(args)
    check_output_dir(args.output_dir, data_args.overwrite_output_dir or bool(args.resume_from_checkpoint))
    train, heldout = data_args.splits()  # a bad row stops the recipe here, before any model is loaded
    tokenizer = load_tokenizer(model_args.model_name_or_path, args.trust_remote_code)
    model = load_model(model_args, args.trust_remote_code)
    evaluate = preference_evaluator(data_args, heldout, model, tokenizer, args.max_length, args.per_device_eval_batch_size)
    trainer = SRPOTrainer(model, args, train, tokenizer, templates=data_args.templates(),
                          peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    return save_and_evaluate(trainer, evaluate, end_training=end_training)


if __name__ == "__main__":
    run_main(main)
