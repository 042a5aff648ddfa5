"""The verifier noise channel (arXiv 2510.00915): flip clean 0/1 verdicts with rates rho0 (false positive) and rho1
(false negative), as a pure function (:func:`noise_channel`) and as a verifier wrapper (:class:`NoisyVerifier`)."""

from __future__ import annotations

import numpy as np
import torch

from llmpost.losses.noisy_grpo import NoiseRates
from llmpost.rewards.verifiers import Verifier


def noise_channel(clean, rates: NoiseRates, rng: np.random.Generator):
    """Pass 0/1 rewards through the channel: a 1 flips to 0 iff ``u < rho1``, a 0 to 1 iff ``u < rho0``, with one
    uniform ``u`` per element from ``rng``. A tensor in gives a tensor (same dtype/device) out, else a numpy array."""
    arr = (clean.detach().cpu().numpy() if isinstance(clean, torch.Tensor) else np.asarray(clean)).astype(np.int64)
    if not np.isin(arr, (0, 1)).all():
        raise ValueError("clean rewards must be 0/1")
    u = rng.random(arr.shape)
    noisy = np.where(arr == 1, (u >= rates.rho1).astype(np.int64), (u < rates.rho0).astype(np.int64))
    if isinstance(clean, torch.Tensor):
        return torch.as_tensor(noisy, device=clean.device).to(clean.dtype)
    return noisy


class NoisyVerifier:
    """``base`` seen through the noise channel: a 1 becomes 0 with probability ``rho1`` (false negative) and a 0
    becomes 1 with probability ``rho0`` (false positive), independently per call.

    Reproducible: one uniform draw from ``numpy.random.default_rng(seed)`` per call (drawn before ``base`` runs, so
    the stream does not depend on the verdicts), flip iff ``u < rho`` of the base verdict, the same rule as
    ``noisy_grpo.noise_channel``. Counts ``calls``, ``flips_to_0`` and ``flips_to_1``. Exceptions of ``base``
    propagate (wrap the call in ``safe_verify``). ``clean(completion, gold)`` is the base verdict without noise,
    reused from the last call on the same pair instead of verifying twice (a monitoring oracle).
    """

    def __init__(self, base: Verifier, rho0: float, rho1: float, seed: int = 0):
        self.base = base
        self.rates = NoiseRates(rho0, rho1)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.calls = self.flips_to_0 = self.flips_to_1 = 0
        self._last: tuple[str, str, int] | None = None  # (completion, gold, base verdict) of the last call
        base_name = getattr(base, "name", getattr(base, "__name__", "verifier"))
        self.name = f"noisy({base_name}, rho0={rho0:g}, rho1={rho1:g}, seed={seed})"
        self.description = f"{base_name} with injected noise: P(1->0)={rho1:g}, P(0->1)={rho0:g}"

    def __call__(self, completion: str, gold: str) -> int:
        self.calls += 1
        u = self._rng.random()
        verdict = int(self.base(completion, gold))
        self._last = (completion, gold, verdict)
        if verdict == 1 and u < self.rates.rho1:
            self.flips_to_0 += 1
            return 0
        if verdict == 0 and u < self.rates.rho0:
            self.flips_to_1 += 1
            return 1
        return verdict


    def clean(self, completion: str, gold: str) -> int:
        """``base(completion, gold)``: the verdict before the noise, without a second verification when this
        pair was the last one verified."""
        last = self._last
        if last is not None and last[0] is completion and last[1] is gold:
            return last[2]
        return int(self.base(completion, gold))
