"""Shared numerics: per-token and per-sequence log-probabilities, masked reductions, KL estimators.

Every function here is model-agnostic except :func:`token_logps`, which runs one forward pass. Conventions:

* ``labels`` follow the Hugging Face convention: same shape as ``input_ids``, ``-100`` where no loss is taken, and the
  model predicts ``labels[:, t + 1]`` from position ``t``. All per-token outputs are therefore *shifted*: shape
  ``(batch, seq_len - 1)``, aligned with ``labels[:, 1:]``.
* Log-probabilities are always returned in float32, whatever the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from trl.trainer.utils import selective_log_softmax

IGNORE_INDEX = -100


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is true, along ``dim``."""
    return (values * mask.to(values.dtype)).sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is true, along ``dim``; 0 for rows with an empty mask (not NaN)."""
    count = mask.to(values.dtype).sum(dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def shift_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(targets, mask)`` of shape ``(B, T-1)``: the next-token targets (``-100`` replaced by 0) and their mask."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return targets.masked_fill(~mask, 0), mask


def logps_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log p(label) from full logits ``(B, T, V)``; returns ``(logps, mask)``, each ``(B, T-1)``.

    The log-softmax is taken in float32 (TRL's ``selective_log_softmax``), and masked positions are 0.
    """
    targets, mask = shift_labels(labels)
    logps = selective_log_softmax(logits[:, :-1].float(), targets)
    return logps.masked_fill(~mask, 0.0), mask


