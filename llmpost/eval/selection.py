"""Checkpoint selection for unlearning runs that evaluate during training: which evaluated checkpoint a run reports,
and when to stop early. Pure functions over the evaluations' summaries (``{key: agg_value}``, as
``TOFU_SUMMARY.json`` / ``MUSE_SUMMARY.json`` hold them); the trainer side is :mod:`llmpost.trainers.checkpoint_eval`.

Rules (``select``):

* ``last``: the final model (llmpost's behaviour without selection).
* ``muse_bench``: MUSE's own rule (``swj0419/muse_bench``, README, ``get_best_forget_quality.py``): the *earliest*
  checkpoint whose forget memorization is at or below the retrained model's. The authors' script compares the forget
  KnowMem (``--metric mean_rougeL`` on the forget QA), llmpost's ``forget_knowmem_ROUGE``, which is the default of
  ``select_metrics``; ``select_metrics: [forget_knowmem_ROUGE, forget_verbmem_ROUGE]`` also requires VerbMem. Early
  stopping ends training at that checkpoint (the script likewise stops evaluating later ones). When none qualifies the
  last evaluation is reported, and the reason says so.
* ``max_forget_quality`` (TOFU): the highest ``forget_quality``; ties go to the earliest.
* ``pareto`` (TOFU): the highest ``forget_quality`` among the checkpoints whose ``model_utility`` is at least
  ``utility_fraction`` times the target's (the evaluation at step 0, before any unlearning); none qualifying, the
  last evaluation, with the reason.

Early stopping (``early_stop``): ``muse_bench`` stops at its first qualifying checkpoint; ``max_forget_quality`` and
``pareto`` stop after ``patience`` evaluations in a row without a new choice. ``last`` never stops early. An
evaluation at step 0 (``eval_on_start``) can be chosen but does not stop the run (Trainer's loop has begun).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from llmpost.utils import StrEnum


class SelectRule(StrEnum):
    LAST = "last"
    MUSE_BENCH = "muse_bench"
    MAX_FORGET_QUALITY = "max_forget_quality"
    PARETO = "pareto"


# What each rule needs: the benchmark it reads, and whether it needs the retain (retrained) model's logs.
RULE_BENCHMARKS = {SelectRule.MUSE_BENCH: "muse", SelectRule.MAX_FORGET_QUALITY: "tofu", SelectRule.PARETO: "tofu"}
MUSE_DEFAULT_METRICS = ("forget_knowmem_ROUGE",)


@dataclass
class Evaluation:
    """One evaluated checkpoint: the training step, the checkpoint directory and its benchmark summary."""

    step: int
    checkpoint: str
    summary: dict[str, float]
    epoch: float | None = None

    @classmethod
    def from_dict(cls, d: dict) -> Evaluation:
        return cls(step=int(d["step"]), checkpoint=str(d["checkpoint"]), summary=dict(d["summary"]), epoch=d.get("epoch"))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Selection:
    """The outcome of a rule over the evaluations so far: the chosen index (``None``: nothing evaluated), why, and
    whether training should stop."""

    index: int | None
    reason: str
    stop: bool = False
    details: dict = field(default_factory=dict)


def _value(ev: Evaluation, key: str) -> float | None:
    v = ev.summary.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _stall(evals: list[Evaluation], chosen: int | None, patience: int, early_stop: bool) -> bool:
    """Patience-based stop: ``patience`` evaluations after the chosen one (or since the start with none chosen)."""
    if not early_stop or patience <= 0 or not evals:
        return False
    since = len(evals) - 1 - (chosen if chosen is not None else -1)
    return since >= patience


def select(rule: SelectRule | str, evals: list[Evaluation], *, reference: dict[str, float] | None = None,
           metrics: tuple[str, ...] | None = None, utility_fraction: float = 0.9, early_stop: bool = False,
           patience: int = 3) -> Selection:  # fmt: skip
    """Apply ``rule`` to ``evals`` (in training order).

    Args:
        reference: for ``muse_bench``, the retrained model's summary values of ``metrics``.
        metrics: ``muse_bench``'s forget-memorization keys (default :data:`MUSE_DEFAULT_METRICS`).
        utility_fraction: ``pareto``'s bound, as a fraction of the step-0 (target) model utility.
        early_stop, patience: see the module docstring.
    """
    rule = SelectRule(rule)
    if not evals:
        return Selection(None, "no evaluation yet")
    last = len(evals) - 1
    if rule == SelectRule.LAST:
        return Selection(last, f"select: last -- the final evaluation (step {evals[last].step})")
    if rule == SelectRule.MUSE_BENCH:
        metrics = tuple(metrics or MUSE_DEFAULT_METRICS)
        if not reference or any(reference.get(m) is None for m in metrics):
            raise ValueError(f"select: muse_bench needs the retrained model's {list(metrics)} (retain_logs_path)")
        bounds = {m: float(reference[m]) for m in metrics}
        for i, ev in enumerate(evals):
            values = {m: _value(ev, m) for m in metrics}
            if all(v is not None and v <= bounds[m] for m, v in values.items()):
                shown = ", ".join(f"{m} {values[m]:.4g} <= {bounds[m]:.4g}" for m in metrics)
                return Selection(i, f"select: muse_bench -- the earliest checkpoint at or below the retrained model "
                                    f"(step {ev.step}: {shown})", stop=early_stop, details={"retrained": bounds})  # fmt: skip
        return Selection(last, f"select: muse_bench -- no checkpoint reached the retrained model's {list(metrics)} "
                               f"({bounds}); reporting the last evaluation (step {evals[last].step})",
                         details={"retrained": bounds})  # fmt: skip
    feasible = list(range(len(evals)))
    details: dict = {}
    if rule == SelectRule.PARETO:
        target = _value(evals[0], "model_utility")
        if evals[0].step != 0 or target is None:
            raise ValueError("select: pareto needs the target's model_utility from an evaluation at step 0 "
                             "(eval_on_start)")  # fmt: skip
        bound = utility_fraction * target
        details = {"target_model_utility": target, "utility_bound": bound, "utility_fraction": utility_fraction}
        feasible = [i for i, ev in enumerate(evals) if (_value(ev, "model_utility") or 0.0) >= bound]
    scored = [(i, _value(evals[i], "forget_quality")) for i in feasible]
    scored = [(i, v) for i, v in scored if v is not None]
    if not scored:
        why = ("no checkpoint keeps model_utility >= "
               f"{utility_fraction:g} x the target's ({details.get('utility_bound', float('nan')):.4g})"
               if rule == SelectRule.PARETO else "no evaluation has a forget_quality (retain_logs_path)")  # fmt: skip
        return Selection(last, f"select: {rule} -- {why}; reporting the last evaluation (step {evals[last].step})",
                         stop=_stall(evals, None, patience, early_stop), details=details)  # fmt: skip
    best = max(v for _, v in scored)
    chosen = min(i for i, v in scored if v == best)  # ties: the earliest
    ev = evals[chosen]
    why = f"the highest forget_quality ({best:.4g} at step {ev.step})"
    if rule == SelectRule.PARETO:
        why += f" among checkpoints with model_utility >= {details['utility_bound']:.4g} ({utility_fraction:g} x the target's)"
    return Selection(chosen, f"select: {rule} -- {why}", stop=_stall(evals, chosen, patience, early_stop),
                     details=details)  # fmt: skip


def check_rule(rule: SelectRule | str, benchmark: str, *, has_retain_logs: bool) -> SelectRule:
    """Before training: the rule exists, the benchmark can compute it, and the retain logs it needs are given.
    ValueError naming the key otherwise."""
    from llmpost.utils import parse_enum

    rule = parse_enum("select", rule, SelectRule)
    need = RULE_BENCHMARKS.get(rule)
    if need is not None and benchmark != need:
        raise ValueError(f"select: {rule} is a {need.upper()} rule; this run evaluates {benchmark.upper()}")
    if need is not None and not has_retain_logs:
        what = "the retrained model's MUSE_EVAL.json" if need == "muse" else "the retain model's TOFU_EVAL.json"
        raise ValueError(f"select: {rule} needs retain_logs_path ({what}) to compute its metric; it is not set")
    return rule
