"""Steps the recipes share: tokenised splits (TOFU, MUSE), template answers, saving, and evaluating the saved model
(on every process) with a benchmark's evaluation callable."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from .data.corpus import chunk_texts, load_texts
from .data.files import DataError
from .data.muse import DEFAULT_TEMPLATE_ANSWERS, MuseArguments, muse_texts
from .data.tofu import TemplateArgs, TofuArguments, encode_qa, first_authors, load_split, tokenize_qa
from .data.unlearn import TemplateAnswers, load_template_answers
from .ops import IGNORE_INDEX
from .utils import atomic_write_json, atomic_write_text


def tofu_train_splits(data_args: TofuArguments, tokenizer, max_length: int, include_forget: bool = True):
    """Tokenised ``(forget, retain)`` splits; retain limited to ``num_retain_authors`` when set."""
    template = TemplateArgs.from_obj(data_args)
    retain = first_authors(load_split(data_args.retain_split, data_args.data_dir), data_args.num_retain_authors)
    retain = tokenize_qa(retain, tokenizer, template, max_length)
    forget = None
    if include_forget:
        forget = tokenize_qa(load_split(data_args.forget_split, data_args.data_dir), tokenizer, template, max_length)
    return forget, retain


class _QuestionWithAnswer:
    """Picklable ``encode_fn`` for :class:`TemplateAnswers`: forget row ``i``'s question with a given answer."""

    def __init__(self, tokenizer, template: TemplateArgs, questions: list[str], max_length: int):
        self.tokenizer, self.template, self.questions, self.max_length = tokenizer, template, questions, max_length

    def __call__(self, row: int, answer: str) -> dict:
        return encode_qa(self.tokenizer, self.template, self.questions[row], answer, self.max_length)


def tofu_template_answers(data_args: TofuArguments, tokenizer, max_length: int) -> TemplateAnswers:
    """Template answers (FLAT, IdkDPO) for the forget split: ``template_answers_path``, by default TOFU's
    ``idontknow.jsonl`` in ``data_dir``; each is tokenised as the answer to the forget row's question."""
    path = data_args.template_answers_path
    if path is None:
        if not data_args.data_dir:
            raise DataError("template_answers_path: not set (FLAT and IdkDPO need template answers, e.g. TOFU's "
                            "idontknow.jsonl, one refusal per line)")
        path = str(Path(data_args.data_dir) / "idontknow.jsonl")
    questions = list(load_split(data_args.forget_split, data_args.data_dir)["question"])
    encode = _QuestionWithAnswer(tokenizer, TemplateArgs.from_obj(data_args), questions, max_length)
    return TemplateAnswers(load_template_answers(path), encode)


def tofu_evaluator(data_args: TofuArguments) -> Evaluator:
    """The TOFU evaluation of a recipe's saved model, as an :data:`Evaluator`."""

    def evaluate(model, tokenizer, args, eval_dir: str) -> dict:
        from .eval.tofu import evaluate_tofu

        return evaluate_tofu(
            model, tokenizer, data_dir=data_args.data_dir, forget_split=data_args.forget_split,
            template=TemplateArgs.from_obj(data_args), batch_size=args.per_device_eval_batch_size,
            max_length=args.max_length, max_new_tokens=data_args.eval_max_new_tokens,
            retain_logs_path=data_args.retain_logs_path, output_dir=eval_dir, max_examples=data_args.eval_max_examples,
        )  # fmt: skip

    return evaluate if data_args.eval_after_training else None


# ----------------------------------------------------------------------------------------------------------------------
# MUSE


