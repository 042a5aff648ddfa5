"""DPO and IPO baselines with stock TRL (``trl.DPOTrainer``; ``loss_type: ipo`` for IPO) on the same preference data,
templates and held-out evaluation as ``recipes/srpo.py``, so the three compare at equal budget.

    python recipes/dpo.py --config configs/preference/dpo_tofu_tiny.yaml
    python recipes/dpo.py --config configs/preference/dpo_tofu_tiny.yaml --loss_type ipo --output_dir runs/ipo_tofu_tiny
    accelerate launch --config_file configs/accelerate/zero2.yaml recipes/dpo.py --config configs/preference/dpo_tldr.yaml

The prompt column is formatted with ``prompt_template`` and each completion gets ``completion_prefix``
(:func:`llmpost.data.preference.format_for_trl`); TRL tokenises and appends EOS as llmpost's trainers do. The
reference is TRL's (a frozen copy of the starting model, or the LoRA base). The DPO model is evaluated through the
same self-revision loop as SRPO's (it was not trained to revise; the paper does the same).
"""

from __future__ import annotations

from trl import DPOConfig, DPOTrainer, ModelConfig
from trl.trainer.utils import get_peft_config

from llmpost.benchmarks.preference.data import PreferenceArguments
from llmpost.benchmarks.preference.evaluate import preference_evaluator
from llmpost.config import check_launch, parse_config, run_main
from llmpost.data.preference import format_for_trl
from llmpost.models import load_model, load_tokenizer
from llmpost.pipeline import save_and_evaluate
from llmpost.utils import check_output_dir


def main(argv=None, end_training: bool = True):
    model_args, data_args, args = parse_config((ModelConfig, PreferenceArguments, DPOConfig), argv)
    check_launch(args)
    check_output_dir(args.output_dir, data_args.overwrite_output_dir or bool(args.resume_from_checkpoint))
    train, heldout = data_args.splits()
    tokenizer = load_tokenizer(model_args.model_name_or_path, args.trust_remote_code)
    model = load_model(model_args, args.trust_remote_code)
    evaluate = preference_evaluator(data_args, heldout, model, tokenizer, args.max_length or 1024,
                                    args.per_device_eval_batch_size)
    trainer = DPOTrainer(model, args=args, train_dataset=format_for_trl(train, data_args.templates()),
                         processing_class=tokenizer, peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    return save_and_evaluate(trainer, evaluate, end_training=end_training)


if __name__ == "__main__":
    run_main(main)
