"""A pass-through to lm-evaluation-harness's ``simple_evaluate`` on a llmpost checkpoint.

The checkpoint (full weights, or a PEFT adapter merged into its base with :func:`llmpost.models.load_saved_model`) is
loaded by llmpost and handed to lm-eval as a model object, ``HFLM(pretrained=model, tokenizer=tokenizer)``; lm-eval
then builds its prompts, scores them and aggregates as it always does. Its tasks load their datasets from the hub
(or from ``include_path``, a folder of task YAMLs that may point at local files).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from llmpost.utils import atomic_write_text

logger = logging.getLogger(__name__)

RESULTS_FILE = "LM_EVAL_RESULTS.json"
EXTRA_HINT = "pip install 'llmpost[lm-eval]'"


class LmEvalMissing(ImportError):
    """lm-evaluation-harness is not installed."""


def import_lm_eval():
    """The ``lm_eval`` module, or :class:`LmEvalMissing` naming the extra that installs it."""
    try:
        import lm_eval
        import lm_eval.models.huggingface  # noqa: F401
        import lm_eval.tasks  # noqa: F401
    except ImportError as e:
        raise LmEvalMissing(f"lm-evaluation-harness is not installed ({e}); install the extra: {EXTRA_HINT}") from e
    return lm_eval


@dataclass(frozen=True)
class LmEvalSettings:
    """What :func:`run_lm_eval` asks lm-eval for (``None``: lm-eval's default)."""

    tasks: tuple[str, ...]
    num_fewshot: int | None = None
    batch_size: int = 8
    limit: int | None = None
    include_path: str | None = None
    max_length: int | None = None
    log_samples: bool = False


def run_lm_eval(model, tokenizer, settings: LmEvalSettings, output_dir: str | Path | None = None) -> dict:
    """``lm_eval.simple_evaluate`` on the loaded ``model``; writes its results (JSON, lm-eval's own layout) to
    ``output_dir/LM_EVAL_RESULTS.json`` if given; returns them."""
    lm_eval = import_lm_eval()
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size, max_length=settings.max_length)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=list(settings.tasks), num_fewshot=settings.num_fewshot, limit=settings.limit,
        task_manager=TaskManager(include_path=settings.include_path), log_samples=settings.log_samples,
    )  # fmt: skip
    if results is None:  # lm-eval returns None on ranks other than 0
        return {}
    if output_dir is not None:
        text = json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)
        atomic_write_text(Path(output_dir) / RESULTS_FILE, text + "\n")
        logger.info("lm-eval results written to %s", Path(output_dir) / RESULTS_FILE)
    return results