def muse_train_chunks(data_args: MuseArguments, tokenizer, max_length: int, *, include_forget: bool = True,
                      include_retain: bool = True, forget_split: str | None = None):  # fmt: skip
    """``(forget, retain)`` corpora cut into ``max_length``-token chunks (:func:`llmpost.data.corpus.chunk_texts`);
    ``None`` for a part not asked for. The forget corpus is ``forget_split`` (default ``data_args.forget_split``),
    limited to ``forget_text_indices``; the retain corpus is ``retain_file`` or else ``retain_split``, limited to the
    first ``max_retain_texts`` documents."""
    forget = retain = None
    if include_forget:
        split = forget_split or data_args.forget_split
        texts = muse_texts(split, data_args.data_dir)
        if data_args.forget_text_indices:
            bad = [i for i in data_args.forget_text_indices if not 0 <= i < len(texts)]
            if bad:
                raise DataError(f"forget_text_indices: {bad} out of range for {split} ({len(texts)} documents)")
            texts = [texts[i] for i in data_args.forget_text_indices]
        forget = chunk_texts(texts, tokenizer, max_length, name=f"forget corpus {split}")
    if include_retain:
        if data_args.retain_file:
            name, texts = f"retain corpus {data_args.retain_file}", load_texts(data_args.retain_file)
        elif data_args.retain_split:
            name, texts = f"retain corpus {data_args.retain_split}", muse_texts(data_args.retain_split, data_args.data_dir)
        else:
            raise DataError("no retain corpus: set retain_split (MUSE: raw/retain1) or retain_file")
        retain = chunk_texts(texts[: data_args.max_retain_texts], tokenizer, max_length, name=name)
    return forget, retain


def label_after_prefix(chunks, prefix_tokens: int):
    """Chunks with labels ``-100`` over their first ``prefix_tokens`` tokens (FLAT / IdkDPO on raw text: the forget
    continuation and the template answer then share the prompt)."""

    def fn(row):
        return {"labels": [IGNORE_INDEX] * prefix_tokens + row["input_ids"][prefix_tokens:]}

    return chunks.map(fn, desc="Masking prompts")


class _PrefixWithAnswer:
    """Picklable ``encode_fn`` for :class:`TemplateAnswers`: chunk ``i``'s first tokens, then the template answer
    (tokenised without special tokens) and EOS; labels on the answer and EOS only."""

    def __init__(self, tokenizer, prefixes: list[list[int]], max_length: int):
        self.tokenizer, self.prefixes, self.max_length = tokenizer, prefixes, max_length

    def __call__(self, row: int, answer: str) -> dict:
        prefix = list(self.prefixes[row])
        ids = (prefix + self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id])
        ids = ids[: self.max_length]
        labels = ([IGNORE_INDEX] * len(prefix) + ids[len(prefix) :])[: len(ids)]
        return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


def muse_template_answers(data_args: MuseArguments, tokenizer, forget, max_length: int) -> TemplateAnswers:
    """FLAT / IdkDPO template answers on raw text (llmpost's adaptation: MUSE has no questions): the prompt of chunk
    ``i`` is its first ``template_prompt_tokens`` tokens (BOS included); the answers are ``template_answers_path`` (one
    per line) or :data:`llmpost.data.muse.DEFAULT_TEMPLATE_ANSWERS`."""
    n = data_args.template_prompt_tokens
    if n >= max_length:
        raise DataError(f"template_prompt_tokens ({n}) must be below max_length ({max_length})")
    path = data_args.template_answers_path
    answers = load_template_answers(path) if path else list(DEFAULT_TEMPLATE_ANSWERS)
    prefixes = [ids[:n] for ids in forget["input_ids"]]
    return TemplateAnswers(answers, _PrefixWithAnswer(tokenizer, prefixes, max_length))


