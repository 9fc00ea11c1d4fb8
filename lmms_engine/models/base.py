"""What every model family hands to the rest of the framework: one `ModelBundle` shape for all.

A family is a decoder plus a tuple of modality encoders (models/encoders.py). The bundle derives
from them everything the loop, the patcher, the strategies and the optimizer need: the model's batch
keys, the hidden-states forward, the step FLOPs, the components (freezing, per-component learning
rates) and the FSDP2 units. Families differ only in their builder and their encoders.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmms_engine.models.encoders import ModalityEncoder, family_hidden_states
from lmms_engine.models.flops import train_flops

# The batch keys (besides labels) every family's forward takes.
TEXT_INPUT_KEYS = ("input_ids", "position_ids", "attention_mask")


def lm_hidden_states(model: PreTrainedModel, **inputs) -> torch.Tensor:
    """The decoder's last hidden states (B, T, hidden) for a text-only causal LM."""
    return family_hidden_states(model, "model", (), **inputs)


@dataclass
class ModelBundle:
    """A built model with its tokenizer (or processor) and the facts other components need about it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    # Module classes that FSDP2 shards one by one: the decoder layers (the encoders' blocks are added).
    decoder_units: tuple[type[nn.Module], ...] = field(default_factory=tuple)
    encoders: tuple[ModalityEncoder, ...] = field(default_factory=tuple)
    decoder_path: str = "model"  # the decoder body in the HF model ("model.language_model" beside encoders)
    processor: Any = None  # image / video / audio preprocessing and placeholder expansion (None: text only)
    data_extras: Mapping[str, Any] = field(default_factory=dict)  # more for the data builder (e.g. mrope_spec)

    @property
    def input_keys(self) -> tuple[str, ...]:
        """The batch keys (besides labels) that the model's forward takes."""
        return TEXT_INPUT_KEYS + tuple(key for encoder in self.encoders for key in encoder.batch_keys)

    @property
    def shard_units(self) -> tuple[type[nn.Module], ...]:
        return self.decoder_units + self.encoder_units

    @property
    def encoder_units(self) -> tuple[type[nn.Module], ...]:
        """The shard units that are encoder blocks (parallel.encoder_checkpointing applies to them)."""
        return tuple(dict.fromkeys(cls for encoder in self.encoders for cls in encoder.unit_classes))

    def decoder(self, model: nn.Module | None = None) -> nn.Module:
        return operator.attrgetter(self.decoder_path)(model if model is not None else self.model)

    def data_inputs(self) -> dict[str, Any]:
        """Extra arguments the data builder needs from the model (processor, position rules)."""
        return ({"processor": self.processor} if self.processor is not None else {}) | dict(self.data_extras)

    def hidden_states(self, model: nn.Module, **inputs) -> torch.Tensor:
        """Decoder output (B, T, hidden) for one micro-batch; the loss head is applied outside."""
        return family_hidden_states(model, self.decoder_path, self.encoders, **inputs)

    def step_flops(self, batch: Mapping[str, Any]) -> float:
        """Training FLOPs (forward + backward) of one micro-batch, for MFU: the decoder on the real
        documents (models/flops.py) plus each encoder on its real items (frozen parts forward only)."""
        flops = train_flops(self.model.config.get_text_config(), batch["doc_lengths"])
        for encoder in self.encoders:
            flops += encoder.flops(self.model, batch, encoder.trainable(self.model))
        return flops

    def components(self) -> dict[str, tuple[str, ...]]:
        """Named parameter groups beyond the language model (freezing, per-component learning
        rates): component -> parameter-name prefixes (relative to the HF model). The language
        model is everything not listed. Prefixes are matched longest first."""
        return {name: (prefix,) for encoder in self.encoders for name, prefix in encoder.components.items()}

    def artifacts(self):
        """What the HF export saves next to the weights (a processor, else the tokenizer)."""
        return self.processor if self.processor is not None else self.tokenizer
