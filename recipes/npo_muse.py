"""Unlearn the MUSE-News forget corpus with NPO (or any UnlearnTrainer method: grad_ascent, grad_diff, npo_rt, simnpo,
flat, idk_dpo), save, evaluate on MUSE-News; or, with ``--sustainability true``, MUSE's sustainability protocol (C6).

    python recipes/npo_muse.py --config configs/npo_muse_tiny.yaml                                # CPU, tiny model
    python recipes/npo_muse.py --config configs/npo_muse_tiny.yaml --method idk_dpo --output_dir runs/muse_tiny/idk_dpo
    python recipes/npo_muse.py --config configs/npo_muse_tiny.yaml --sustainability true --output_dir runs/muse_tiny/sust
    accelerate launch --config_file configs/accelerate/zero3.yaml recipes/npo_muse.py --config configs/npo_muse.yaml

The forget corpus (``raw/forget``) and the retain corpus (``retain_split`` or ``retain_file``) are cut into
``max_length``-token chunks as muse_bench's baselines cut them (:mod:`llmpost.data.corpus`); every forget chunk is
paired with a retain chunk drawn per (seed, epoch, row), as in the TOFU recipe (muse_bench pairs chunk ``i`` with
retain chunk ``i mod n``). Writes the model (or LoRA adapter) to ``output_dir`` and ``output_dir/eval/MUSE_EVAL.json``
+ ``MUSE_SUMMARY.json`` (privleak against the retrained model's ``retain_logs_path``, else MUSE's published AUC).

FLAT and IdkDPO on raw text are llmpost's adaptation (MUSE has no questions to refuse): the first
``template_prompt_tokens`` tokens of forget chunk ``i`` (default 32, BOS included) are its prompt; the template answer
is that prompt followed by a refusal from ``template_answers_path`` (one per line) or llmpost's built-in list
(:data:`llmpost.benchmarks.muse.data.DEFAULT_TEMPLATE_ANSWERS`) and EOS, labelled on the refusal and EOS only; for these two
methods the forget chunk is labelled after the same prompt, so both answers continue the same text.

Sustainability (MUSE C6, muse_bench ``baselines/scripts/unlearn_news_sust.sh``): requests ``sust/forget_1`` ..
``sust/forget_{sust_requests}`` are unlearned one after another, request k starting from the model request k-1 saved
(its own reference for NPO / IdkDPO, as in muse_bench), each saved to ``output_dir/request_k`` and evaluated into
``output_dir/request_k/eval``; ``output_dir/SUSTAINABILITY.md`` and ``SUSTAINABILITY.json`` hold one row per request.
MUSE starts its loop from the model that unlearned ``raw/forget`` (identical to ``sust/forget_1``); here request 1 is
that unlearning, from ``model_name_or_path``. Resuming a sustainability run is not supported.
"""

from __future__ import annotations

import copy
import os

from trl import ModelConfig
from trl.trainer.utils import get_peft_config

from llmpost.benchmarks.muse.data import MuseArguments
from llmpost.benchmarks.muse.evaluate import SUMMARY_KEYS
from llmpost.benchmarks.muse.recipe import label_after_prefix, muse_evaluator, muse_template_answers, muse_train_chunks
from llmpost.config import ConfigError, check_launch, parse_config, run_main
from llmpost.data.unlearn import ForgetRetainDataset
from llmpost.eval.stats import markdown_table
from llmpost.models import load_model, load_saved_model, load_tokenizer
from llmpost.pipeline import save_and_evaluate
from llmpost.trainers.checkpoint_eval import plan_checkpoint_eval
from llmpost.trainers.rmu import RmuConfig, RmuTrainer
from llmpost.trainers.unlearn import NEEDS_TEMPLATES, UnlearnMethod, UnlearnTrainer, uses_retain
from llmpost.utils import atomic_write_json, atomic_write_text, check_output_dir


