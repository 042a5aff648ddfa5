"""RMU (arXiv 2403.03218): the :class:`RmuConfig` fields and the :class:`RmuTrainer` (``method: rmu``).

The loss is :func:`llmpost.losses.rmu.rmu_loss`; this file reads the layer-``rmu_layer`` hidden states through a
forward hook, restricts training to the parameters named by ``rmu_param_patterns`` and provides the frozen model's
retain states. The data are the tokenised forget/retain rows every unlearning method gets
(:class:`llmpost.data.unlearn.ForgetRetainDataset`), so ``recipes/npo_tofu.py`` and ``recipes/npo_muse.py`` run it.

Frozen retain states (``reference``): every parameter except the trained ones is frozen, so the frozen model differs
from the trained one only in those parameters, and its states at the input of the first trained layer ``k`` equal the
trained model's. ``auto``/``model`` therefore keep a copy of the trained parameters only (for the authors' choice, 3
``down_proj`` matrices, 2% of a 7B model) and recompute layers ``k .. rmu_layer`` from the captured input of layer
``k`` with those frozen values (``torch.func.functional_call``): no second model, and 3 extra layer passes for the
authors' setup. A separate frozen copy (``_prepare_ref_model``, as the other trainers' ``reference: model``) is kept
only when it cannot be avoided: under DeepSpeed ZeRO-3 (sharded parameters), when a trained parameter lies outside the
decoder layers, or when ``ref_model_name_or_path`` names another model. With LoRA, ``auto`` uses the base model
(adapters disabled). ``precomputed`` is refused: the retain rows are redrawn every epoch.

The forward passes stop after layer ``rmu_layer`` (the later layers are left out of the decoder's layer list while the
hook runs, and one position of logits is computed): RMU never needs them. Not under ZeRO-3, whose parameter fetching
follows the recorded module order; there the full forward runs.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field

import torch
from accelerate.utils import is_peft_model
from torch import nn

from llmpost.losses.rmu import RmuReduction, control_vector, rmu_loss
from llmpost.trainers.metrics import check_finite_loss
from llmpost.trainers.reference import Reference
from llmpost.trainers.unlearn import UnlearnConfig, UnlearnMethod, UnlearnTrainer, _concat_padded
from llmpost.utils import StrEnum, parse_enum


class RmuTokens(StrEnum):
    ALL = "all"  # every real token (prompt included): the authors' (raw text, all tokens but padding)
    ANSWER = "answer"  # the labelled tokens only (TOFU: the answer): open-unlearning's labels != -100


def default_param_patterns(layer: int) -> list[str]:
    """The authors' trained parameters: ``down_proj`` of layers ``layer-2 .. layer`` (``--layer_ids 5,6,7 --param_ids 6``
    for ``--layer_id 7``; parameter 6 of a Llama/Mistral decoder layer is ``mlp.down_proj.weight``), or its LoRA
    matrices when the model is a PEFT model."""
    ids = "|".join(str(i) for i in range(max(layer - 2, 0), layer + 1))
    return [rf"model\.layers\.({ids})\.mlp\.down_proj\.(weight|lora_[AB]\.[^.]+\.weight)"]


@dataclass
class RmuConfig(UnlearnConfig):
    """:class:`~llmpost.trainers.unlearn.UnlearnConfig` plus RMU's fields (read only by ``method: rmu``). Defaults: the
    authors' Zephyr-7B WMDP run (``centerforaisafety/wmdp``, ``rmu/unlearn.py`` and ``run_rmu_zephyr.ipynb``)."""

    rmu_layer: int = field(default=7, metadata={"help": "Decoder layer whose output states are steered (0-based; authors: --layer_id 7)."})
    rmu_param_patterns: list[str] | None = field(default=None, metadata={"help": "Regexes (re.fullmatch) of the trained parameters' names (PEFT prefix 'base_model.model.' removed); all other parameters are frozen. Default: down_proj of layers rmu_layer-2..rmu_layer (authors: --layer_ids 5,6,7 --param_ids 6)."})
    rmu_steering_coeff: float = field(default=6.5, metadata={"help": "c, the norm of the control vector (authors' Zephyr run: --steering_coeffs 6.5; their script default 20)."})
    rmu_alpha: float = field(default=1200.0, metadata={"help": "Retain weight (authors' Zephyr run: --alpha 1200; script default 100)."})
    rmu_seed: int = field(default=42, metadata={"help": "Seed of the random control direction (authors: --seed 42)."})
    rmu_reduction: RmuReduction = field(default=RmuReduction.EXAMPLE, metadata={"help": "'example' (each row's token mean, then the mean; batch-split invariant, open-unlearning) or 'token' (the authors' mean over the micro-batch's tokens); equal for fixed-length chunks."})
    rmu_tokens: RmuTokens = field(default=RmuTokens.ALL, metadata={"help": "Tokens whose states count: 'all' real tokens (authors) or 'answer', the labelled ones (open-unlearning)."})

    def __post_init__(self):
        self.rmu_reduction = parse_enum("rmu_reduction", self.rmu_reduction, RmuReduction)
        self.rmu_tokens = parse_enum("rmu_tokens", self.rmu_tokens, RmuTokens)
        if self.rmu_layer < 0:
            raise ValueError(f"rmu_layer: must be >= 0, got {self.rmu_layer}")
        if not self.rmu_steering_coeff > 0:
            raise ValueError(f"rmu_steering_coeff: must be > 0, got {self.rmu_steering_coeff}")
        if not self.rmu_alpha >= 0:
            raise ValueError(f"rmu_alpha: must be >= 0, got {self.rmu_alpha}")
        if self.rmu_param_patterns is not None:
            if not self.rmu_param_patterns:
                raise ValueError("rmu_param_patterns: must name at least one pattern (or be unset for the default)")
            for p in self.rmu_param_patterns:
                try:
                    re.compile(p)
                except re.error as e:
                    raise ValueError(f"rmu_param_patterns: {p!r} is not a regular expression ({e})") from None
        super().__post_init__()
        if self.method == UnlearnMethod.RMU and self.reference == Reference.PRECOMPUTED:
            raise ValueError("reference: 'precomputed' is not available for method rmu (the retain rows are redrawn "
                             "every epoch); use auto, model or peft_base")

    @property
    def param_patterns(self) -> list[str]:
        return self.rmu_param_patterns if self.rmu_param_patterns is not None else default_param_patterns(self.rmu_layer)


