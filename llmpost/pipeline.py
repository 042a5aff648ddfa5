"""The end of every recipe: save the model and its log history, then evaluate the saved model on every process with a
benchmark's :data:`~llmpost.eval.Evaluator` (each benchmark's factory is in ``llmpost.benchmarks.<name>.recipe``)."""

from __future__ import annotations

import json
import os

import torch

from llmpost.eval import Evaluator
from llmpost.utils import atomic_write_json

LOG_HISTORY_FILE = "log_history.json"


def evaluate_saved(trainer, evaluate: Evaluator, eval_dir: str) -> dict | None:
    """Reload the model the trainer saved in ``args.output_dir`` and run ``evaluate`` on it on every process.

    Reloading (rather than evaluating the in-memory model) works the same after DDP, DeepSpeed ZeRO-3 (whose
    parameters are sharded in memory) and LoRA (merged for evaluation). Each process holds one full copy for
    evaluation and scores a shard of the examples; the main process writes the files. Returns the summary on the main
    process, ``None`` elsewhere.
    """
    from llmpost.models import load_saved_model

    trainer.accelerator.wait_for_everyone()
    model = load_saved_model(trainer.args.output_dir).to(trainer.args.device)
    summary = evaluate(model, trainer.processing_class, trainer.args, eval_dir)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trainer.accelerator.wait_for_everyone()
    return summary if trainer.is_world_process_zero() else None


def save_and_evaluate(trainer, evaluate: Evaluator | None, end_training: bool = True) -> dict | None:
    """End of a recipe: save the model (and tokenizer) and the trainer's log history (``log_history.json``, a list of
    the logged dicts) to ``output_dir``, evaluate it into ``output_dir/eval`` with
    ``evaluate`` (``None``: no evaluation), print the summary, and (``end_training``) shut the processes down cleanly.
    Returns the summary on the main process."""
    trainer.save_model(trainer.args.output_dir)  # under ZeRO-3 this gathers the full weights; saves the tokenizer too
    if trainer.is_world_process_zero():  # the training curves, for reports and plots (trainer_state.json needs a checkpoint)
        atomic_write_json(os.path.join(trainer.args.output_dir, LOG_HISTORY_FILE), trainer.state.log_history)
    summary = None
    if evaluate is not None:
        summary = evaluate_saved(trainer, evaluate, os.path.join(trainer.args.output_dir, "eval"))
        if summary is not None:
            print(json.dumps(summary, indent=2))
    trainer.accelerator.wait_for_everyone()
    if end_training:
        trainer.accelerator.end_training()
    return summary