def muse_evaluator(data_args: MuseArguments) -> Evaluator:
    """The MUSE-News evaluation of a recipe's saved model, as an :data:`Evaluator`. Its inputs (the evaluated splits,
    the retrained model's log) are checked now, so that a missing file stops the recipe before training."""
    if data_args.eval_after_training:
        from .eval.muse import load_muse_eval_splits, resolve_reference_auc

        load_muse_eval_splits(data_args.data_dir, data_args.eval_max_examples)
        try:
            resolve_reference_auc(data_args.eval_protocol, retain_logs_path=data_args.retain_logs_path)
        except ValueError as e:  # RetainLogError: a log without a usable AUC
            raise DataError(str(e)) from None

    def evaluate(model, tokenizer, args, eval_dir: str) -> dict:
        from .eval.muse import evaluate_muse

        return evaluate_muse(
            model, tokenizer, data_dir=data_args.data_dir, batch_size=args.per_device_eval_batch_size,
            protocol=data_args.eval_protocol, retain_logs_path=data_args.retain_logs_path, output_dir=eval_dir,
            max_examples=data_args.eval_max_examples, verbmem_max_new_tokens=data_args.eval_verbmem_max_new_tokens,
            knowmem_max_new_tokens=data_args.eval_knowmem_max_new_tokens,
        )  # fmt: skip

    return evaluate if data_args.eval_after_training else None


def math_evaluator(data_args) -> Evaluator | None:
    """pass@k on the configured MATH (or synthetic arithmetic) test problems, as an :data:`Evaluator`; ``data_args``
    is a :class:`llmpost.data.math.MathArguments`. The problems are loaded now, so a bad file stops the recipe before
    training."""
    if not data_args.eval_after_training:
        return None
    problems = data_args.problems("test")

    def evaluate(model, tokenizer, args, eval_dir: str) -> dict:
        from .eval.math import evaluate_math

        # The prompt truncation length: the SFT/DCO config's max_length; GRPO's config has none (prompts are short).
        return evaluate_math(
            model, tokenizer, problems, data_args, output_dir=eval_dir, num_samples=data_args.eval_num_samples,
            temperature=data_args.eval_temperature, top_p=data_args.eval_top_p,
            max_new_tokens=data_args.eval_max_new_tokens, seed=data_args.eval_seed,
            batch_size=args.per_device_eval_batch_size, max_length=getattr(args, "max_length", None) or 2048,
            backend=data_args.generation_backend,
            vllm_model=args.output_dir if data_args.generation_backend == "vllm" else None,
            max_problems=data_args.eval_max_problems,
        )  # fmt: skip

    return evaluate


PRETRAIN_EVAL_FILE = "PRETRAIN_EVAL.json"


def pretrain_evaluator(validation) -> Evaluator | None:
    """Held-out language-modelling loss of a pretraining recipe's saved model: the token-mean negative
    log-likelihood over every target token of the packed validation rows (and its perplexity), rows sharded over
    processes, written to ``eval_dir/PRETRAIN_EVAL.json``. ``None`` without a validation split."""
    if validation is None:
        return None
    rows = [list(r) for r in validation["input_ids"]]

    def evaluate(model, tokenizer, args, eval_dir: str) -> dict:
        from tqdm.auto import tqdm

        from .eval.shard import sharded_map, world
        from .ops import token_logps

        batch = max(1, args.per_device_eval_batch_size)

        def score(chunk: list[list[int]]) -> list[tuple[float, int]]:
            out = []
            model.eval()
            with torch.no_grad():
                for i in tqdm(range(0, len(chunk), batch), desc="validation loss", disable=world()[1] != 0):
                    ids = torch.tensor(chunk[i : i + batch], device=model.device)
                    logps, mask = token_logps(model, ids, torch.ones_like(ids), ids)
                    out += [(-lp.sum().item(), int(m.sum().item())) for lp, m in zip(logps, mask)]
            return out

        scored = sharded_map(score, rows, [len(r) for r in rows])
        nll, tokens = sum(s for s, _ in scored), sum(n for _, n in scored)
        summary = {"eval_loss": nll / tokens, "perplexity": math.exp(nll / tokens), "tokens": tokens,
                   "sequences": len(rows)}  # fmt: skip
        if world()[1] == 0:
            atomic_write_json(os.path.join(eval_dir, PRETRAIN_EVAL_FILE), summary)
        return summary

    return evaluate


