"""SimNPO: Simplicity Prevails, reference-free NPO (Fan et al., 2024; arXiv 2410.07163).

Trainer: :class:`llmpost.trainers.unlearn.UnlearnTrainer` with ``method: simnpo`` (forget term plus ``alpha`` times the
retain NLL, as in the paper's regularised objective).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def simnpo_loss(policy_logps: torch.Tensor, lengths: torch.Tensor, beta: float = 1.0, delta: float = 0.0) -> torch.Tensor:
    r"""Per-example SimNPO forget loss.

    .. math::
        \mathcal{L}_{\mathrm{SimNPO}} = -\frac{2}{\beta}\log\sigma\Big(-\frac{\beta}{|y|}\log\pi_\theta(y|x) - \beta\delta\Big)
                                      = \frac{2}{\beta}\,\mathrm{softplus}\Big(\beta\big(\tfrac{\log\pi_\theta(y|x)}{|y|} + \delta\big)\Big)

    (arXiv 2410.07163, Eq. 4, with the reward margin written ``gamma = beta * delta``.) The reference model of NPO is
    replaced by length normalisation: ``|y|`` is the number of answer tokens.

    Args:
        policy_logps: ``(B,)`` log-probability of each forget answer, summed over its tokens.
        lengths: ``(B,)`` number of answer tokens ``|y|``.
        beta: inverse temperature.
        delta: reward margin divided by beta (``gamma / beta``); 0 is the paper's choice for unlearning.

    Returns:
        ``(B,)`` per-example losses.

    Deviations from the paper: none. Matches open-unlearning's SimNPO
    (``-logsigmoid(beta * (nll / |y| - delta)) * 2 / beta``).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    avg_logps = policy_logps / lengths.to(policy_logps.dtype).clamp(min=1)
    return 2.0 / beta * F.softplus(beta * (avg_logps + delta))
