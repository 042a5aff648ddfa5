"""Benchmark evaluation during training, and the checkpoint a run reports (issue 18).

With ``eval_strategy: steps`` (``eval_steps``) or ``epoch`` -- and ``eval_on_start`` for the model before training --
an llmpost trainer given a :class:`CheckpointEvaluation` replaces ``Trainer.evaluate`` by the benchmark: at each
evaluation it saves the model to ``output_dir/checkpoint-<step>`` (under ZeRO-3 this gathers the full weights, as
every save does), reloads it on every process and runs the benchmark's :data:`~llmpost.eval.Evaluator` on it, sharded
over the processes, into ``checkpoint-<step>/eval/``. That is the same load and the same code as
``llmpost eval <bench> --model_name_or_path output_dir/checkpoint-<step>``, so the numbers are those of a standalone
evaluation of the checkpoint (tested, on one and on two processes). The random-number states are saved before and
restored after, so evaluating does not change the training run (tested: the same weights with and without).

Each evaluation's summary is logged as ``eval_<key>`` (so ``log_history.json`` holds the curves, and ``report_to``
trackers get them as ``eval/<key>``), recorded in ``output_dir/SELECTION.json`` (``status: running``; read back on
``resume_from_checkpoint``, keeping the evaluations up to the resumed step), and the selection rule
(:mod:`llmpost.eval.selection`) is applied: it may stop training early. A checkpoint written only for evaluation
(no ``trainer_state.json``) keeps its ``eval/`` but loses its weights once the rule can no longer choose it.

At the end (:func:`llmpost.pipeline.save_and_evaluate`) the final model is one more candidate (its evaluation reused
when the last step was already evaluated), the rule picks one, and :meth:`CheckpointEvaluation.finish` links (or
copies) its model files and ``eval/`` into ``output_dir/best`` and writes ``SELECTION.json`` (``status: final``, the
rule, the reason, every evaluation) into ``output_dir`` and ``output_dir/best``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from llmpost.config import ConfigError
from llmpost.eval import Evaluator
from llmpost.eval.selection import Evaluation, SelectRule, select
from llmpost.utils import atomic_write_json

logger = logging.getLogger(__name__)

SELECTION_FILE = "SELECTION.json"
BEST_DIR = "best"
EVAL_DIR = "eval"
# What a checkpoint directory holds beyond the model: training state, not needed to use or evaluate the model.
_TRAINING_STATE = ("optimizer", "scheduler", "rng_state", "global_step", "trainer_state.json", "training_args.bin",
                   "zero_to_fp32.py", "latest", "scaler.pt")  # fmt: skip
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class SelectionSettings:
    """The rule and its parameters (:func:`llmpost.eval.selection.select`), and the benchmark's name."""

    benchmark: str
    rule: SelectRule = SelectRule.LAST
    metrics: tuple[str, ...] | None = None
    utility_fraction: float = 0.9
    early_stop: bool = False
    patience: int = 3
    reference: dict[str, float] | None = field(default=None, repr=False)

    def describe(self) -> dict:
        return {"benchmark": self.benchmark, "select": str(self.rule), "select_metrics": list(self.metrics or []),
                "select_utility_fraction": self.utility_fraction, "select_early_stop": self.early_stop,
                "select_patience": self.patience, "reference": self.reference}  # fmt: skip


def summary_from_logs(path: str | os.PathLike) -> dict[str, float]:
    """``{key: agg_value}`` of a benchmark's ``*_EVAL.json`` (ours or open-unlearning's): the reference of a rule."""
    logs = json.loads(Path(path).read_text())
    return {k: v["agg_value"] for k, v in logs.items() if isinstance(v, dict) and isinstance(v.get("agg_value"), (int, float))}


def evaluate_checkpoint(trainer, evaluate: Evaluator, model_dir: str, eval_dir: str) -> dict | None:
    """Reload the model saved in ``model_dir`` and run ``evaluate`` on it on every process (each holds one full copy
    and scores a shard); the main process writes the files into ``eval_dir``. Returns the summary on every process
    (rank 0's, broadcast)."""
    from accelerate.utils import broadcast_object_list

    from llmpost.models import load_saved_model

    trainer.accelerator.wait_for_everyone()
    with _full_weights_load():
        model = load_saved_model(model_dir).to(trainer.args.device)
    summary = evaluate(model, trainer.processing_class, trainer.args, eval_dir)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.num_processes > 1:
        box = [summary]
        broadcast_object_list(box, from_process=0)
        summary = box[0]
    return summary


