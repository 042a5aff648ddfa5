"""Pretrain (or continue pretraining) a causal LM with dynamic loss-based sample reweighting (arXiv 2502.06733):
``reweight_strategy`` linupper | upper | quadratic | extremes, or uniform (the plain-mean baseline).

Launch (any scale; the accelerate config alone sets it):

    python recipes/reweight_pretrain.py --config configs/reweight_pretrain_tiny.yaml                     # CPU
    python recipes/reweight_pretrain.py --config configs/reweight_pretrain_tiny.yaml --reweight_strategy uniform \
        --output_dir runs/reweight_tiny_uniform
    accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 8 recipes/reweight_pretrain.py \
        --config configs/reweight_pretrain.yaml

The corpus (``corpus_files`` and/or ``dataset_name``, ``text_column``) is split by document into training and
held-out text and packed into rows of ``seq_length`` tokens (``llmpost.data.pretrain``); ``model_config`` trains a
randomly initialised model of that architecture (seeded by ``seed``), otherwise the weights of
``model_name_or_path`` are continued. The tokenizer always comes from ``model_name_or_path``. Validation loss is
logged every ``eval_steps`` (``eval_strategy: steps``). Writes the model, ``log_history.json`` and
``eval/PRETRAIN_EVAL.json`` (held-out token-mean loss and perplexity of the saved model) to ``output_dir``.

A random init is reproducible for a given launch, but under DeepSpeed ZeRO-3 transformers builds the model inside
DeepSpeed's partitioned ``zero.Init``, whose random draws differ from a one-process init; continued pretraining from
a checkpoint is identical across launches (tested against one process under DDP and ZeRO-3).
"""

from __future__ import annotations

from trl import ModelConfig
from trl.trainer.utils import get_peft_config

from llmpost.config import check_launch, parse_config, run_main
from llmpost.data.pretrain import PretrainArguments, pretrain_splits
from llmpost.eval.lm_loss import pretrain_evaluator
from llmpost.models import init_model, load_model, load_tokenizer
from llmpost.pipeline import save_and_evaluate
from llmpost.trainers.reweight import ReweightConfig, ReweightTrainer
from llmpost.utils import check_output_dir


def build(argv=None):
    """Parse the config, load and split the corpus (errors before anything is written), build the trainer."""
    model_args, data_args, args = parse_config((ModelConfig, PretrainArguments, ReweightConfig), argv)
    check_launch(args)
    check_output_dir(args.output_dir, data_args.overwrite_output_dir or bool(args.resume_from_checkpoint))
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    train, validation = pretrain_splits(data_args, tokenizer)
    if data_args.model_config is None:  # continued pretraining
        model = load_model(model_args)
    else:  # from scratch
        model = init_model(model_args, data_args.model_config, args.seed)
    trainer = ReweightTrainer(model, args, train, tokenizer, eval_dataset=validation,
                              peft_config=get_peft_config(model_args))  # fmt: skip
    return trainer, pretrain_evaluator(validation)


def main(argv=None):
    trainer, evaluate = build(argv)
    trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    save_and_evaluate(trainer, evaluate)
    return trainer


if __name__ == "__main__":
    run_main(main)
