"""The sampled success rate ``p^`` of DCO's chain-of-thought mode (``dco_mode: cot``; arXiv 2502.07154, authors' code
``allanraventos/refine``: ``refine/training/train.py`` and ``filter_samples.py``, ``filter_fn_vllm``).

For each candidate training row, :class:`CoTScorer` samples ``cot_num_samples`` solutions from the row's prompt with the
current model (:func:`llmpost.generation.generate_samples`: the transformers backend, or a vLLM engine colocated on the
training GPU whose weights are synced from the model before each scoring after an update), grades each against the
row's gold answer (:func:`grade_samples`) and returns ``p^ = correct / cot_num_samples``.

Seeding: scoring call ``c`` (0, 1, ... in this run) on process ``r`` of ``W`` samples from seed
``cot_seed + (c W + r) S``, where ``S`` bounds the number of generation batches of one call; the transformers backend
draws batch ``b`` from that seed ``+ b`` (:class:`~llmpost.generation.SampleSettings`), vLLM seeds the call's requests
with it. Every batch of a run thus has its own seed, and a run is reproducible from ``cot_seed`` (and the data order,
from ``seed``). The authors instead seed their vLLM engine once (``construct_inference_engine(..., 1234, ...)``, with
``# args.seed,  # FIXME: use same seed?``) and let its generator run on through the training.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence

import torch

from llmpost.generation import GenerationBackend, SampleSettings, Sampling, generate_samples
from llmpost.grading.normalize import extract_boxed, is_equiv
from llmpost.grading.verify import grade
from llmpost.utils import StrEnum


class DCOMode(StrEnum):
    """What ``p`` in DCO's weight ``F(N, p)`` is, and which examples the filter drops.

    * ``answer`` (default): ``p`` is the model's teacher-forced probability of the whole target answer; the filter
      drops rows with ``F(N, p) <= dco_threshold`` (the authors' ``filter_fn_NCO``, for direct answers).
    * ``cot``: ``p^`` is the fraction of ``cot_num_samples`` sampled solutions that grade correct; the filter drops
      rows with ``p^ >= dco_threshold`` (the authors' ``filter_fn_vllm``: ``is_hard = sample_success_prob < threshold``),
      and the loss is the cross-entropy of the reference solution times ``F(N, p^)`` (their README's MATH run).
    """

    ANSWER = "answer"
    COT = "cot"


class CoTGrader(StrEnum):
    """How a sampled solution is graded against the gold answer.

    * ``boxed_match`` (default, the authors' ``exact_match`` -> ``is_answer_correct``): the last ``\\boxed{}`` of the
      solution, normalised, equals the normalised gold answer; no box is incorrect. Normalisation: llmpost's
      Hendrycks ``is_equiv`` (:mod:`llmpost.grading.normalize`), where the authors use Minerva's
      ``normalize_final_answer`` (Lewkowycz et al. 2022, appendix D).
    * ``math_verify``: math-verify equivalence (:func:`llmpost.grading.verify.grade`, bounded worker processes), as
      ``llmpost eval math`` grades.
    """

    BOXED_MATCH = "boxed_match"
    MATH_VERIFY = "math_verify"


def grade_samples(completions: Sequence[Sequence[str]], golds: Sequence[str],
                  grader: CoTGrader | str = CoTGrader.BOXED_MATCH) -> list[list[bool]]:  # fmt: skip
    """Correctness of each sampled solution ``completions[i][j]`` against ``golds[i]``."""
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} lists of completions but {len(golds)} gold answers")
    match CoTGrader(grader):
        case CoTGrader.BOXED_MATCH:
            return [[is_equiv(extract_boxed(c), str(g)) for c in texts] for texts, g in zip(completions, golds)]
        case CoTGrader.MATH_VERIFY:
            flat = grade([c for texts in completions for c in texts], [str(g) for texts, g in zip(completions, golds)
                                                                        for _ in texts])  # fmt: skip
            out, k = [], 0
            for texts in completions:
                out.append(flat[k : k + len(texts)])
                k += len(texts)
            return out


class CoTScorer:
    """``p^`` of training rows (module docstring). ``prompt_ids[i]`` / ``answers[i]``: row ``i``'s generation prompt
    and gold answer (the ``prompt_ids`` / ``answer`` columns of
    :func:`llmpost.benchmarks.math.data.tokenize_math` with ``generation_columns=True``)."""

    def __init__(self, args, tokenizer, prompt_ids: Sequence[Sequence[int]], answers: Sequence[str], accelerator,
                 rows_per_call: int):  # fmt: skip
        self.args, self.tokenizer, self.accelerator = args, tokenizer, accelerator
        self.prompt_ids, self.answers = prompt_ids, answers
        self.backend = GenerationBackend(args.cot_backend)
        if self.backend == GenerationBackend.VLLM and importlib.util.find_spec("vllm") is None:  # fail before training
            raise ImportError("cot_backend: 'vllm' needs vLLM, which is not installed (`pip install llmpost[vllm]`, GPU); "
                              "or use cot_backend: transformers")  # fmt: skip
        # generation batches one call needs at most: the seed stride between calls and processes
        self.stride = max(1, math.ceil(rows_per_call * args.cot_num_samples / args.cot_generation_batch_size))
        self.calls = 0
        self._vllm, self._synced_step = None, None

    def settings(self, seed: int) -> SampleSettings:
        a = self.args
        return SampleSettings(n=a.cot_num_samples, sampling=Sampling(temperature=a.cot_temperature),
                              max_new_tokens=a.cot_max_new_tokens, seed=seed, batch_size=a.cot_generation_batch_size,
                              backend=self.backend)  # fmt: skip

    def _vllm_engine(self, model, step: int):
        """The colocated vLLM engine (built on first use), its weights synced from ``model`` when they changed."""
        if self._vllm is None:  # TRL's colocated engine: built from model.name_or_path, synced by TRL's gather code
            from trl.generation.vllm_generation import VLLMGeneration

            self._vllm = VLLMGeneration(model, self.accelerator, self.tokenizer, mode="colocate",
                                        gpu_memory_utilization=self.args.cot_vllm_gpu_memory_utilization,
                                        max_model_length=self.args.cot_vllm_max_model_length,
                                        trust_remote_code=self.args.trust_remote_code)  # fmt: skip
        if self._synced_step != step:  # the weights changed since the last sync (or were never synced)
            self._vllm.sync_weights()
            self._synced_step = step
        return self._vllm.llm

    def _sample(self, model, model_wrapped, prompts: list[list[int]], settings: SampleSettings, step: int):
        if self.backend == GenerationBackend.VLLM:
            return generate_samples(self._vllm_engine(model, step), self.tokenizer, prompts, settings)
        # The training model; under ZeRO-3 its parameters are gathered once for the whole call (TRL's helper), as
        # gathering them layer by layer inside the decoding loop's inference mode would leave inference tensors behind.
        from trl.models import unwrap_model_for_generation

        with unwrap_model_for_generation(model_wrapped, self.accelerator) as unwrapped:
            was_training = unwrapped.training
            unwrapped.eval()
            try:
                return generate_samples(unwrapped, self.tokenizer, prompts, settings)
            finally:
                unwrapped.train(was_training)

    @torch.no_grad()
    def p_hat(self, model, model_wrapped, indices: Sequence[int], step: int) -> tuple[torch.Tensor, list[list[str]]]:
        """``(p^, completions)`` for this process's rows ``indices``. ``model``: the trainer's (unwrapped) model,
        ``model_wrapped``: its DDP/DeepSpeed wrapper; ``step``: the optimizer steps taken so far (the vLLM engine is
        re-synced when it changes). Every process must call it together (seeds count the calls; gathering ZeRO-3
        parameters and the vLLM weight sync are collective)."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        seed = self.args.cot_seed + (self.calls * world + rank) * self.stride
        self.calls += 1
        prompts = [list(self.prompt_ids[i]) for i in indices]
        completions = self._sample(model, model_wrapped, prompts, self.settings(seed), step)
        verdicts = grade_samples(completions, [self.answers[i] for i in indices], self.args.cot_grader)
        n = self.args.cot_num_samples
        return torch.tensor([sum(v) / n for v in verdicts], dtype=torch.float64), completions
