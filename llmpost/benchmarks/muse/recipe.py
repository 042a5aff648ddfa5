"""MUSE in the recipes: forget/retain corpora cut into chunks, template answers on raw text, and the evaluator of a
saved model."""

from __future__ import annotations

from llmpost.benchmarks.muse.data import DEFAULT_TEMPLATE_ANSWERS, MuseArguments, muse_texts
from llmpost.data.corpus import chunk_texts, load_texts
from llmpost.data.unlearn import TemplateAnswers, load_template_answers
from llmpost.eval import Evaluator
from llmpost.ops import IGNORE_INDEX
from llmpost.utils import DataError


def muse_train_chunks(data_args: MuseArguments, tokenizer, max_length: int, *, include_forget: bool = True,
                      include_retain: bool = True, forget_split: str | None = None):  # fmt: skip
    """``(forget, retain)`` corpora cut into ``max_length``-token chunks (:func:`llmpost.data.corpus.chunk_texts`);
    ``None`` for a part not asked for. The forget corpus is ``forget_split`` (default ``data_args.forget_file``, else
    ``data_args.forget_split``),
    limited to ``forget_text_indices``; the retain corpus is ``retain_file`` or else ``retain_split``, limited to the
    first ``max_retain_texts`` documents."""
    forget = retain = None
    if include_forget:
        split = forget_split or data_args.forget_split
        if data_args.forget_file and forget_split is None:
            split, texts = data_args.forget_file, load_texts(data_args.forget_file)
        else:
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
    per line) or :data:`llmpost.benchmarks.muse.data.DEFAULT_TEMPLATE_ANSWERS`."""
    n = data_args.template_prompt_tokens
    if n >= max_length:
        raise DataError(f"template_prompt_tokens ({n}) must be below max_length ({max_length})")
    path = data_args.template_answers_path
    answers = load_template_answers(path) if path else list(DEFAULT_TEMPLATE_ANSWERS)
    prefixes = [ids[:n] for ids in forget["input_ids"]]
    return TemplateAnswers(answers, _PrefixWithAnswer(tokenizer, prefixes, max_length))


def muse_evaluator(data_args: MuseArguments, tokenizer=None) -> Evaluator:
    """The MUSE-News evaluation of a recipe's saved model, as an :data:`Evaluator`. Its inputs (the evaluated splits,
    the retrained model's log) are checked now, so that a missing file stops the recipe before training."""
    if data_args.eval_after_training:
        from llmpost.benchmarks.muse.evaluate import load_muse_eval_splits, resolve_reference_auc

        load_muse_eval_splits(data_args.data_dir, data_args.eval_max_examples)
        if tokenizer is not None and data_args.mia_reference_model_path:  # the Reference attack's model
            from llmpost.eval.mia_passes import check_reference_tokenizer

            check_reference_tokenizer(tokenizer, data_args.mia_reference_model_path)  # a DataError naming the key
        try:
            resolve_reference_auc(data_args.eval_protocol, retain_logs_path=data_args.retain_logs_path)
        except ValueError as e:  # RetainLogError: a log without a usable AUC
            raise DataError(str(e)) from None

    def evaluate(model, tokenizer, args, eval_dir: str) -> dict:
        from llmpost.benchmarks.muse.evaluate import MuseEvalSettings, evaluate_muse

        settings = MuseEvalSettings(
            data_dir=data_args.data_dir, protocol=data_args.eval_protocol, batch_size=args.per_device_eval_batch_size,
            max_examples=data_args.eval_max_examples, verbmem_max_new_tokens=data_args.eval_verbmem_max_new_tokens,
            knowmem_max_new_tokens=data_args.eval_knowmem_max_new_tokens,
            mia_reference_model_path=data_args.mia_reference_model_path,
        )  # fmt: skip
        return evaluate_muse(model, tokenizer, settings, output_dir=eval_dir,
                             retain_logs_path=data_args.retain_logs_path)  # fmt: skip

    return evaluate if data_args.eval_after_training else None