@contextlib.contextmanager
def _full_weights_load():
    """While DeepSpeed ZeRO-3 trains, ``from_pretrained`` would partition a model it loads (``zero.Init``); the
    evaluation copy must hold its full weights on each process, so the ZeRO-3 config is hidden while it loads."""
    from transformers.integrations import deepspeed as hf_ds

    ref = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = ref


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _is_training_state(name: str) -> bool:
    return any(name == p or name.startswith(p) for p in _TRAINING_STATE)


def _drop_weights(checkpoint: Path) -> None:
    """Remove the model weights of an evaluation-only checkpoint (its ``eval/`` and config stay)."""
    for p in checkpoint.iterdir():
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and not _is_training_state(p.name):
            p.unlink()


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def export_model_dir(src: Path, dst: Path) -> None:
    """``dst`` := the model files of ``src`` (hard links where possible, else copies) and its ``eval/``; no training
    state. Built beside ``dst`` and moved into place, so ``dst`` is never half-written."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file() and not _is_training_state(p.name):
            _link_or_copy(p, tmp / p.name)
    if (src / EVAL_DIR).is_dir():
        shutil.copytree(src / EVAL_DIR, tmp / EVAL_DIR, copy_function=_link_or_copy)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


class CheckpointEvaluation:
    """Evaluate the benchmark at checkpoints during training and select the one the run reports (module docstring)."""

    def __init__(self, evaluate: Evaluator, settings: SelectionSettings):
        if evaluate is None:
            raise ConfigError(f"eval_strategy: evaluation during training needs the {settings.benchmark.upper()} "
                             "evaluation (eval_after_training: true and its data), which this run does not have")  # fmt: skip
        self.evaluate, self.settings = evaluate, settings
        self.evaluations: list[Evaluation] = []
        self.stopped_early = False

    # -- state --------------------------------------------------------------------------------------------------------
    def resume(self, output_dir: str, step: int) -> None:
        """Read back the evaluations up to ``step`` from ``output_dir/SELECTION.json`` (a resumed run)."""
        path = Path(output_dir) / SELECTION_FILE
        if not path.is_file():
            return
        record = json.loads(path.read_text())
        self.evaluations = [Evaluation.from_dict(e) for e in record.get("evaluations", []) if int(e["step"]) <= step]
        logger.info("resumed %d evaluation(s) up to step %d from %s", len(self.evaluations), step, path)

    def current(self, stop_allowed: bool = True):
        s = self.settings
        return select(s.rule, self.evaluations, reference=s.reference, metrics=s.metrics,
                      utility_fraction=s.utility_fraction, early_stop=s.early_stop and stop_allowed,
                      patience=s.patience)  # fmt: skip

    def _write_record(self, trainer, selection, status: str, paths: list[Path]) -> None:
        if not trainer.is_world_process_zero():
            return
        chosen = self.evaluations[selection.index].to_dict() if selection.index is not None else None
        record = {"status": status, **self.settings.describe(), "chosen": chosen, "reason": selection.reason,
                  "details": selection.details, "stopped_early": self.stopped_early,
                  "evaluations": [e.to_dict() for e in self.evaluations]}  # fmt: skip
        for path in paths:
            atomic_write_json(path / SELECTION_FILE, record)

    # -- during training ----------------------------------------------------------------------------------------------
    def run(self, trainer) -> dict[str, float]:
        """One evaluation at the trainer's current step (called from ``evaluate``); returns ``{eval_<key>: value}``."""
        step, t0 = trainer.state.global_step, time.perf_counter()
        checkpoint = Path(trainer.args.output_dir) / f"checkpoint-{step}"
        rng = _rng_state()
        trainer.save_model(str(checkpoint))
        summary = evaluate_checkpoint(trainer, self.evaluate, str(checkpoint), str(checkpoint / EVAL_DIR))
        _set_rng_state(rng)
        self.evaluations = [e for e in self.evaluations if e.step != step]
        self.evaluations.append(Evaluation(step, str(checkpoint), dict(summary or {}), trainer.state.epoch))
        selection = self.current()
        # save_total_limit's rotation keeps Trainer's best_model_checkpoint: the chosen checkpoint survives it
        trainer.state.best_model_checkpoint = self.evaluations[selection.index].checkpoint
        if trainer.is_world_process_zero():
            for e in self.evaluations:
                path = Path(e.checkpoint)
                if (e is not self.evaluations[selection.index] and path.name.startswith("checkpoint-")
                        and path.is_dir() and not (path / "trainer_state.json").exists()):  # fmt: skip
                    _drop_weights(path)
        if selection.stop and step > 0:  # at step 0 (eval_on_start) Trainer's loop has begun: the choice stands
            self.stopped_early = True
            trainer.control.should_training_stop = True
            logger.info("early stop at step %d: %s", step, selection.reason)
        self._write_record(trainer, selection, "running", [Path(trainer.args.output_dir)])
        metrics = {f"eval_{k}": v for k, v in (summary or {}).items() if isinstance(v, (int, float))}
        metrics["eval_runtime"] = round(time.perf_counter() - t0, 4)
        logger.info("%s at step %d in %.1fs: %s", self.settings.benchmark.upper(), step, metrics["eval_runtime"],
                    {k: round(v, 6) for k, v in metrics.items()})  # fmt: skip
        return metrics

    # -- at the end ---------------------------------------------------------------------------------------------------
    def last_evaluated_step(self) -> int | None:
        return self.evaluations[-1].step if self.evaluations else None

    def finish(self, trainer, final_summary: dict | None, final_dir: str):
        """Add the final model (``final_dir``, evaluated into ``final_dir/eval``) unless its step was evaluated, apply
        the rule, export the chosen model to ``output_dir/best`` and write ``SELECTION.json``. Returns the
        :class:`~llmpost.eval.selection.Selection` (on every process)."""
        step = trainer.state.global_step
        if self.last_evaluated_step() != step:
            self.evaluations.append(Evaluation(step, str(final_dir), dict(final_summary or {}), trainer.state.epoch))
        selection = self.current(stop_allowed=False)
        if trainer.is_world_process_zero():
            out = Path(trainer.args.output_dir)
            chosen = self.evaluations[selection.index]
            source = Path(chosen.checkpoint)
            if chosen.step == step and not any(source.glob("*.safetensors")) and not any(source.glob("*.bin")):
                source = Path(final_dir)  # the last step's checkpoint was pruned or is the final model itself
            export_model_dir(source, out / BEST_DIR)
            self._write_record(trainer, selection, "final", [out, out / BEST_DIR])
            logger.info("%s (output_dir/%s)", selection.reason, BEST_DIR)
        trainer.accelerator.wait_for_everyone()
        return selection