class HeldOutMathCallback(transformers.TrainerCallback):
    """Learning curves on held-out MATH (or arithmetic) problems: before the first step and every ``every`` optimizer
    steps, sample ``num_samples`` completions per problem from the model being trained, grade them with
    ``math_grading.is_correct`` (the clean checker), and log ``heldout/pass@1`` (mean over problems of the fraction
    correct) and ``heldout/pass@1_stderr`` (its standard error across problems) at that step.

    Runs on every process (problems sharded, as in ``evaluate_math``); the parameters are gathered for generation
    under ZeRO-3 (``trl.models.unwrap_model_for_generation``). The entry goes through ``transformers.Trainer.log``,
    not a subclass's ``log``, so that trainers that average their own metrics per logging interval (TRL's GRPO) keep
    their cadence. Sampling is seeded (``seed``, the same at every evaluation), so two runs are compared on the same
    random stream.
    """

    def __init__(self, trainer, problems, template, every: int, num_samples: int = 4, temperature: float = 1.0,
                 max_new_tokens: int = 32, seed: int = 0, batch_size: int = 64, max_length: int = 2048):
        if every < 1 or num_samples < 1:
            raise ValueError(f"every and num_samples must be >= 1, got every={every}, num_samples={num_samples}")
        self.trainer, self.problems, self.template, self.every = trainer, list(problems), template, every
        self.kw = dict(num_samples=num_samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                       batch_size=batch_size, max_length=max_length)

    def evaluate(self) -> dict:
        from trl.models import unwrap_model_for_generation

        from .eval.math import evaluate_math

        trainer = self.trainer
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
            was_training = model.training
            model.eval()
            try:
                summary = evaluate_math(model, trainer.processing_class, self.problems, self.template, output_dir=None,
                                        **self.kw)
            finally:
                model.train(was_training)
        p1 = summary["pass@k"]["1"]
        logs = {"heldout/pass@1": p1["mean"], "heldout/pass@1_stderr": p1["stderr"]}
        should_log = trainer.control.should_log  # the handler's on_log clears it: keep this step's regular log
        transformers.Trainer.log(trainer, logs)
        trainer.control.should_log = should_log
        return logs

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self.evaluate()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.evaluate()


# ----------------------------------------------------------------------------------------------------------------------
# Saving and evaluating


LOG_HISTORY_FILE = "log_history.json"

Evaluator = Callable[..., dict]
"""``evaluate(model, tokenizer, training_args, eval_dir) -> summary``: a benchmark's evaluation of a saved model, run
on every process (items sharded), writing its result files into ``eval_dir`` on the main process."""


def evaluate_saved(trainer, evaluate: Evaluator, eval_dir: str) -> dict | None:
    """Reload the model the trainer saved in ``args.output_dir`` and run ``evaluate`` on it on every process.

    Reloading (rather than evaluating the in-memory model) works the same after DDP, DeepSpeed ZeRO-3 (whose
    parameters are sharded in memory) and LoRA (merged for evaluation). Each process holds one full copy for
    evaluation and scores a shard of the examples; the main process writes the files. Returns the summary on the main
    process, ``None`` elsewhere.
    """
    from .models import load_saved_model

    trainer.accelerator.wait_for_everyone()
    model = load_saved_model(trainer.args.output_dir).to(trainer.args.device)
    summary = evaluate(model, trainer.processing_class, trainer.args, eval_dir)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    trainer.accelerator.wait_for_everyone()
    return summary if trainer.is_world_process_zero() else None


