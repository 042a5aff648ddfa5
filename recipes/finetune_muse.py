"""Fine-tune a model on MUSE-News raw text: the "target" model (forget + retain corpus) or the "retrain" model
(retain corpus only), then evaluate it on MUSE-News.

    python recipes/finetune_muse.py --config configs/finetune_muse_tiny.yaml                                   # target
    python recipes/finetune_muse.py --config configs/finetune_muse_tiny.yaml --include_forget false --output_dir runs/muse_tiny/retrain
    accelerate launch --config_file configs/accelerate/zero3.yaml recipes/finetune_muse.py --config configs/finetune_muse.yaml

Training is TRL's ``SFTTrainer`` on pre-tokenised fixed-length chunks (plain language modelling, labels on every
token; :mod:`llmpost.data.corpus`). MUSE publishes its News target (``muse-bench/MUSE-News_target``); this recipe
makes one for any model, and the matching retrained model, whose ``eval/MUSE_EVAL.json`` is the ``retain_logs_path``
that ``privleak`` is measured against. The evaluation goes to ``output_dir/eval`` (MUSE_EVAL.json, MUSE_SUMMARY.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import concatenate_datasets
from trl import ModelConfig, SFTConfig, SFTTrainer
from trl.trainer.utils import get_peft_config

from llmpost.benchmarks.muse.data import MuseArguments
from llmpost.benchmarks.muse.recipe import muse_evaluator, muse_train_chunks
from llmpost.config import check_launch, parse_config, run_main
from llmpost.models import load_model, load_tokenizer
from llmpost.pipeline import save_and_evaluate
from llmpost.utils import check_output_dir


@dataclass
class FinetuneArguments:
    include_forget: bool = field(default=True, metadata={"help": "True: target model (forget + retain); False: retrained model."})


def main(argv=None):
    model_args, data_args, ft_args, args = parse_config((ModelConfig, MuseArguments, FinetuneArguments, SFTConfig), argv)
    check_launch(args)
    check_output_dir(args.output_dir, data_args.overwrite_output_dir or bool(args.resume_from_checkpoint))
    tokenizer = load_tokenizer(model_args.model_name_or_path, args.trust_remote_code)
    evaluate = muse_evaluator(data_args, tokenizer)  # checks the evaluation's inputs before training
    forget, retain = muse_train_chunks(data_args, tokenizer, args.max_length, include_forget=ft_args.include_forget)
    train = concatenate_datasets([forget, retain]) if forget is not None else retain
    train = train.remove_columns(["index", "attention_mask"])  # every chunk is max_length tokens: nothing to mask

    trainer = SFTTrainer(
        model=load_model(model_args, args.trust_remote_code), args=args, train_dataset=train, processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    save_and_evaluate(trainer, evaluate)


if __name__ == "__main__":
    run_main(main)
