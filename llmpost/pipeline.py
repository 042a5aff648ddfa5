"""Steps the TOFU recipes share: tokenised splits, saving, and evaluating the saved model (on every process)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .data.files import DataError
from .data.tofu import TemplateArgs, TofuArguments, encode_qa, first_authors, load_split, tokenize_qa
from .data.unlearn import TemplateAnswers, load_template_answers


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
            raise DataError("template_answers_path: not set (FLAT and IdkDPO need template answers, e.g. TOFU's "
                            "idontknow.jsonl, one refusal per line)")
        path = str(Path(data_args.data_dir) / "idontknow.jsonl")
    questions = list(load_split(data_args.forget_split, data_args.data_dir)["question"])
    encode = _QuestionWithAnswer(tokenizer, TemplateArgs.from_obj(data_args), questions, max_length)
    return TemplateAnswers(load_template_answers(path), encode)


def evaluate_saved(trainer, data_args: TofuArguments, eval_dir: str) -> dict | None:
    """Reload the model the trainer saved in ``args.output_dir`` and run the TOFU evaluation on every process.

    Reloading (rather than evaluating the in-memory model) works the same after DDP, DeepSpeed ZeRO-3 (whose
    parameters are sharded in memory) and LoRA (merged for evaluation). Each process holds one full copy for
    evaluation and scores a shard of the examples; the main process writes the files. Returns the summary on the main
    process, ``None`` elsewhere.
    """
    from .eval.tofu import evaluate_tofu
    from .models import load_saved_model

    trainer.accelerator.wait_for_everyone()
    model = load_saved_model(trainer.args.output_dir).to(trainer.args.device)
    summary = evaluate_tofu(
        model,
        trainer.processing_class,
        data_dir=data_args.data_dir,
        forget_split=data_args.forget_split,
        template=TemplateArgs.from_obj(data_args),
        batch_size=trainer.args.per_device_eval_batch_size,
        max_length=trainer.args.max_length,
        max_new_tokens=data_args.eval_max_new_tokens,
        retain_logs_path=data_args.retain_logs_path,
        output_dir=eval_dir,
        max_examples=data_args.eval_max_examples,
    )
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trainer.accelerator.wait_for_everyone()
    return summary if trainer.is_world_process_zero() else None


def save_and_evaluate(trainer, data_args: TofuArguments) -> None:
    """End of a TOFU recipe: save the model (and tokenizer) to ``output_dir``, evaluate it into ``output_dir/eval``
    when ``eval_after_training``, print the summary, and shut the processes down cleanly."""
    trainer.save_model(trainer.args.output_dir)  # under ZeRO-3 this gathers the full weights; saves the tokenizer too
    if data_args.eval_after_training:
        summary = evaluate_saved(trainer, data_args, os.path.join(trainer.args.output_dir, "eval"))
        if summary is not None:
            print(json.dumps(summary, indent=2))
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