def decoder_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """``(decoder, decoder.layers)`` of a causal LM (``model.get_decoder()``; PEFT models unwrapped)."""
    if is_peft_model(model):
        model = model.get_base_model()
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"method rmu: cannot find the decoder layers of {type(model).__name__} (expected get_decoder().layers)")
    return decoder, layers


class RmuTrainer(UnlearnTrainer):
    """RMU on :class:`~llmpost.data.unlearn.ForgetRetainDataset` rows; ``args`` is a :class:`RmuConfig`."""

    def __init__(self, model, args: RmuConfig, train_dataset, processing_class, ref_model=None, peft_config=None, **kwargs):
        if args.method != UnlearnMethod.RMU:
            raise ValueError(f"RmuTrainer runs method 'rmu', got method {args.method.value!r}")
        if args.padding_free:
            raise ValueError("padding_free: not supported by method rmu (it reads padded hidden states); set it false")
        if args.rmu_alpha > 0 and getattr(train_dataset, "retain", None) is None:
            raise ValueError("rmu_alpha > 0 needs retain rows (ForgetRetainDataset(forget, retain))")
        depth = len(decoder_layers(model)[1])
        if args.rmu_layer >= depth:
            raise ValueError(f"rmu_layer: {args.rmu_layer} is beyond the model's depth ({depth} decoder layers, "
                             f"0..{depth - 1})")
        super().__init__(model, args, train_dataset, processing_class, peft_config=peft_config, **kwargs)
        self.decoder, self.layers = decoder_layers(self.model)
        self.layer_index = {id(p): i for i, layer in enumerate(self.layers) for p in layer.parameters()}
        self.trained = self._restrict_parameters(args)
        self.zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        self._choose_reference(args, ref_model)
        hidden = self.accelerator.unwrap_model(self.model).config.get_text_config().hidden_size
        self.control = control_vector(hidden, args.rmu_steering_coeff, args.rmu_seed)

    # ----- set-up ----------------------------------------------------------------------------------------------------
    def _restrict_parameters(self, args: RmuConfig) -> dict[str, nn.Parameter]:
        """Freeze every parameter but those matching ``rmu_param_patterns`` (among the trainable ones: the LoRA
        matrices of a PEFT model); the optimizer then holds only those. Errors name the key."""
        named = {re.sub(r"^base_model\.model\.", "", n): p for n, p in self.model.named_parameters() if p.requires_grad}
        patterns, trained = args.param_patterns, {}
        for pattern in patterns:
            hits = {n: p for n, p in named.items() if re.fullmatch(pattern, n)}
            if not hits and args.rmu_param_patterns is not None:
                raise ValueError(f"rmu_param_patterns: {pattern!r} matches no trainable parameter (names look like "
                                 f"{list(named)[:3]})")
            trained.update(hits)
        if not trained:
            raise ValueError(f"rmu_param_patterns: the default {patterns} matches no trainable parameter of this model "
                             f"(names look like {list(named)[:3]}); set rmu_param_patterns")
        late = [n for n, p in trained.items() if self.layer_index.get(id(p), -1) > args.rmu_layer]
        if late:
            raise ValueError(f"rmu_param_patterns: {late} lie after rmu_layer {args.rmu_layer} and cannot change its states")
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in trained.values():
            p.requires_grad_(True)
        return trained

    def _choose_reference(self, args: RmuConfig, ref_model) -> None:
        """Frozen retain states: the PEFT base, a snapshot of the trained parameters, or a frozen copy (module doc)."""
        self.frozen, self.first_layer = None, None
        inside = all(id(p) in self.layer_index for p in self.trained.values())
        peft = is_peft_model(self.model)
        copy = (ref_model is not None or args.ref_model_name_or_path is not None or self.zero3 or not inside
                or (peft and args.reference == Reference.MODEL))
        if peft and args.reference in (Reference.AUTO, Reference.PEFT_BASE) and ref_model is None:
            self.setup_reference(True, needs_logits=True)  # -> peft_base
        elif args.reference == Reference.PEFT_BASE or copy:
            self.setup_reference(True, needs_logits=True, ref_model=ref_model)  # peft_base error, or a frozen copy
        else:  # snapshot of the trained parameters, per layer, by name within the layer
            self.reference = Reference.MODEL
            names = {id(p): n for n, p in self.model.named_parameters()}
            self.frozen = {}
            for p in self.trained.values():
                i = self.layer_index[id(p)]
                local = names[id(p)].split(f"layers.{i}.", 1)[1]
                self.frozen.setdefault(i, {})[local] = p.detach().clone()
            self.first_layer = min(self.frozen)

    # ----- forward passes --------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _until_layer(self, layers: nn.ModuleList, decoder: nn.Module):
        """Run only layers ``0 .. rmu_layer`` (the decoder's layer list shortened for the call); not under ZeRO-3."""
        if self.zero3:
            yield
            return
        decoder.layers = nn.ModuleList(list(layers)[: self.args.rmu_layer + 1])
        try:
            yield
        finally:
            decoder.layers = layers

    def _states(self, model, ids, att, layers=None, decoder=None, capture_input: int | None = None):
        """Layer-``rmu_layer`` output states of a forward of ``model``; with ``capture_input=k``, also the positional
        and keyword arguments layer ``k`` was called with."""
        layers, decoder = (self.layers, self.decoder) if layers is None else (layers, decoder)
        seen = {}

        def out_hook(module, args, output):
            seen["out"] = output[0] if isinstance(output, tuple) else output

        def in_hook(module, args, kwargs):
            seen["in"] = (args, kwargs)

        handles = [layers[self.args.rmu_layer].register_forward_hook(out_hook)]
        if capture_input is not None:
            handles.append(layers[capture_input].register_forward_pre_hook(in_hook, with_kwargs=True))
        try:
            with self._until_layer(layers, decoder):
                model(input_ids=ids, attention_mask=att, use_cache=False, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()
        return seen["out"], seen.get("in")

    @torch.no_grad()
    def _frozen_from_input(self, layer_input) -> torch.Tensor:
        """Layers ``first_layer .. rmu_layer`` again from the captured input, with the trained parameters' frozen values."""
        from torch.func import functional_call

        args, kwargs = layer_input
        h = args[0] if args else kwargs.pop("hidden_states")
        args = args[1:]
        for i in range(self.first_layer, self.args.rmu_layer + 1):
            frozen = self.frozen.get(i, {})
            for name, value in frozen.items():
                if value.device != h.device or value.dtype != h.dtype:  # once: the engine may move/cast the model later
                    frozen[name] = value = value.to(h.device, h.dtype)
            out = functional_call(self.layers[i], frozen, (h.detach(), *args), kwargs, strict=False)
            h = out[0] if isinstance(out, tuple) else out
        return h

    @torch.no_grad()
    def _reference_states(self, ids, att) -> torch.Tensor:
        """Layer-``rmu_layer`` states of the frozen model (PEFT base or separate copy)."""
        with self._reference_ctx() as ref:
            if self.reference == Reference.PEFT_BASE:
                return self._states(ref, ids, att)[0]
            unwrapped = ref.module if hasattr(ref, "module") else ref
            decoder, layers = decoder_layers(unwrapped)
            return self._states(ref, ids, att, layers, decoder)[0]

    # ----- loss ------------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args: RmuConfig = self.args
        has_retain = args.rmu_alpha > 0 and "retain_input_ids" in inputs
        parts = ["forget"] + (["retain"] if has_retain else [])
        rows = [(inputs[f"{p}_input_ids"], inputs[f"{p}_attention_mask"], inputs[f"{p}_labels"]) for p in parts]
        ids, att, lab = _concat_padded(rows, self.pad_id) if has_retain else rows[0]
        snapshot = has_retain and self.frozen is not None
        states, layer_input = self._states(model, ids, att, capture_input=self.first_layer if snapshot else None)
        mask = att.bool() if args.rmu_tokens == RmuTokens.ALL else lab != -100
        n_f, width_f = rows[0][0].shape
        control = self.control.to(states.device)
        f_states, f_mask = states[:n_f, :width_f], mask[:n_f, :width_f]
        r_states = r_frozen = r_mask = None
        if has_retain:
            width_r = rows[1][0].shape[1]
            r_states, r_mask = states[n_f:, :width_r], mask[n_f:, :width_r]
            if snapshot:
                r_frozen = self._frozen_from_input(layer_input)[n_f:, :width_r]
            else:
                r_frozen = self._reference_states(*rows[1][:2])
        forget, retain = rmu_loss(f_states, control, f_mask, r_states, r_frozen, r_mask, args.rmu_reduction)
        loss = args.gamma * forget.mean()
        with torch.no_grad():
            dist = (f_states.float() - control).norm(dim=-1)
            metrics = {"forget_loss": forget, "forget_dist_to_control": (dist * f_mask).sum(-1) / f_mask.sum(-1).clamp(min=1),
                       "forget_state_norm": (f_states.float().norm(dim=-1) * f_mask).sum(-1) / f_mask.sum(-1).clamp(min=1)}
        if retain is not None:
            loss = loss + args.rmu_alpha * retain.mean()
            metrics["retain_loss"] = retain
        check_finite_loss(self, loss)
        self.record_metrics(metrics)
        return loss
