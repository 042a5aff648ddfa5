"""NPO: Negative Preference Optimization (Zhang, Lin, Bai, Mei, 2024; arXiv 2404.05868).

The forget loss treats every forget answer as a *rejected* response with no chosen one: the DPO loss with the
chosen term dropped. The trainer is :class:`llmpost.trainers.unlearn.UnlearnTrainer` with ``method: npo`` (or
``npo_rt`` for NPO plus a retain-set NLL term, the paper's "NPO+RT").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def npo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    r"""Per-example NPO loss.

    .. math::
        \mathcal{L}_{\mathrm{NPO}} = \frac{2}{\beta}\log\Big(1 + \big(\tfrac{\pi_\theta(y|x)}{\pi_{\mathrm{ref}}(y|x)}\big)^{\beta}\Big)
                                   = \frac{2}{\beta}\,\mathrm{softplus}\big(\beta(\log\pi_\theta(y|x) - \log\pi_{\mathrm{ref}}(y|x))\big)

    (arXiv 2404.05868, Eq. 3). As ``beta -> 0`` the gradient tends to that of gradient ascent on ``log pi_theta``
    (the loss itself tends to ``2 log 2 / beta + (logp - ref)``); it is bounded below by 0 and its gradient weight
    ``2 sigma(beta * delta)`` vanishes once the forget answer is unlikely, which is what makes NPO slower to collapse
    than gradient ascent.

    Args:
        policy_logps: ``(B,)`` log-probability of each forget answer under the model, summed over answer tokens.
        ref_logps: ``(B,)`` the same under the reference (the model before unlearning); no gradient flows into it.
        beta: inverse temperature; the paper uses 0.1 on TOFU.

    Returns:
        ``(B,)`` per-example losses (the trainer averages them).

    Deviations from the paper: none. Computed with ``softplus`` (stable for large ``|beta * delta|``), which equals
    open-unlearning's ``-logsigmoid(beta * (ref - policy)) * 2 / beta``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return 2.0 / beta * F.softplus(beta * (policy_logps - ref_logps.detach()))
