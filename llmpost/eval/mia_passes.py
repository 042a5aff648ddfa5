"""The model passes of open-unlearning's membership-inference suite, shared by TOFU and MUSE: one teacher-forced pass
with the full next-token distribution (LOSS, ZLib, Min-K%++), one backward pass per example (GradNorm), and the LOSS
pass of a reference model (Reference); then the per-attack entries (:mod:`llmpost.eval.mia`).

Items are a benchmark's forget and holdout examples as :class:`MiaItem` (token ids and which positions are labelled).
Each pass is split across ranks like the benchmarks' own passes (:func:`llmpost.eval.shard.sharded_map`) and shows a
progress bar on rank 0 (``TQDM_DISABLE=1`` turns it off). Source: open-unlearning ``src/evals/metrics/mia/*.py``,
``src/evals/metrics/utils.py`` (``evaluate_probability``, ``tokenwise_logprobs``, ``tokenwise_vocab_logprobs``) and
its ``configs/eval/{tofu,muse}_metrics/mia_*.yaml`` (k = 0.4 for Min-K%++, p = 2 and batch size 1 for GradNorm).

Deviations from open-unlearning, none of which changes a number beyond float noise for a model without dropout:
log-probs are computed in float32 whatever the model dtype; GradNorm runs in eval mode (open-unlearning switches the
model to train mode for it, which only matters where dropout is active, and then makes the score random), and keeps
the gradients the model held before (open-unlearning zeroes them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from llmpost.data.collators import pad_examples
from llmpost.eval import metrics as M
from llmpost.eval import mia
from llmpost.eval.shard import model_device, sharded_map, world
from llmpost.models import pad_token_id
from llmpost.ops import IGNORE_INDEX
from llmpost.utils import DataError, progress_disabled

logger = logging.getLogger(__name__)

MIN_K_PLUS_PLUS_K = 0.4  # open-unlearning configs/eval/{tofu,muse}_metrics/mia_min_k_plus_plus.yaml
GRADNORM_P = 2  # open-unlearning configs/eval/{tofu,muse}_metrics/mia_gradnorm.yaml
SUITE_KEYS = ("mia_loss", "mia_zlib", "mia_min_k_plus_plus", "mia_gradnorm", "mia_reference")
REFERENCE_FLAG = "mia_reference_model_path"


class ReferenceModelError(DataError):
    """The Reference attack's model cannot be used (missing, or its tokenizer differs); the message names
    ``mia_reference_model_path``."""


@dataclass(frozen=True)
class MiaItem:
    """One example: its token ids, the labelled positions ``[first, loss_end)`` (their mean NLL is the LOSS score,
    their decoded text ZLib's), and the positions ``[first, end)`` of the token statistics (Min-K%++, GradNorm)."""

    input_ids: list[int]
    first: int
    end: int
    loss_end: int
    text: str


def labelled_item(tokenizer, input_ids: Sequence[int], labels: Sequence[int]) -> MiaItem:
    """:class:`MiaItem` of a supervised example (``labels`` -100 outside the answer), with open-unlearning's token
    sets: the mean NLL over every labelled token, the token statistics without the last labelled one (its "ignore the
    EOS prediction" rule), the text = the labelled ids decoded with ``skip_special_tokens=True``."""
    pos = [i for i, y in enumerate(labels) if y != IGNORE_INDEX]
    first, loss_end = (pos[0], pos[-1] + 1) if pos else (len(input_ids), len(input_ids))
    text = tokenizer.decode([input_ids[i] for i in pos], skip_special_tokens=True)
    return MiaItem(list(input_ids), first, max(first, loss_end - 1), loss_end, text)


@dataclass
class MiaStats:
    """Teacher-forced statistics of one :class:`MiaItem`: the mean NLL over ``[first, loss_end)`` (``None`` without
    labelled tokens), and over ``[first, end)`` the token log-probs and the mean / variance of log-probs under the
    model's own next-token distribution (:func:`llmpost.eval.mia.next_token_moments`; empty when not asked for)."""

    avg_loss: float | None
    token_logps: np.ndarray
    mu: np.ndarray
    var: np.ndarray


def _bar(desc: str, total: int):
    return tqdm(total=total, desc=desc, unit="ex", disable=progress_disabled() or world()[1] != 0, mininterval=5.0)


def _row_stats(logits: torch.Tensor, ids: torch.Tensor, it: MiaItem, moments: bool) -> MiaStats:
    """:class:`MiaStats` of one row from its ``(T, V)`` logits (position ``t`` predicts token ``t + 1``)."""
    if it.loss_end <= it.first:
        empty = np.zeros(0)
        return MiaStats(None, empty, empty, empty)
    logits = logits[it.first - 1 : it.loss_end - 1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[it.first : it.loss_end, None]).squeeze(-1).double().cpu()
    n = it.end - it.first
    mu = var = np.zeros(0)
    if moments:
        m, v = mia.next_token_moments(logits[:n])
        mu, var = m.double().cpu().numpy(), v.double().cpu().numpy()
    return MiaStats(float(-logp.mean()), logp[:n].numpy(), mu, var)


@torch.no_grad()
def score_items(model, tokenizer, items: list[MiaItem], *, batch_size: int, moments: bool = True,
                desc: str = "MIA scoring") -> list[MiaStats]:  # fmt: skip
    """:class:`MiaStats` of every item: right-padded batched forward passes, longest first, split across ranks."""
    pad_id, device = pad_token_id(tokenizer), model_device(model)

    def run(shard: list[MiaItem]) -> list[MiaStats]:
        out: list[MiaStats] = []
        with _bar(desc, len(shard)) as bar:
            for start in range(0, len(shard), batch_size):
                chunk = shard[start : start + batch_size]
                examples = [{"input_ids": it.input_ids, "attention_mask": [1] * len(it.input_ids)} for it in chunk]
                batch = {k: v.to(device) for k, v in pad_examples(examples, pad_id).items()}
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
                out += [_row_stats(logits[r], batch["input_ids"][r], it, moments) for r, it in enumerate(chunk)]
                bar.update(len(chunk))
        return out

    return sharded_map(run, items, [len(it.input_ids) for it in items])


def _zero3_partitioned(model) -> bool:
    return any(hasattr(q, "ds_id") for q in model.parameters())


def grad_norms(model, items: list[MiaItem], *, p: float = GRADNORM_P, desc: str = "MIA gradnorm") -> list[float]:
    """GradNorm score (:func:`llmpost.eval.mia.gradnorm_score`) of every item: one forward and backward pass per item
    (open-unlearning's batch size 1) of the mean NLL over ``[first, end)``, with gradients enabled only here; the
    p-norm of each parameter tensor's gradient, averaged over all parameter tensors (as open-unlearning, whose models
    load with every parameter trainable; here frozen ones are unfrozen for the pass, so the score does not depend on
    how the model was loaded; a PEFT model's adapter tensors count too, where open-unlearning evaluates merged models
    only). The model's own ``requires_grad`` flags and ``.grad`` values are restored afterwards. An item without
    tokens scores 0 (open-unlearning would back-propagate a NaN)."""
    if p not in (1, 2, float("inf")):
        raise ValueError(f"GradNorm p must be 1, 2 or inf (open-unlearning's choices), got {p}")
    params = list(model.parameters())
    device = model_device(model)

    def run(shard: list[MiaItem]) -> list[float]:
        saved = [(q.grad, q.requires_grad) for q in params]
        out: list[float] = []
        try:
            for q in params:
                q.requires_grad_(True)
            with torch.enable_grad(), _bar(desc, len(shard)) as bar:
                for it in shard:
                    for q in params:
                        q.grad = None
                    n = it.end - it.first
                    if n <= 0:
                        out.append(0.0)
                        bar.update(1)
                        continue
                    ids = torch.tensor([it.input_ids[: it.end]], device=device)
                    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[0]
                    logp = torch.log_softmax(logits[it.first - 1 : it.end - 1].float(), -1)
                    loss = -logp.gather(-1, ids[0, it.first : it.end, None]).mean()
                    loss.backward()
                    norms = [q.grad.detach().float().norm(p) for q in params if q.grad is not None]
                    out.append(mia.gradnorm_score(torch.stack(norms).double().cpu().numpy()))
                    bar.update(1)
        finally:
            for q, (g, flag) in zip(params, saved):
                q.grad = g
                q.requires_grad_(flag)
        return out

    return sharded_map(run, items, [len(it.input_ids) for it in items])


# ----------------------------------------------------------------------------------------------------------------------
# The reference model


def _tokenizer_difference(a, b) -> str | None:
    """What differs between two tokenizers (vocabulary, special tokens, the ids of a probe text), or ``None``."""
    if a.get_vocab() != b.get_vocab():
        return f"vocabularies differ ({len(a.get_vocab())} vs {len(b.get_vocab())} entries)"
    for name in ("bos_token_id", "eos_token_id"):
        if getattr(a, name, None) != getattr(b, name, None):
            return f"{name} differs ({getattr(a, name, None)} vs {getattr(b, name, None)})"
    probe = "Question: Who wrote it?\nAnswer: The author, in 1999."
    if list(a(probe)["input_ids"]) != list(b(probe)["input_ids"]):
        return "they tokenise the same text differently"
    return None


def check_reference_tokenizer(tokenizer, path: str, trust_remote_code: bool = False) -> None:
    """Raise :class:`ReferenceModelError` naming ``mia_reference_model_path`` when ``path`` holds no loadable tokenizer
    or one that differs from ``tokenizer`` (the Reference attack subtracts per-example losses over the same tokens)."""
    from llmpost.models import load_tokenizer

    try:
        ref_tok = load_tokenizer(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ReferenceModelError(f"{REFERENCE_FLAG} {path!r}: could not load its tokenizer: {e}") from e
    diff = _tokenizer_difference(tokenizer, ref_tok)
    if diff:
        raise ReferenceModelError(f"{REFERENCE_FLAG} {path!r}: its tokenizer differs from the evaluated model's "
                                  f"({diff}); the Reference attack needs both models on the same tokens")  # fmt: skip


def load_reference_model(path: str, like, trust_remote_code: bool = False):
    """The reference model at ``path`` (full weights, or a PEFT adapter merged into its base) in ``like``'s dtype and
    on its device, in eval mode (open-unlearning loads it with the evaluated model's dtype and device)."""
    from llmpost.models import load_saved_model

    dtype = getattr(like, "dtype", torch.float32)
    try:
        ref = load_saved_model(path, dtype, trust_remote_code, merge=True)
    except (OSError, ValueError) as e:
        raise ReferenceModelError(f"{REFERENCE_FLAG} {path!r}: could not load a model: {e}") from e
    return ref.to(model_device(like)).eval()


# ----------------------------------------------------------------------------------------------------------------------
# The suite


def run_mia_suite(model, tokenizer, forget: list[MiaItem], holdout: list[MiaItem], *, batch_size: int,
                  reference_model_path: str | None = None, trust_remote_code: bool = False, gradnorm: bool = True,
                  k: float = MIN_K_PLUS_PLUS_K, p: float = GRADNORM_P, name: str = "") -> dict[str, M.MetricResult]:  # fmt: skip
    """The entries ``mia_loss``, ``mia_zlib``, ``mia_min_k_plus_plus``, ``mia_gradnorm`` and (with
    ``reference_model_path``) ``mia_reference``, each ``{"forget", "holdout", "auc", "agg_value"}``
    (:func:`llmpost.eval.mia.mia`). The model is used as it is (the caller sets eval mode). GradNorm is left out when
    ``gradnorm`` is false or the parameters are partitioned by DeepSpeed ZeRO-3 (a warning says so). Callers check
    the reference's tokenizer (:func:`check_reference_tokenizer`) before their first pass."""
    items, n_f = forget + holdout, len(forget)
    t0 = time.perf_counter()
    stats = score_items(model, tokenizer, items, batch_size=batch_size, desc=f"{name}MIA scoring")
    logs: dict[str, M.MetricResult] = {}

    def entry(scores: list[float]) -> M.MetricResult:
        return mia.mia(scores[:n_f], scores[n_f:])

    logs["mia_loss"] = entry([mia.loss_score(s.avg_loss) for s in stats])
    logs["mia_zlib"] = entry([mia.zlib_score(s.avg_loss, it.text) for s, it in zip(stats, items)])
    logs["mia_min_k_plus_plus"] = entry([mia.min_k_plus_plus_score(s.token_logps, s.mu, s.var, k) for s in stats])
    logger.info("%sMIA: scored %d examples in %.1fs", name, len(items), time.perf_counter() - t0)
    if gradnorm and _zero3_partitioned(model):
        logger.warning("%sMIA: mia_gradnorm is not computed: the parameters are partitioned by DeepSpeed ZeRO-3", name)
    elif gradnorm:
        t0 = time.perf_counter()
        logs["mia_gradnorm"] = entry(grad_norms(model, items, p=p, desc=f"{name}MIA gradnorm"))
        logger.info("%sMIA: gradient norms of %d examples in %.1fs", name, len(items), time.perf_counter() - t0)
    if reference_model_path:
        t0 = time.perf_counter()
        ref = load_reference_model(reference_model_path, model, trust_remote_code)
        try:
            ref_stats = score_items(ref, tokenizer, items, batch_size=batch_size, moments=False,
                                    desc=f"{name}MIA reference")  # fmt: skip
        finally:
            del ref
        logs["mia_reference"] = entry([mia.reference_score(s.avg_loss, r.avg_loss) for s, r in zip(stats, ref_stats)])
        logger.info("%sMIA: reference losses of %d examples in %.1fs", name, len(items), time.perf_counter() - t0)
    return logs