def save_and_evaluate(trainer, evaluate: Evaluator | None, end_training: bool = True) -> dict | None:
    """End of a recipe: save the model (and tokenizer) and the trainer's log history (``log_history.json``, a list of
    the logged dicts) to ``output_dir``, evaluate it into ``output_dir/eval`` with
    ``evaluate`` (``None``: no evaluation), print the summary, and (``end_training``) shut the processes down cleanly.
    Returns the summary on the main process."""
    trainer.save_model(trainer.args.output_dir)  # under ZeRO-3 this gathers the full weights; saves the tokenizer too
    if trainer.is_world_process_zero():  # the training curves, for reports and plots (trainer_state.json needs a checkpoint)
        atomic_write_json(os.path.join(trainer.args.output_dir, LOG_HISTORY_FILE), trainer.state.log_history)
    summary = None
    if evaluate is not None:
        summary = evaluate_saved(trainer, evaluate, os.path.join(trainer.args.output_dir, "eval"))
        if summary is not None:
            print(json.dumps(summary, indent=2))
    trainer.accelerator.wait_for_everyone()
    if end_training:
        trainer.accelerator.end_training()
    return summary


def preference_evaluator(data_args, heldout, model, tokenizer, max_length: int, batch_size: int = 16) -> Evaluator | None:
    """Held-out evaluation of a preference recipe (:mod:`llmpost.eval.preference`), as an :data:`Evaluator`.

    ``model`` is the starting model (the reference of the implicit reward): its held-out log-probs are taken now,
    before training, so no second model is loaded afterwards. ``data_args`` is a
    :class:`llmpost.data.preference.PreferenceArguments`. The judge is built now, so a bad judge path stops the recipe
    before training. Writes ``eval_dir/PREFERENCE_EVAL.json`` (implicit-reward accuracy, win rate after 0..k
    revisions) and ``eval_dir/drafts.jsonl`` (every draft of every held-out prompt)."""
    if not data_args.eval_after_training or heldout is None:
        return None
    from accelerate import PartialState

    from .eval.preference import PREFERENCE_EVAL_FILE, implicit_reward_metrics, pair_logps
    from .eval.winrate import build_judge, revision_win_rates

    templates = data_args.templates()
    judge = build_judge(data_args.judge, data_args.judge_model_path)
    model.to(PartialState().device)  # score on the accelerator (the trainer would move it there anyway)
    ref_chosen, ref_rejected = pair_logps(model, tokenizer, heldout, templates, max_length, batch_size)
    from .data.preference import sft_rows_from_pairs

    gold = sft_rows_from_pairs(heldout)  # one draft chain per distinct prompt; its first pair's chosen answer is the gold
    prompts, references = gold["prompt"], gold["completion"]

    def evaluate(model, tokenizer, args, eval_dir: str) -> dict:
        from .eval.shard import sharded_map, world
        from .generation.revision import self_revise

        chosen, rejected = pair_logps(model, tokenizer, heldout, templates, max_length, batch_size)
        implicit = implicit_reward_metrics(chosen, rejected, ref_chosen, ref_rejected)
        drafts = sharded_map(
            lambda items: self_revise(model, tokenizer, items, k=data_args.num_revisions, templates=templates,
                                      max_new_tokens=data_args.eval_max_new_tokens, batch_size=batch_size,
                                      backend=data_args.generation_backend,
                                      max_prompt_length=data_args.eval_max_prompt_length),
            prompts, [len(p) for p in prompts])  # fmt: skip
        summary = {"implicit_reward": implicit, "judge": judge.name, "num_revisions": data_args.num_revisions,
                   "num_prompts": len(prompts), "num_pairs": len(heldout)}
        if world()[1] == 0:
            summary["revisions"] = revision_win_rates(drafts, prompts, references, judge)
            os.makedirs(eval_dir, exist_ok=True)
            atomic_write_text(os.path.join(eval_dir, "drafts.jsonl"), "".join(
                json.dumps({"prompt": p, "gold": r, "drafts": d}) + "\n" for p, r, d in zip(prompts, references, drafts)))
            atomic_write_json(os.path.join(eval_dir, PREFERENCE_EVAL_FILE), summary)
        return summary

    return evaluate
