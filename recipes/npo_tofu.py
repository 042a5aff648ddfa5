"""Unlearn a TOFU forget split with NPO (or gradient ascent / difference, NPO+RT, SimNPO, FLAT, IdkDPO), save, evaluate.

Launch (any scale; the accelerate config alone sets it):

    python recipes/npo_tofu.py --config configs/npo_tofu_tiny.yaml                        # CPU, tiny model
    accelerate launch --config_file configs/accelerate/zero3.yaml recipes/npo_tofu.py --config configs/npo_tofu.yaml

Any config key can be overridden on the command line (``--beta 0.2 --method npo_rt``; ``--method flat
--flat_divergence js``; ``--method idk_dpo``, whose template answers default to ``data_dir/idontknow.jsonl``). Writes the model (or LoRA
adapter) to ``output_dir``, and ``output_dir/eval/TOFU_EVAL.json`` + ``TOFU_SUMMARY.json`` when
``eval_after_training`` (forget_quality needs ``retain_logs_path``).

Evaluation during training: ``--eval_strategy steps --eval_steps N`` (``--eval_on_start true`` adds the model before
unlearning) evaluates TOFU on each checkpoint as ``llmpost eval tofu`` would, logs the curves (``eval_*``) and, with
``--select max_forget_quality|pareto|last``, reports the chosen checkpoint in ``output_dir/best`` with
``SELECTION.json`` (:mod:`llmpost.trainers.checkpoint_eval`).
"""

from __future__ import annotations

from trl import ModelConfig
from trl.trainer.utils import get_peft_config

from llmpost.benchmarks.tofu.data import TofuArguments
from llmpost.benchmarks.tofu.recipe import tofu_evaluator, tofu_template_answers, tofu_train_splits
from llmpost.config import check_launch, parse_config, run_main
from llmpost.data.unlearn import ForgetRetainDataset
from llmpost.models import load_model, load_tokenizer
from llmpost.pipeline import save_and_evaluate
from llmpost.trainers.checkpoint_eval import plan_checkpoint_eval
from llmpost.trainers.rmu import RmuConfig, RmuTrainer
from llmpost.trainers.unlearn import NEEDS_TEMPLATES, UnlearnMethod, UnlearnTrainer, uses_retain
from llmpost.utils import check_output_dir


def main(argv=None):
    model_args, data_args, args = parse_config((ModelConfig, TofuArguments, RmuConfig), argv)  # UnlearnConfig + rmu_*
    check_launch(args)
    check_output_dir(args.output_dir, data_args.overwrite_output_dir or bool(args.resume_from_checkpoint))
    tokenizer = load_tokenizer(model_args.model_name_or_path, args.trust_remote_code)
    forget, retain = tofu_train_splits(data_args, tokenizer, args.max_length)
    templates = tofu_template_answers(data_args, tokenizer, args.max_length) if args.method in NEEDS_TEMPLATES else None
    evaluate = tofu_evaluator(data_args, tokenizer)  # checks the evaluation's inputs now, before training
    checkpoint_eval = plan_checkpoint_eval(args, evaluate, "tofu", data_args.retain_logs_path)
    seed = args.data_seed if args.data_seed is not None else args.seed
    dataset = ForgetRetainDataset(forget, retain if uses_retain(args) else None, seed=seed, templates=templates)
    model = load_model(model_args, args.trust_remote_code)

    trainer_cls = RmuTrainer if args.method == UnlearnMethod.RMU else UnlearnTrainer
    trainer = trainer_cls(model, args, dataset, tokenizer, peft_config=get_peft_config(model_args),
                          checkpoint_eval=checkpoint_eval)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    save_and_evaluate(trainer, evaluate)


if __name__ == "__main__":
    run_main(main)
