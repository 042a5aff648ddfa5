"""Fine-tune a model on TOFU: the "target" model (forget + retain authors) or the "retain" model (retain only).

    python recipes/finetune_tofu.py --config configs/finetune_tofu_tiny.yaml --output_dir runs/target
    python recipes/finetune_tofu.py --config configs/finetune_tofu_tiny.yaml --output_dir runs/retain --include_forget false
    accelerate launch --config_file configs/accelerate/zero3.yaml recipes/finetune_tofu.py --config configs/finetune_tofu.yaml

Training is TRL's ``SFTTrainer`` on pre-tokenised rows whose labels cover the answer tokens only (the prompt format of
open-unlearning). After training the model is evaluated on TOFU; the retain model's ``eval/TOFU_EVAL.json`` is the
``retain_logs_path`` that forget_quality is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import concatenate_datasets
from trl import ModelConfig, SFTConfig, SFTTrainer
from trl.trainer.utils import get_peft_config

from llmpost.benchmarks.tofu.data import TofuArguments
from llmpost.benchmarks.tofu.recipe import tofu_evaluator, tofu_train_splits
from llmpost.config import check_launch, parse_config, run_main
from llmpost.models import load_model, load_tokenizer
from llmpost.pipeline import save_and_evaluate
from llmpost.utils import check_output_dir


@dataclass
class FinetuneArguments:
    include_forget: bool = field(default=True, metadata={"help": "True: target model (forget + retain); False: retain model."})


def main(argv=None):
    model_args, data_args, ft_args, args = parse_config((ModelConfig, TofuArguments, FinetuneArguments, SFTConfig), argv)
    check_launch(args)
    check_output_dir(args.output_dir, data_args.overwrite_output_dir or bool(args.resume_from_checkpoint))
    tokenizer = load_tokenizer(model_args.model_name_or_path, args.trust_remote_code)
    forget, retain = tofu_train_splits(data_args, tokenizer, args.max_length, include_forget=ft_args.include_forget)
    evaluate = tofu_evaluator(data_args, tokenizer)  # checks the evaluation's inputs now, before training
    train = concatenate_datasets([forget, retain]) if forget is not None else retain
    train = train.remove_columns(["index", "attention_mask"])  # SFTTrainer keeps the given labels (answer tokens only)

    trainer = SFTTrainer(
        model=load_model(model_args, args.trust_remote_code), args=args, train_dataset=train, processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    save_and_evaluate(trainer, evaluate)


if __name__ == "__main__":
    run_main(main)