def token_logps(model, input_ids, attention_mask, labels, fused: bool = False,
                position_ids: torch.Tensor | None = None, padding_free: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass; per-token log-probabilities of ``labels`` and their mask, each ``(B, T-1)``, float32.

    With ``fused=True`` the model must have been patched by :func:`trl.trainer.utils.add_fused_lm_head`: the LM head is
    applied in tiles to the answer positions only and the ``(B, T, V)`` logits are never materialised.
    ``position_ids`` (optional) are passed to the model: with ``attention_mask=None`` and positions restarting at 0
    inside a row, transformers' attention keeps the packed documents apart.

    ``padding_free=True`` runs the forward on the batch's real tokens only (:func:`pack_padded`: the sequences are
    laid end to end, with restarting ``position_ids`` and no attention mask) and returns the values in the padded
    ``(B, T-1)`` layout, so every per-token and per-sequence reduction downstream is unchanged. The result equals the
    padded forward's up to floating-point summation order.
    """
    if padding_free:
        if position_ids is not None:
            raise ValueError("padding_free builds its own position_ids; pass an attention_mask, not position_ids")
        packed = pack_padded(input_ids, attention_mask, labels, row_length=_pack_row_length(model, attention_mask))
        logps, _ = token_logps(model, packed.input_ids, None, packed.labels, fused=fused, position_ids=packed.position_ids)
        out = unpack_shifted(logps, packed, tuple(labels.shape))
        _, mask = shift_labels(labels)
        return out.masked_fill(~mask, 0.0), mask
    extra = {} if position_ids is None else {"position_ids": position_ids}
    if fused:
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True, **extra)
        _, mask = shift_labels(labels)
        return out.log_probs.float().masked_fill(~mask, 0.0), mask
    out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)
    return logps_from_logits(out.logits, labels)


# ----- padding-free batches ------------------------------------------------------------------------------------------
# Attention implementations that run packed rows as variable-length sequences (no work on other documents' tokens):
# with them every sequence of the batch goes into one row, as TRL's padding-free collators do. The others (eager,
# sdpa, flex) build a block-diagonal mask whose cost grows with the square of the row length, so the sequences are
# packed into rows no longer than the batch's longest sequence (first-fit decreasing): fewer rows, no padding
# inside a sequence, attention never costlier than the padded batch's.
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn", "kernels-community/flash-attn3",
                    "kernels-community/vllm-flash-attn3")


def _pack_row_length(model, attention_mask: torch.Tensor) -> int | None:
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl is None and hasattr(model, "module"):  # DDP / DeepSpeed wrappers
        impl = getattr(getattr(model.module, "config", None), "_attn_implementation", None)
    if impl is not None and (impl in VARLEN_ATTENTION or "flash" in str(impl)):
        return None  # one row
    return int(attention_mask.sum(-1).max())


@dataclass
class PackedBatch:
    """Sequences of a padded batch laid end to end in ``(R, W)`` rows; see :func:`pack_padded`."""

    input_ids: torch.Tensor     # (R, W)
    labels: torch.Tensor        # (R, W): -100 at each sequence's first token (never predicted across documents) and on fill
    position_ids: torch.Tensor  # (R, W): restart at 0 for every sequence (and for the fill at a row's end)
    src: tuple[torch.Tensor, torch.Tensor]  # (row, column) in the padded batch of every real token, row-major order
    dst: tuple[torch.Tensor, torch.Tensor]  # (row, column) of the same token in the packed rows


def pack_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
                row_length: int | None = None, pad_token_id: int = 0) -> PackedBatch:
    """Pack the real tokens of a (left- or right-) padded batch into rows of at most ``row_length`` tokens.

    ``row_length=None`` puts every sequence into one row (for variable-length attention kernels); otherwise sequences
    are assigned to rows first-fit decreasing (a sequence is never split: ``row_length`` must be at least the longest
    one). Each sequence's first token gets label -100: in a packed row the token before it belongs to another
    sequence. (A causal LM's first token is never a target anyway: its label is consumed by no prediction.)
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    att = attention_mask.bool()
    lengths = att.sum(-1).tolist()
    longest = max(lengths)
    if row_length is not None and row_length < longest:
        raise ValueError(f"row_length ({row_length}) is shorter than the longest sequence ({longest})")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []   # sequence ids per packed row
    fill: list[int] = []
    cap = sum(lengths) if row_length is None else row_length
    for i in order:
        if lengths[i] == 0:
            continue
        for r, used in enumerate(fill):
            if used + lengths[i] <= cap:
                rows[r].append(i)
                fill[r] += lengths[i]
                break
        else:
            rows.append([i])
            fill.append(lengths[i])
    width = max(fill)
    device = input_ids.device
    src_rows, src_cols = att.nonzero(as_tuple=True)  # row-major: each sequence's tokens in order
    starts = torch.zeros(len(lengths) + 1, dtype=torch.long)
    starts[1:] = torch.as_tensor(lengths).cumsum(0)
    dst_row = torch.empty(int(starts[-1]), dtype=torch.long)
    dst_col = torch.empty_like(dst_row)
    for r, members in enumerate(rows):
        offset = 0
        for i in members:
            a, b = int(starts[i]), int(starts[i + 1])
            dst_row[a:b] = r
            dst_col[a:b] = torch.arange(offset, offset + b - a)
            offset += b - a
    dst_row, dst_col = dst_row.to(device), dst_col.to(device)
    ids = torch.full((len(rows), width), pad_token_id, dtype=input_ids.dtype, device=device)
    lab = torch.full((len(rows), width), IGNORE_INDEX, dtype=labels.dtype, device=device)
    ids[dst_row, dst_col] = input_ids[src_rows, src_cols]
    lab[dst_row, dst_col] = labels[src_rows, src_cols]
    pos = torch.arange(width, device=device).repeat(len(rows), 1)
    first = torch.ones_like(dst_row, dtype=torch.bool)
    first[1:] = src_rows[1:] != src_rows[:-1]
    lab[dst_row[first], dst_col[first]] = IGNORE_INDEX
    # positions restart at every sequence start and at the fill after a row's last sequence
    pos[dst_row, dst_col] = dst_col - _segment_start(dst_col, first)
    for r, used in enumerate(fill):
        pos[r, used:] = torch.arange(width - used, device=device)
    return PackedBatch(ids, lab, pos, (src_rows, src_cols), (dst_row, dst_col))


def _segment_start(cols: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """For tokens in sequence order, the column of their sequence's first token."""
    idx = torch.arange(len(cols), device=cols.device)
    start_idx = torch.cummax(torch.where(first, idx, torch.zeros_like(idx)), 0).values
    return cols[start_idx]


def unpack_shifted(values: torch.Tensor, packed: PackedBatch, labels_shape: tuple[int, int]) -> torch.Tensor:
    """Map shifted per-token values of packed rows, ``(R, W-1)``, back to the padded batch's shifted layout ``(B, T-1)``.

    The value predicting the token at padded ``(b, t)`` (``t >= 1``) sits at ``(b, t-1)``; in the packed rows the same
    prediction is at ``(r, c-1)`` for the token's packed position ``(r, c)``. Sequence starts (no prediction) stay 0.
    """
    (s_row, s_col), (d_row, d_col) = packed.src, packed.dst
    keep = torch.ones_like(s_row, dtype=torch.bool)
    keep[0] = False
    keep[1:] = s_row[1:] == s_row[:-1]  # not the first token of its sequence
    out = values.new_zeros(labels_shape[0], labels_shape[1] - 1)
    out[s_row[keep], s_col[keep] - 1] = values[d_row[keep], d_col[keep] - 1]
    return out


def sequence_logps(logps: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Per-sequence log-probability: the sum (or, with ``average``, the mean) over the masked tokens. ``(B,)``."""
    return masked_mean(logps, mask) if average else masked_sum(logps, mask)


def kl_per_token(
    policy_logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor, direction: str = "forward"
) -> torch.Tensor:
    """Exact per-token KL over the vocabulary, masked; ``(B, T)``.

    ``direction="forward"`` is KL(ref || policy) (the open-unlearning GradDiff/NPO retain-KL convention:
    ``F.kl_div(log_policy, log_ref, log_target=True)``); ``"reverse"`` is KL(policy || ref).
    """
    logp = F.log_softmax(policy_logits.float(), dim=-1)
    logq = F.log_softmax(ref_logits.float(), dim=-1)
    if direction == "forward":
        kl = (logq.exp() * (logq - logp)).sum(-1)
    elif direction == "reverse":
        kl = (logp.exp() * (logp - logq)).sum(-1)
    else:
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    return kl * mask.to(kl.dtype)
