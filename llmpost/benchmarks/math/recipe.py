"""MATH in the recipes: the evaluator of a saved model and held-out learning curves during training."""

from __future__ import annotations

from typing import TYPE_CHECKING

import transformers

from llmpost.eval import Evaluator

if TYPE_CHECKING:
    from llmpost.benchmarks.math.evaluate import MathEvalSettings


def math_evaluator(data_args) -> Evaluator | None:
    """pass@k on the configured MATH (or synthetic arithmetic) test problems, as an :data:`Evaluator`; ``data_args``
    is a :class:`llmpost.benchmarks.math.data.MathArguments`. The problems are loaded now, so a bad file stops the recipe before
    training."""
    if not data_args.eval_after_training:
        return None
    problems = data_args.problems("test")

    def evaluate(model, tokenizer, args, eval_dir: str) -> dict:
        from llmpost.benchmarks.math.evaluate import MathEvalSettings, evaluate_math

        # The prompt truncation length: the SFT/DCO config's max_length; GRPO's config has none (prompts are short).
        settings = MathEvalSettings(
            num_samples=data_args.eval_num_samples, temperature=data_args.eval_temperature, top_p=data_args.eval_top_p,
            max_new_tokens=data_args.eval_max_new_tokens, seed=data_args.eval_seed,
            batch_size=args.per_device_eval_batch_size, max_length=getattr(args, "max_length", None) or 2048,
            backend=data_args.generation_backend, max_problems=data_args.eval_max_problems,
        )  # fmt: skip
        vllm_model = args.output_dir if data_args.generation_backend == "vllm" else None
        return evaluate_math(model, tokenizer, problems, data_args, settings, output_dir=eval_dir,
                             vllm_model=vllm_model)  # fmt: skip

    return evaluate


class HeldOutMathCallback(transformers.TrainerCallback):
    """Learning curves on held-out MATH (or arithmetic) problems: before the first step and every ``every`` optimizer
    steps, sample ``settings.num_samples`` completions per problem from the model being trained, grade them with
    ``math_grading.is_correct`` (the clean checker), and log ``heldout/pass@1`` (mean over problems of the fraction
    correct) and ``heldout/pass@1_stderr`` (its standard error across problems) at that step.

    Runs on every process (problems sharded, as in ``evaluate_math``); the parameters are gathered for generation
    under ZeRO-3 (``trl.models.unwrap_model_for_generation``). The entry goes through ``transformers.Trainer.log``,
    not a subclass's ``log``, so that trainers that average their own metrics per logging interval (TRL's GRPO) keep
    their cadence. Sampling is seeded (``settings.seed``, the same at every evaluation), so two runs are compared on the
    same random stream.
    """

    def __init__(self, trainer, problems, template, every: int, settings: MathEvalSettings):
        if every < 1 or settings.num_samples < 1:
            raise ValueError(f"every and num_samples must be >= 1, got every={every}, "
                             f"num_samples={settings.num_samples}")  # fmt: skip
        self.trainer, self.problems, self.template, self.every = trainer, list(problems), template, every
        self.settings = settings

    def evaluate(self) -> dict:
        from trl.models import unwrap_model_for_generation

        from llmpost.benchmarks.math.evaluate import evaluate_math

        trainer = self.trainer
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
            was_training = model.training
            model.eval()
            try:
                summary = evaluate_math(model, trainer.processing_class, self.problems, self.template, self.settings)
            finally:
                model.train(was_training)
        p1 = summary["pass@k"]["1"]
        logs = {"heldout/pass@1": p1["mean"], "heldout/pass@1_stderr": p1["stderr"]}
        should_log = trainer.control.should_log  # the handler's on_log clears it: keep this step's regular log
        transformers.Trainer.log(trainer, logs)
        trainer.control.should_log = should_log
        return logs

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self.evaluate()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.evaluate()
