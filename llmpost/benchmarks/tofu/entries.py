"""TOFU's entries (the table of :mod:`llmpost.benchmarks.tofu.evaluate`) from the per-answer statistics of the model
passes (:mod:`llmpost.benchmarks.tofu.scoring`), the ROUGE results and a retain model's log, with open-unlearning's
key names and aggregations (:mod:`llmpost.eval.metrics`, :mod:`llmpost.eval.mia`)."""

from __future__ import annotations

import logging
from typing import Any

from llmpost.eval import metrics as M
from llmpost.eval import mia

logger = logging.getLogger(__name__)

MIA_K = 0.4  # open-unlearning configs/eval/tofu_metrics/mia_min_k.yaml
PRIVLEAK_REF_VALUE = 0.5  # open-unlearning configs/eval/tofu_metrics/privleak.yaml: AUC used without a retain log


def assemble_entries(stats, rouges, retain_logs: dict[str, Any] | None, n_forget: int) -> dict[str, M.MetricResult]:
    """Every TOFU entry from the per-answer statistics, the ROUGE results and the retain log (may be ``None``)."""
    logs: dict[str, M.MetricResult] = {}
    for p in ("forget", "retain", "ra", "wf"):
        logs[f"{p}_Q_A_Prob"] = M.probability([s.avg_loss for s in stats[p]["answer"]])
        logs[f"{p}_Q_A_PERT_Prob"] = M.probability([[s.avg_loss for s in o] for o in stats[p]["perturbed_answer"]])
        if p in rouges:
            logs[f"{p}_Q_A_ROUGE"] = rouges[p]
    for p in ("forget", "retain"):
        logs[f"{p}_Q_A_PARA_Prob"] = M.probability([s.avg_loss for s in stats[p]["paraphrased_answer"]])
    tr = M.truth_ratio
    logs["forget_truth_ratio"] = tr(logs["forget_Q_A_PARA_Prob"], logs["forget_Q_A_PERT_Prob"], "closer_to_1_better")
    logs["retain_Truth_Ratio"] = tr(logs["retain_Q_A_PARA_Prob"], logs["retain_Q_A_PERT_Prob"], "true_better")
    for p in ("ra", "wf"):
        logs[f"{p}_Q_A_Prob_normalised"] = M.normalised_probability(logs[f"{p}_Q_A_Prob"], logs[f"{p}_Q_A_PERT_Prob"])
        logs[f"{p}_Truth_Ratio"] = tr(logs[f"{p}_Q_A_Prob"], logs[f"{p}_Q_A_PERT_Prob"], "true_better")
    logs["model_utility"] = M.model_utility({k: logs[k]["agg_value"] for k in M.MODEL_UTILITY_KEYS if k in logs})
    logs["extraction_strength"] = mia.extraction_strength([s.extraction_strength for s in stats["forget"]["answer"]])
    logs["exact_memorization"] = mia.exact_memorization([s.exact_memorization for s in stats["forget"]["answer"]])

    retain_scores = None
    if retain_logs is not None:
        retain_scores = [v["score"] for v in retain_logs["forget_truth_ratio"]["value_by_index"].values()]
        if len(retain_scores) != n_forget:
            logger.warning("forget_quality: the retain log has %d forget truth ratios, this evaluation %d; check that "
                           "both used the same forget split", len(retain_scores), n_forget)  # fmt: skip
    else:
        logger.warning("forget_quality is not computed (null): no retain_logs_path given")
    forget_scores = [v["score"] for v in logs["forget_truth_ratio"]["value_by_index"].values()]
    logs["forget_quality"] = M.forget_quality(forget_scores, retain_scores)

    if "holdout" in stats:
        forget_mk = [mia.min_k_score(s.token_logps, MIA_K) for s in stats["forget"]["answer"]]
        holdout_mk = [mia.min_k_score(s.token_logps, MIA_K) for s in stats["holdout"]["answer"]]
        logs["mia_min_k"] = mia.mia(forget_mk, holdout_mk)
        ref_entry = (retain_logs or {}).get("mia_min_k")
        ref = ref_entry.get("agg_value") if isinstance(ref_entry, dict) else None
        if ref is None:
            logger.warning("privleak: no mia_min_k in a retain log; relative to AUC %.1f instead", PRIVLEAK_REF_VALUE)
            ref = PRIVLEAK_REF_VALUE
        logs["privleak"] = mia.privleak(logs["mia_min_k"]["agg_value"], ref)
    return dict(sorted(logs.items()))
