"""TOFU in the recipes: tokenised forget/retain splits, template answers (FLAT, IdkDPO) and the evaluator of a saved
model."""

from __future__ import annotations

from pathlib import Path

from llmpost.benchmarks.tofu.data import TofuArguments, first_authors, load_split, tokenize_qa
from llmpost.data.templates import TemplateArgs, encode_qa
from llmpost.data.unlearn import TemplateAnswers, load_template_answers
from llmpost.eval import Evaluator
from llmpost.utils import DataError


def tofu_train_splits(data_args: TofuArguments, tokenizer, max_length: int, include_forget: bool = True):
    """Tokenised ``(forget, retain)`` splits; retain limited to ``num_retain_authors`` when set."""
    template = TemplateArgs.from_obj(data_args)
    retain = first_authors(load_split(data_args.retain_split, data_args.data_dir), data_args.num_retain_authors)
    retain = tokenize_qa(retain, tokenizer, template, max_length)
    forget = None
    if include_forget:
        forget = tokenize_qa(load_split(data_args.forget_split, data_args.data_dir), tokenizer, template, max_length)
    return forget, retain


class _QuestionWithAnswer:
    """Picklable ``encode_fn`` for :class:`TemplateAnswers`: forget row ``i``'s question with a given answer."""

    def __init__(self, tokenizer, template: TemplateArgs, questions: list[str], max_length: int):
        self.tokenizer, self.template, self.questions, self.max_length = tokenizer, template, questions, max_length

    def __call__(self, row: int, answer: str) -> dict:
        return encode_qa(self.tokenizer, self.template, self.questions[row], answer, self.max_length)


def tofu_template_answers(data_args: TofuArguments, tokenizer, max_length: int) -> TemplateAnswers:
    """Template answers (FLAT, IdkDPO) for the forget split: ``template_answers_path``, by default TOFU's
    ``idontknow.jsonl`` in ``data_dir``; each is tokenised as the answer to the forget row's question."""
    path = data_args.template_answers_path
    if path is None:
        if not data_args.data_dir:
            raise DataError("template_answers_path: not set (FLAT, IdkDPO and AltPO need template answers, e.g. TOFU's "
                            "idontknow.jsonl, one refusal per line)")
        path = str(Path(data_args.data_dir) / "idontknow.jsonl")
    questions = list(load_split(data_args.forget_split, data_args.data_dir)["question"])
    encode = _QuestionWithAnswer(tokenizer, TemplateArgs.from_obj(data_args), questions, max_length)
    return TemplateAnswers(load_template_answers(path), encode)


def tofu_evaluator(data_args: TofuArguments, tokenizer=None) -> Evaluator:
    """The TOFU evaluation of a recipe's saved model, as an :data:`Evaluator`. Its inputs (the evaluated splits, the
    retain model's log, and with ``tokenizer`` the Reference attack's model) are checked now, so that a bad input stops
    the recipe before training."""
    if data_args.eval_after_training:
        if tokenizer is not None and data_args.mia_reference_model_path:
            from llmpost.eval.mia_passes import check_reference_tokenizer

            check_reference_tokenizer(tokenizer, data_args.mia_reference_model_path)  # a DataError naming the key
        from llmpost.benchmarks.tofu.data import load_tofu_eval_splits
        from llmpost.benchmarks.tofu.evaluate import load_retain_logs

        load_tofu_eval_splits(data_args.data_dir, data_args.forget_split, None, data_args.eval_max_examples)
        if data_args.retain_logs_path:
            try:
                load_retain_logs(data_args.retain_logs_path)
            except ValueError as e:  # RetainLogError
                raise DataError(f"retain_logs_path: {e}") from None

    def evaluate(model, tokenizer, args, eval_dir: str) -> dict:
        from llmpost.benchmarks.tofu.evaluate import TofuEvalSettings, evaluate_tofu

        settings = TofuEvalSettings(
            data_dir=data_args.data_dir, forget_split=data_args.forget_split, template=TemplateArgs.from_obj(data_args),
            batch_size=args.per_device_eval_batch_size, max_length=args.max_length,
            max_new_tokens=data_args.eval_max_new_tokens, max_examples=data_args.eval_max_examples,
            mia_reference_model_path=data_args.mia_reference_model_path,
        )  # fmt: skip
        return evaluate_tofu(model, tokenizer, settings, output_dir=eval_dir,
                             retain_logs_path=data_args.retain_logs_path)  # fmt: skip

    return evaluate if data_args.eval_after_training else None