def plan_checkpoint_eval(args, evaluate: Evaluator | None, benchmark: str,
                         retain_logs_path: str | None) -> CheckpointEvaluation | None:  # fmt: skip
    """Before anything is built or written: the :class:`CheckpointEvaluation` of a run whose ``eval_strategy`` is not
    ``no`` (``None`` otherwise), its rule checked against the benchmark and the retain logs. An error naming the key
    (``eval_strategy``, ``select``, ``select_metrics``, ``retain_logs_path``) otherwise: a
    :class:`~llmpost.config.ConfigError`, which recipes print as one line."""
    from llmpost.eval.selection import MUSE_DEFAULT_METRICS, check_rule

    rule = getattr(args, "select", SelectRule.LAST)
    if args.eval_strategy == "no":
        return None
    try:
        rule = check_rule(rule, benchmark, has_retain_logs=bool(retain_logs_path))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    metrics = getattr(args, "select_metric_keys", None)
    reference = None
    if rule == SelectRule.MUSE_BENCH:
        path = Path(retain_logs_path)
        if not path.is_file():
            raise ConfigError(f"retain_logs_path: {str(path)!r} does not exist (select: muse_bench reads the retrained "
                             "model's MUSE_EVAL.json)")  # fmt: skip
        reference = summary_from_logs(path)
        missing = [m for m in (metrics or MUSE_DEFAULT_METRICS) if m not in reference]
        if missing:
            raise ConfigError(f"select_metrics: {missing} not in the retrained model's logs {str(path)!r} "
                             f"(it has {sorted(reference)})")  # fmt: skip
    settings = SelectionSettings(benchmark=benchmark, rule=rule, metrics=metrics,
                                 utility_fraction=getattr(args, "select_utility_fraction", 0.9),
                                 early_stop=getattr(args, "select_early_stop", False),
                                 patience=getattr(args, "select_patience", 3), reference=reference)  # fmt: skip
    return CheckpointEvaluation(evaluate, settings)
