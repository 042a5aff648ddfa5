"""Fine-tune on MATH with DCO (pass@N confidence-limited fine-tuning, arXiv 2502.07154) or plain cross-entropy
(``--dco_n 1``), save, and evaluate pass@k on the test problems.

Launch (any scale; the accelerate config alone sets it):

    python recipes/dco_math.py --config configs/dco_math_tiny.yaml                       # CPU, synthetic arithmetic
    python recipes/dco_math.py --config configs/dco_math_tiny.yaml --dco_n 1 --output_dir out/ce_math_tiny   # CE
    python recipes/dco_math.py --config configs/dco_math_cot_tiny.yaml               # CPU, sampled p^ (dco_mode: cot)
    accelerate launch --config_file configs/accelerate/zero2.yaml recipes/dco_math.py --config configs/dco_math.yaml
    accelerate launch --config_file configs/accelerate/zero2.yaml recipes/dco_math.py --config configs/dco_math_cot.yaml

Training rows are prompt + target (``target: direct`` is the authors' ``$answer$``; ``solution`` the worked solution)
with the loss on the target and EOS only; ``dco_mode: cot`` rows also keep their generation prompt and gold answer (for
the sampled ``p^``). The CE baseline is the same recipe with ``dco_n: 1`` (the weight is then 1
and the answer-mode filter is off; in cot mode, whose N is already 1, with ``dco_filter: false``), so the two compare
at equal budget. Writes the model (or LoRA adapter) to ``output_dir`` and,
when ``eval_after_training``, ``output_dir/eval/MATH_EVAL.json`` + ``MATH_SUMMARY.json``.
"""

from __future__ import annotations

from trl import ModelConfig
from trl.trainer.utils import get_peft_config

from llmpost.benchmarks.math.data import MathArguments, tokenize_math
from llmpost.benchmarks.math.recipe import math_evaluator
from llmpost.config import check_launch, parse_config, run_main
from llmpost.models import load_model, load_tokenizer
from llmpost.pipeline import save_and_evaluate
from llmpost.trainers.dco import DCOConfig, DCOMode, DCOTrainer
from llmpost.utils import check_output_dir


def main(argv=None):
    model_args, data_args, args = parse_config((ModelConfig, MathArguments, DCOConfig), argv)
    check_launch(args)
    check_output_dir(args.output_dir, data_args.overwrite_output_dir or bool(args.resume_from_checkpoint))
    evaluate = math_evaluator(data_args)  # loads the test problems now: a bad file stops before training
    tokenizer = load_tokenizer(model_args.model_name_or_path, args.trust_remote_code)
    train = tokenize_math(data_args.problems("train"), tokenizer, data_args, data_args.target, args.max_length,
                          generation_columns=args.dco_mode == DCOMode.COT)  # cot samples from prompts, grades answers
    model = load_model(model_args, args.trust_remote_code)

    trainer = DCOTrainer(model, args, train, tokenizer, peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    save_and_evaluate(trainer, evaluate)


if __name__ == "__main__":
    run_main(main)