def forget_data(data_args, args, tokenizer, forget, retain):
    """The unlearning dataset of one forget corpus (FLAT / IdkDPO: prompt-masked chunks and template answers)."""
    templates = None
    if args.method in NEEDS_TEMPLATES:
        templates = muse_template_answers(data_args, tokenizer, forget, args.max_length)
        forget = label_after_prefix(forget, data_args.template_prompt_tokens)
    seed = args.data_seed if args.data_seed is not None else args.seed
    return ForgetRetainDataset(forget, retain if uses_retain(args) else None, seed=seed, templates=templates)


def unlearn(model_args, args, tokenizer, dataset, evaluate, model_path=None, end_training=True, retain_logs_path=None):
    """Train one request from ``model_path`` (default: ``model_name_or_path``), save, evaluate; the summary. With an
    ``eval_strategy``, MUSE is evaluated on the checkpoints during training and ``select`` picks the reported one."""
    checkpoint_eval = plan_checkpoint_eval(args, evaluate, "muse", retain_logs_path)
    dtype = model_args.dtype or "float32"
    model = load_model(model_args, args.trust_remote_code) if model_path is None else load_saved_model(model_path, dtype)
    trainer_cls = RmuTrainer if args.method == UnlearnMethod.RMU else UnlearnTrainer
    trainer = trainer_cls(model, args, dataset, tokenizer, peft_config=get_peft_config(model_args),
                          checkpoint_eval=checkpoint_eval)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    return save_and_evaluate(trainer, evaluate, end_training=end_training)


def sustainability(model_args, data_args, args, tokenizer, retain, evaluate):
    if args.resume_from_checkpoint or not data_args.eval_after_training:
        raise ConfigError("sustainability: needs eval_after_training true and no resume_from_checkpoint")
    splits = [f"sust/forget_{k}" for k in range(1, data_args.sust_requests + 1)]
    datasets = [forget_data(data_args, args, tokenizer,
                            muse_train_chunks(data_args, tokenizer, args.max_length, include_retain=False,
                                              forget_split=split)[0], retain)
                for split in splits]  # fmt: skip  -- every request's data is checked before any training
    rows, model_path = [], None
    for k, (split, dataset) in enumerate(zip(splits, datasets), start=1):
        request_args = copy.deepcopy(args)
        request_args.output_dir = os.path.join(args.output_dir, f"request_{k}")
        summary = unlearn(model_args, request_args, tokenizer, dataset, evaluate, model_path,
                          end_training=k == len(splits), retain_logs_path=data_args.retain_logs_path)
        model_path = request_args.output_dir
        if summary is not None:  # main process
            rows.append({"request": k, "forget_split": split, **summary})
            table = markdown_table({r["request"]: r for r in rows}, ("forget_split", *SUMMARY_KEYS), "request")
            atomic_write_json(os.path.join(args.output_dir, "SUSTAINABILITY.json"), {"method": args.method.value, "requests": rows})
            atomic_write_text(os.path.join(args.output_dir, "SUSTAINABILITY.md"), table + "\n")
    if rows:
        print(table)


def main(argv=None):
    model_args, data_args, args = parse_config((ModelConfig, MuseArguments, RmuConfig), argv)  # UnlearnConfig + rmu_*
    check_launch(args)
    check_output_dir(args.output_dir, data_args.overwrite_output_dir or bool(args.resume_from_checkpoint))
    tokenizer = load_tokenizer(model_args.model_name_or_path, args.trust_remote_code)
    evaluate = muse_evaluator(data_args, tokenizer)  # checks the evaluation's inputs before training
    plan_checkpoint_eval(args, evaluate, "muse", data_args.retain_logs_path)  # and the selection rule's
    _, retain = muse_train_chunks(data_args, tokenizer, args.max_length, include_forget=False, include_retain=uses_retain(args))
    if data_args.sustainability:
        return sustainability(model_args, data_args, args, tokenizer, retain, evaluate)
    forget, _ = muse_train_chunks(data_args, tokenizer, args.max_length, include_retain=False)
    unlearn(model_args, args, tokenizer, forget_data(data_args, args, tokenizer, forget, retain), evaluate,
            retain_logs_path=data_args.retain_logs_path)


if __name__ == "__main__":
    run_main(main)
