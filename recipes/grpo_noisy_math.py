"""GRPO on MATH (or the synthetic arithmetic task) with a noisy verifier and the corrections of arXiv 2510.00915:
uncorrected, backward (PGBC), forward (PGFC), forward + appeals (online rho1), or clean rewards (the oracle).

Launch (any scale; the accelerate config alone sets it):

    python recipes/grpo_noisy_math.py --config configs/grpo_noisy_math_tiny.yaml                 # CPU, arithmetic
    python recipes/grpo_noisy_math.py --config configs/grpo_noisy_math_tiny.yaml --correction backward --rho1 0.3
    python recipes/grpo_noisy_math.py --config configs/grpo_noisy_math_tiny.yaml --noise_rho1 0 --output_dir out/clean

The reward is ``verifier`` (rule_based | math_verify) on each completion against the row's gold ``answer``, seen through
``NoisyVerifier(noise_rho0, noise_rho1, noise_seed)`` when a noise rate is > 0 (controlled experiments; 0/0 gives the
clean verifier). ``rho0``/``rho1`` are the rates the *correction* assumes; ``appeals_fraction > 0`` re-checks that
fraction of negatives with ``appeal_verifier`` and feeds the online rho1^ to the forward correction. Corrected runs log
the audit against their matched control (``noisy/audit_*``; docs/noisy_grpo.md). ``max_prompt_tokens`` drops longer
training prompts (the paper's 512, configs/grpo_noisy_math.yaml). Writes the model
to ``output_dir`` with its log history (``log_history.json``: ``noisy/*`` every logging step, and
``heldout/pass@1`` every ``heldout_eval_steps``) and, when ``eval_after_training``, ``output_dir/eval/MATH_EVAL.json``
+ ``MATH_SUMMARY.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig
from trl.trainer.utils import get_peft_config

from llmpost.benchmarks.math.data import MathArguments, drop_long_prompts, grpo_prompts
from llmpost.benchmarks.math.evaluate import MathEvalSettings
from llmpost.benchmarks.math.recipe import HeldOutMathCallback, math_evaluator
from llmpost.config import check_launch, parse_config, run_main
from llmpost.losses.noisy_grpo import NoiseRates
from llmpost.models import load_model, load_tokenizer
from llmpost.pipeline import save_and_evaluate
from llmpost.rewards.noise import NoisyVerifier
from llmpost.rewards.verifiers import math_verify_verifier, rule_based_verifier
from llmpost.trainers.noisy_grpo import NoisyGRPOConfig, NoisyGRPOTrainer, VerifierReward
from llmpost.utils import StrEnum, check_output_dir, parse_enum


class VerifierKind(StrEnum):
    """A verifier of ``llmpost.rewards.verifiers``, or (appeals only) an LLM verifier (``llmpost.rewards.llm_verifier``)."""

    RULE_BASED = "rule_based"
    MATH_VERIFY = "math_verify"
    LLM = "llm"


def make_verifier(kind: VerifierKind | str):
    match VerifierKind(kind):
        case VerifierKind.RULE_BASED:
            return rule_based_verifier
        case VerifierKind.MATH_VERIFY:
            return math_verify_verifier
    raise ValueError(f"verifier {kind!r} needs a model: only appeal_verifier may be 'llm' (with appeal_verifier_model)")


def make_appeal_verifier(reward_args: RewardArguments, problems):
    """The appeals' checker. ``llm``: TinyV's prompt on ``appeal_verifier_model`` (vLLM where installed with CUDA);
    the appeals path passes (completion, gold), so the question comes from the training ``problems`` by their gold
    answer (a gold shared by several problems gets the last one's question)."""
    if reward_args.appeal_verifier != VerifierKind.LLM:
        return make_verifier(reward_args.appeal_verifier)
    from llmpost.rewards.llm_verifier import LLMVerifier

    verifier = LLMVerifier.from_pretrained(reward_args.appeal_verifier_model,
                                           prompts_file=reward_args.appeal_verifier_prompts_file)  # fmt: skip
    return verifier.as_verifier({str(a): q for a, q in zip(problems["answer"], problems["problem"])})


@dataclass
class RewardArguments:
    """The verifier, the injected noise and the appeals checker."""

    verifier: VerifierKind = field(default=VerifierKind.RULE_BASED, metadata={"help": "rule_based | math_verify."})
    noise_rho0: float = field(default=0.0, metadata={"help": "Injected false-positive rate (0: none)."})
    noise_rho1: float = field(default=0.0, metadata={"help": "Injected false-negative rate (0: none)."})
    noise_seed: int = field(default=0, metadata={"help": "Seed of the injected noise."})
    answer_prefix: str = field(default="", metadata={"help": "Prepended to completions before verifying (the answer "
                                                        "start the prompt wrote, e.g. \\boxed{)."})
    appeal_verifier: VerifierKind = field(default=VerifierKind.MATH_VERIFY, metadata={"help": "Checker of the appeals: "
                                          "rule_based | math_verify | llm (appeal_verifier_model)."})
    appeal_verifier_model: str | None = field(default=None, metadata={"help": "The LLM verifier of appeal_verifier: llm "
                                              "(a path or hub id; TinyV, arXiv 2505.14625: zhangchenxu/TinyV-1.5B)."})
    appeal_verifier_prompts_file: str | None = field(default=None, metadata={"help": "A tinyv_config.json-style file of "
                                                     "verifier prompts (default: TinyV-1.5B's, built in)."})

    def __post_init__(self):
        for name in ("verifier", "appeal_verifier"):
            setattr(self, name, parse_enum(name, getattr(self, name), VerifierKind))
        if self.verifier == VerifierKind.LLM:
            raise ValueError("verifier: 'llm' is for appeals only (appeal_verifier); use rule_based or math_verify")
        if self.appeal_verifier == VerifierKind.LLM and not self.appeal_verifier_model:
            raise ValueError("appeal_verifier_model: appeal_verifier 'llm' needs a model (e.g. zhangchenxu/TinyV-1.5B)")
        try:
            NoiseRates(self.noise_rho0, self.noise_rho1)
        except ValueError as e:
            raise ValueError(f"noise_rho0/noise_rho1: {e}") from None


@dataclass
class CurveArguments:
    """Held-out learning curves during training (``llmpost.benchmarks.math.recipe.HeldOutMathCallback``)."""

    heldout_eval_steps: int = field(default=0, metadata={"help": "Log heldout/pass@1 on the test problems every this "
                                                         "many steps and before the first (0: off)."})
    heldout_num_samples: int = field(default=4, metadata={"help": "Samples per test problem for heldout/pass@1."})

    def __post_init__(self):
        if self.heldout_eval_steps < 0:
            raise ValueError(f"heldout_eval_steps: must be >= 0, got {self.heldout_eval_steps}")
        if self.heldout_num_samples < 1:
            raise ValueError(f"heldout_num_samples: must be >= 1, got {self.heldout_num_samples}")


def build_reward(reward_args: RewardArguments) -> VerifierReward:
    """The training reward: the verifier, through the injected noise channel if any. Under injected noise the clean
    verifier is the monitoring oracle (``noisy/clean_reward``, never used for training)."""
    verifier, oracle = make_verifier(reward_args.verifier), None
    if reward_args.noise_rho0 > 0 or reward_args.noise_rho1 > 0:
        verifier = NoisyVerifier(verifier, reward_args.noise_rho0, reward_args.noise_rho1, reward_args.noise_seed)
        oracle = verifier.clean  # its base verdict on the same completion: verified once
    return VerifierReward(verifier, name="verifier", prefix=reward_args.answer_prefix, oracle=oracle)


def build(argv=None, trainer_cls=None):
    """Parse the config and build the trainer and the evaluator (also used by the tests, with a capturing subclass;
    ``None``: this module's ``NoisyGRPOTrainer``, looked up at call time so that a test can swap it)."""
    trainer_cls = trainer_cls or NoisyGRPOTrainer
    model_args, data_args, reward_args, curve_args, args = parse_config(
        (ModelConfig, MathArguments, RewardArguments, CurveArguments, NoisyGRPOConfig), argv)
    check_launch(args)
    check_output_dir(args.output_dir, data_args.overwrite_output_dir or bool(args.resume_from_checkpoint))
    evaluate = math_evaluator(data_args)  # loads the test problems now: a bad file stops before training
    tokenizer = load_tokenizer(model_args.model_name_or_path, args.trust_remote_code)
    problems = data_args.problems("train")
    train = grpo_prompts(problems, data_args)
    if data_args.max_prompt_tokens:  # TRL 1.16 has no prompt length limit of its own
        train = drop_long_prompts(train, tokenizer, data_args, data_args.max_prompt_tokens)
    model = load_model(model_args, args.trust_remote_code)
    trainer = trainer_cls(
        model, reward_funcs=build_reward(reward_args), args=args, train_dataset=train, processing_class=tokenizer,
        peft_config=get_peft_config(model_args), appeal_verifier=make_appeal_verifier(reward_args, problems),
    )
    if curve_args.heldout_eval_steps:
        settings = MathEvalSettings(num_samples=curve_args.heldout_num_samples, temperature=data_args.eval_temperature,
                                    max_new_tokens=data_args.eval_max_new_tokens, seed=data_args.eval_seed,
                                    batch_size=args.per_device_eval_batch_size)  # fmt: skip
        trainer.add_callback(HeldOutMathCallback(trainer, data_args.problems("test"), data_args,
                                                 every=curve_args.heldout_eval_steps, settings=settings))  # fmt: skip
    return trainer, evaluate


def main(argv=None):
    trainer, evaluate = build(argv)
    trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint)
    save_and_evaluate(trainer, evaluate)
    return trainer


if __name__ == "__main__":
    run_main(main)
