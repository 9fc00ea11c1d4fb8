"""A model family is a decoder plus a tuple of modality encoders.

    ModelBundle(family)
      decoder      the HF causal LM body at `decoder_path` (packed attention backend, Liger, FSDP units)
      encoders     (ModalityEncoder("vision"), ModalityEncoder("audio"), ...)
      hidden       embed text, let each encoder scatter its features at its placeholders (or add its
                   dummy times zero), run the decoder on the packed stream -> `family_hidden_states`

A `ModalityEncoder` carries everything the rest of the framework needs about one encoder: where its
module sits in the HF model (`module_path`) and its parameter prefixes per component (freezing,
per-component learning rates), its placeholder token ids, its typed inputs (`inputs_type`: a
dataclass whose fields are the batch keys it consumes; the encoder receives one of them, never a
dict of string keys), `embed`
(one call per micro-batch on all its items, rmpad inside), `dummy` (the smallest forward, run when a
micro-batch has none of its media so every sharded rank runs the same blocks), `flops` and the
kernel hook the patcher applies once (`patch_kernels`). Modules are looked up on the model given to
each call, never captured, so the same encoder serves a wrapped (FSDP2 / DeepSpeed) model.

Kernel facts the patcher reads from an encoder (it names no family class): `patch_kernels` binds the
encoder's own attention modules to a varlen kernel, `padded_mlps` names the MLP classes that run on
tensor-core friendly padded weights on CUDA (kernels/encoder_mlp.py).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lmms_engine.kernels.encoder_mlp import PaddableMlp


@dataclass(frozen=True)
class ModalityEncoder:
    """Base of every encoder; families subclass it (models/qwen2_5_vl/vision.py, models/qwen2_audio/modality.py)."""

    name: str  # "vision" | "audio" | ...
    module_path: str  # the encoder's module in the HF model, e.g. "model.visual"
    components: Mapping[str, str]  # component -> parameter-name prefix, e.g. {"vision": "model.visual."}
    placeholder_ids: tuple[int, ...]  # token ids its features replace
    # A dataclass of the batch fields it consumes (absent when a micro-batch has none of its media),
    # with a `present` property: whether a micro-batch's fields hold any of its items.
    inputs_type: type
    unit_classes: tuple[type[nn.Module], ...] = field(default=())  # its blocks: FSDP2 units, encoder checkpointing
    padded_mlps: tuple[PaddableMlp, ...] = field(default=())  # its MLPs padded to a multiple of 128 on CUDA

    def module(self, model: nn.Module) -> nn.Module:
        return operator.attrgetter(self.module_path)(model)

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """The batch keys it consumes: its inputs' fields."""
        return tuple(f.name for f in dataclasses.fields(self.inputs_type))

    def typed_inputs(self, values: Mapping[str, torch.Tensor | None]) -> Any:
        """Its part of a micro-batch's inputs as `inputs_type`; None when the micro-batch has none."""
        inputs = self.inputs_type(**{key: values.get(key) for key in self.batch_keys})
        return inputs if inputs.present else None

    def embed(self, model: nn.Module, input_ids: torch.Tensor, embeds: torch.Tensor, inputs) -> torch.Tensor:
        """`embeds` with this encoder's features at its placeholders (one encoder call for all items)."""
        raise NotImplementedError

    def dummy(self, model: nn.Module) -> torch.Tensor:
        """The encoder (and projector) on the smallest input: its output keeps sharded ranks in step."""
        raise NotImplementedError

    def flops(self, model: nn.Module, batch: Mapping, trainable: bool) -> float:
        """Training FLOPs of this encoder on the micro-batch's real items (forward only when frozen)."""
        raise NotImplementedError

    def trainable(self, model: nn.Module) -> bool:
        """Whether any of its parameters trains (a frozen encoder costs its forward only)."""
        return any(p.requires_grad for p in self.module(model).parameters())

    def patch_kernels(self, model: nn.Module, device: torch.device) -> list[str]:
        """Bind this encoder's packed (bidirectional varlen) kernels; called once by the KernelPatcher."""
        return []

    def embed_or_dummy(self, model: nn.Module, input_ids: torch.Tensor, embeds: torch.Tensor, inputs) -> torch.Tensor:
        """The encoder runs exactly once per micro-batch: on its items, or on the dummy input when there
        are none. The dummy's features enter multiplied by zero: no effect on the loss, but every rank
        runs every sharded block the same number of times (FSDP2 / ZeRO-3 gathers match) and gradients
        (zeros) reach every parameter."""
        if inputs is not None:
            return self.embed(model, input_ids, embeds, inputs)
        return embeds + 0.0 * self.dummy(model).sum().to(embeds.dtype)

    def embed_for_decoder(self, model: nn.Module, input_ids: torch.Tensor, embeds: torch.Tensor,
                          inputs) -> tuple[torch.Tensor, dict]:
        """`embed_or_dummy`, plus keyword arguments for the decoder call: an encoder whose features
        also enter later decoder layers (Qwen3-VL's DeepStack) returns them here; most return none."""
        return self.embed_or_dummy(model, input_ids, embeds, inputs), {}


def scatter_features(embeds: torch.Tensor, input_ids: torch.Tensor, placeholders: Sequence[tuple[int, str]],
                     features: torch.Tensor, source: str, detail: Callable[[], str] | None = None) -> torch.Tensor:
    """Put `features` rows, in order, at the placeholders (token id, label) given: all of the first
    id's placeholders, then the next id's ... A count mismatch is a clear error naming the labels,
    the `source` that made the features and `detail()` (made only then: it may read device tensors)."""
    masks = [input_ids == token_id for token_id, _ in placeholders]
    counts = [int(mask.sum()) for mask in masks]
    if sum(counts) != features.shape[0]:
        found = ", ".join(f"{count} {label}" for count, (_, label) in zip(counts, placeholders))
        raise ValueError(
            f"{found} placeholder tokens but the {source} made {features.shape[0]} features"
            f"{detail() if detail else ''}; "
            "input_ids and the media inputs do not belong together"
        )
    for mask, part in zip(masks, features.split(counts)):
        embeds = embeds.masked_scatter(mask.unsqueeze(-1), part.to(embeds.dtype))
    return embeds


def family_hidden_states(model: nn.Module, decoder_path: str, encoders: Sequence[ModalityEncoder],
                         input_ids: torch.Tensor, position_ids: torch.Tensor, **inputs) -> torch.Tensor:
    """Decoder output (B, T, hidden) of a packed row (cu_seq_lens_* in `inputs`) or a padded batch
    (attention_mask). Each encoder takes its batch keys out of `inputs`, as its typed inputs; the rest
    (attention kwargs) reach the decoder only, never an encoder."""
    decoder = operator.attrgetter(decoder_path)(model)
    media = {key: inputs.pop(key, None) for encoder in encoders for key in encoder.batch_keys}
    if not encoders:
        return decoder(input_ids=input_ids, position_ids=position_ids, use_cache=False, **inputs).last_hidden_state
    embeds = decoder.get_input_embeddings()(input_ids)
    extras = {}
    for encoder in encoders:
        embeds, more = encoder.embed_for_decoder(model, input_ids, embeds, encoder.typed_inputs(media))
        extras.update(more)
    return decoder(inputs_embeds=embeds, position_ids=position_ids, use_cache=False, **extras, **inputs).last_hidden_state
