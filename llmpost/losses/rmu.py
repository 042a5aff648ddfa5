"""RMU: Representation Misdirection for Unlearning (Li et al., 2024, "The WMDP Benchmark"; arXiv 2403.03218, Sec. 5).

RMU acts on the hidden states of one decoder layer ``l`` (the output of layer ``l``, the authors' forward hook on
``model.model.layers[l]``): the forget text's states are pushed toward a fixed random direction scaled by ``c``,
while the retain text's states are held at those of the frozen model. Only a few parameters (the authors': the MLP
``down_proj`` weights of layers ``l-2 .. l``) are updated. The trainer is :class:`llmpost.trainers.rmu.RmuTrainer`
(``method: rmu``); it runs the forward passes and calls the pure functions here.

Reference: the authors' code, ``centerforaisafety/wmdp`` ``rmu/unlearn.py`` (``run_rmu``) and ``rmu/utils.py``.
"""

from __future__ import annotations

import torch

from llmpost.utils import StrEnum


class RmuReduction(StrEnum):
    """How token terms are averaged into a micro-batch's loss (see :func:`rmu_token_losses`)."""

    EXAMPLE = "example"  # each example's mean over its tokens, then the mean over examples (open-unlearning)
    TOKEN = "token"  # the mean over all tokens of the micro-batch (the authors' weighting, padding excluded)


def control_vector(hidden_size: int, steering_coeff: float, seed: int) -> torch.Tensor:
    """``c * u``: ``u`` a random unit vector drawn as the authors draw it (``torch.rand``, uniform on ``[0, 1)``, divided
    by its norm, so every component is positive), scaled by the steering coefficient ``c``.

    Drawn in float32 on the CPU from a ``torch.Generator`` seeded with ``seed``: the same vector on every process and
    after a resume. (The authors draw it on the GPU in the model's dtype after ``torch.manual_seed(42)``, so their exact
    vector cannot be reproduced on another device; only its distribution is.) Returns a ``(hidden_size,)`` tensor.
    """
    if hidden_size < 1:
        raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(hidden_size, generator=g, dtype=torch.float32)
    return u / u.norm() * steering_coeff


def rmu_token_losses(acts: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     reduction: RmuReduction | str = RmuReduction.EXAMPLE) -> torch.Tensor:
    r"""Per-example activation MSE: the squared distance of each token's hidden state to its target, averaged over the
    hidden dimension (``torch.nn.functional.mse_loss``'s mean, as the authors compute it) and over the masked tokens.

    .. math::
        e_{i,t} = \frac{1}{d}\,\lVert h_{i,t} - y_{i,t} \rVert_2^2 ,\qquad
        \text{example: } \ell_i = \frac{\sum_t m_{i,t} e_{i,t}}{\sum_t m_{i,t}} ,\qquad
        \text{token: } \ell_i = \frac{B \sum_t m_{i,t} e_{i,t}}{\sum_{j,t} m_{j,t}}

    so that ``ell.mean()`` is, for ``example``, the mean over examples of each one's token mean (open-unlearning's
    ``compute_activation_loss``) and, for ``token``, the mean over every token of the micro-batch (the authors'
    ``mse_loss`` over the padded batch, without the padding). The two agree when all rows have the same number of
    tokens (e.g. fixed-length corpus chunks).

    Args:
        acts: ``(B, T, d)`` hidden states (any float dtype; computed in float32, or float64 for float64).
        target: ``(d,)`` (the control vector ``c u``) or ``(B, T, d)`` (the frozen model's states); no gradient flows
            into it.
        mask: ``(B, T)`` the tokens that count (bool or 0/1).
        reduction: ``example`` or ``token`` (:class:`RmuReduction`).

    Returns:
        ``(B,)`` per-example terms whose mean is the micro-batch's loss; an example without tokens gives 0.
    """
    reduction = RmuReduction(reduction)
    dtype = torch.promote_types(acts.dtype, torch.float32)  # at least float32
    mask = mask.to(dtype)
    err = (acts.to(dtype) - target.detach().to(dtype)).pow(2).mean(-1)  # (B, T)
    total = (err * mask).sum(-1)
    if reduction == RmuReduction.EXAMPLE:
        return total / mask.sum(-1).clamp(min=1)
    return total * mask.shape[0] / mask.sum().clamp(min=1)


def rmu_loss(forget_acts: torch.Tensor, control: torch.Tensor, forget_mask: torch.Tensor,
             retain_acts: torch.Tensor | None = None, frozen_retain_acts: torch.Tensor | None = None,
             retain_mask: torch.Tensor | None = None, reduction: RmuReduction | str = RmuReduction.EXAMPLE) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""The RMU objective's two per-example terms.

    .. math::
        \mathcal{L} = \underbrace{\mathbb{E}_{x_f}\,\tfrac{1}{L_f}\sum_{t} \tfrac{1}{d}\lVert h^{(l)}_\theta(x_f)_t
                      - c\,u \rVert_2^2}_{\text{forget}}
                    \;+\; \alpha\,\underbrace{\mathbb{E}_{x_r}\,\tfrac{1}{L_r}\sum_{t} \tfrac{1}{d}\lVert
                      h^{(l)}_\theta(x_r)_t - h^{(l)}_{\text{frozen}}(x_r)_t \rVert_2^2}_{\text{retain}}

    (arXiv 2403.03218, Sec. 5, Eqs. for :math:`\mathcal{L}_{\text{forget}}` and :math:`\mathcal{L}_{\text{retain}}`;
    the paper writes the norms summed over tokens and the code averages them, which is what is done here.)

    Args:
        forget_acts: ``(B, T, d)`` layer-``l`` states of the forget rows under the model being trained.
        control: ``(d,)`` ``c * u`` (:func:`control_vector`).
        forget_mask: ``(B, T)`` the forget tokens that count.
        retain_acts, frozen_retain_acts, retain_mask: the retain rows' states under the model and the frozen model,
            and their mask; ``None`` for no retain term.
        reduction: see :func:`rmu_token_losses`.

    Returns:
        ``(forget, retain)``: ``(B,)`` per-example terms (``retain`` is ``None`` without retain rows); the trainer's
        loss is ``forget.mean() + alpha * retain.mean()``.

    Deviations from the authors' code: padding is excluded (they average over the left-padded batch, so pad
    positions are pushed to ``c u`` and held too); ``reduction: example`` (the default, open-unlearning's) weights each
    example equally, which makes the loss independent of how a batch is split over micro-batches and processes;
    ``reduction: token`` is their token weighting. Computed in float32 (they compute in the model's dtype). The caller weights the retain term by
    ``alpha`` (the authors' Zephyr WMDP run: 1200).
    """
    forget = rmu_token_losses(forget_acts, control, forget_mask, reduction)
    retain = None
    if retain_acts is not None:
        if frozen_retain_acts is None or retain_mask is None:
            raise ValueError("rmu_loss: retain_acts needs frozen_retain_acts and retain_mask")
        retain = rmu_token_losses(retain_acts, frozen_retain_acts, retain_mask, reduction)
    return forget, retain
