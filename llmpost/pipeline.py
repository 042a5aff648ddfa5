"""The end of every recipe: save the model and its log history, then evaluate the saved model on every process with a
benchmark's :data:`~llmpost.eval.Evaluator` (each benchmark's factory is in ``llmpost.benchmarks.<name>.recipe``)."""

from __future__ import annotations

import json
import os
import shutil

from llmpost.eval import Evaluator
from llmpost.trainers.checkpoint_eval import evaluate_checkpoint
from llmpost.utils import atomic_write_json

LOG_HISTORY_FILE = "log_history.json"


def evaluate_saved(trainer, evaluate: Evaluator, eval_dir: str) -> dict | None:
    """Reload the model the trainer saved in ``args.output_dir`` and run ``evaluate`` on it on every process.

    Reloading (rather than evaluating the in-memory model) works the same after DDP, DeepSpeed ZeRO-3 (whose
    parameters are sharded in memory) and LoRA (merged for evaluation). Each process holds one full copy for
    evaluation and scores a shard of the examples; the main process writes the files. Returns the summary on the main
    process, ``None`` elsewhere.
    """
    summary = evaluate_checkpoint(trainer, evaluate, trainer.args.output_dir, eval_dir)
    return summary if trainer.is_world_process_zero() else None


def save_and_evaluate(trainer, evaluate: Evaluator | None, end_training: bool = True) -> dict | None:
    """End of a recipe: save the model (and tokenizer) and the trainer's log history (``log_history.json``, a list of
    the logged dicts) to ``output_dir``, evaluate it into ``output_dir/eval`` with
    ``evaluate`` (``None``: no evaluation), print the summary, and (``end_training``) shut the processes down cleanly.
    Returns the summary on the main process.

    A run that evaluated during training (``trainer.checkpoint_eval``) reuses the evaluation of its last step when
    there was one (the same weights), then selects the checkpoint it reports: ``output_dir/best`` and
    ``SELECTION.json`` (:meth:`~llmpost.trainers.checkpoint_eval.CheckpointEvaluation.finish`)."""
    trainer.save_model(trainer.args.output_dir)  # under ZeRO-3 this gathers the full weights; saves the tokenizer too
    if trainer.is_world_process_zero():  # the training curves, for reports and plots (trainer_state.json needs a checkpoint)
        atomic_write_json(os.path.join(trainer.args.output_dir, LOG_HISTORY_FILE), trainer.state.log_history)
    summary = None
    checkpoint_eval = getattr(trainer, "checkpoint_eval", None)
    if evaluate is not None:
        eval_dir = os.path.join(trainer.args.output_dir, "eval")
        done = checkpoint_eval.evaluations[-1] if checkpoint_eval and checkpoint_eval.evaluations else None
        if done is not None and done.step == trainer.state.global_step:  # the final weights were just evaluated
            if trainer.is_world_process_zero():
                shutil.rmtree(eval_dir, ignore_errors=True)
                shutil.copytree(os.path.join(done.checkpoint, "eval"), eval_dir)
            final = dict(done.summary)
        else:
            final = evaluate_checkpoint(trainer, evaluate, trainer.args.output_dir, eval_dir)
        summary = final if trainer.is_world_process_zero() else None
        if summary is not None:
            print(json.dumps(summary, indent=2))
        if checkpoint_eval is not None:
            selection = checkpoint_eval.finish(trainer, final, trainer.args.output_dir)
            if trainer.is_world_process_zero():
                print(selection.reason)
    trainer.accelerator.wait_for_everyone()
    if end_training:
        trainer.accelerator.end_training()
    return summary
