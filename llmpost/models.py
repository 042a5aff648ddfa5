"""Model and tokenizer loading: local paths first, clear errors, no remote code unless asked."""

from __future__ import annotations

import os

from transformers import AutoModelForCausalLM, AutoTokenizer


class ModelPathError(FileNotFoundError):
    """A model path that looks local does not exist."""


def check_model_path(path: str | None, key: str = "model_name_or_path") -> str:
    """A local directory that exists, or a hub id (``org/name``); a missing local-looking path is an error naming ``key``."""
    if not path:
        raise ModelPathError(f"{key} is not set")
    local = os.path.expanduser(path)
    if os.path.exists(local):
        if not os.path.isdir(local):
            raise ModelPathError(f"{key} {path!r} is not a directory")
        return local
    if os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") != 1:
        raise ModelPathError(f"{key} {path!r} does not exist (hub ids look like 'org/name')")
    return path


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """Tokenizer with a pad token (EOS when the model has none)."""
    tok = AutoTokenizer.from_pretrained(check_model_path(path), trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _model_kwargs(model_args) -> dict:
    """The dtype and attention implementation a TRL ``ModelConfig`` asks for."""
    kwargs = {"dtype": model_args.dtype or "float32"}
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    return kwargs


def load_model(model_args, trust_remote_code: bool = False, path: str | None = None):
    """Causal LM from a TRL ``ModelConfig`` (dtype, attention implementation, revision)."""
    path = check_model_path(path or model_args.model_name_or_path)
    return AutoModelForCausalLM.from_pretrained(path, revision=model_args.model_revision,
                                                trust_remote_code=trust_remote_code, **_model_kwargs(model_args))


def init_model(model_args, config_path: str, seed: int):
    """A randomly initialised causal LM of the architecture in ``config_path`` (a ``config.json`` or its folder),
    seeded, with ``model_args``' dtype and attention implementation."""
    from transformers import AutoConfig, set_seed

    config = AutoConfig.from_pretrained(config_path)
    set_seed(seed)
    return AutoModelForCausalLM.from_config(config, **_model_kwargs(model_args))


def load_saved_model(path: str, dtype="float32", trust_remote_code: bool = False, merge: bool = True):
    """A saved model: full weights, or a PEFT adapter directory (merged into its base unless ``merge=False``)."""
    path = check_model_path(path, "saved model")
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if os.path.isfile(os.path.join(path, "adapter_config.json")):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs)
        return model.merge_and_unload() if merge else model
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


# Liger's loss kernels replace the model's forward; llmpost's trainers compute per-token log-probs themselves
# (TRL's fused LM head, :func:`llmpost.ops.token_logps`), which that forward would bypass.
_LIGER_LOSS_KERNELS = ("fused_linear_cross_entropy", "cross_entropy")


def check_kernel_options(args) -> None:
    """Validate ``use_liger_kernel`` / ``liger_kernel_config`` of an llmpost training config before any work is done.

    Liger kernels are an optional extra (``pip install 'llmpost[liger]'``, CUDA/Triton only). llmpost keeps Liger's
    RMSNorm, RoPE and SwiGLU kernels and turns its loss kernels off: the trainers already apply the LM head in tiles to
    the answer positions only (no ``(B, T, V)`` logits), which is what Liger's fused linear cross-entropy would buy.
    """
    if not getattr(args, "use_liger_kernel", False):
        return
    from transformers.utils import is_liger_kernel_available

    if not is_liger_kernel_available():
        raise ImportError("use_liger_kernel: true needs liger-kernel (CUDA + Triton): pip install 'llmpost[liger]'")
    config = dict(args.liger_kernel_config or {})
    for key in _LIGER_LOSS_KERNELS:
        if config.get(key):
            raise ValueError(f"liger_kernel_config.{key}: must stay off in llmpost's trainers (they compute per-token "
                             "log-probs with TRL's fused LM head; Liger's loss kernels would replace that forward)")
        config[key] = False
    args.liger_kernel_config = config


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad token, else its EOS (open-unlearning and TRL fall back the same way)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    return pad
