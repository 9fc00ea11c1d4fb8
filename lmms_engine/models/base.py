"""What every model family hands to the rest of the framework."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lmms_engine.models.flops import train_flops


def lm_hidden_states(model: PreTrainedModel, **inputs) -> torch.Tensor:
    """The decoder's last hidden states (B, T, hidden) for a text-only causal LM."""
    return model.model(use_cache=False, **inputs).last_hidden_state


@dataclass
class ModelBundle:
    """A built model with its tokenizer and the facts other components need about it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    # Module classes that FSDP2 shards one by one (decoder layers, vision / audio blocks).
    shard_units: tuple[type[nn.Module], ...] = field(default_factory=tuple)
    # The shard units that are encoder blocks (parallel.encoder_checkpointing applies to them).
    encoder_units: tuple[type[nn.Module], ...] = field(default_factory=tuple)

    # The batch keys (besides labels) that the model's forward takes.
    input_keys = ("input_ids", "position_ids", "attention_mask")

    def data_inputs(self) -> dict[str, Any]:
        """Extra arguments the data builder needs from the model (processor, position rules)."""
        return {}

    def hidden_states(self, model: PreTrainedModel, **inputs) -> torch.Tensor:
        """Decoder output (B, T, hidden) for one micro-batch; the loss head is applied outside."""
        return lm_hidden_states(model, **inputs)

    def step_flops(self, batch: Mapping[str, Any]) -> float:
        """Training FLOPs (forward + backward) of one micro-batch, for MFU (models/flops.py)."""
        return train_flops(self.model.config, batch["doc_lengths"])

    def components(self) -> dict[str, tuple[str, ...]]:
        """Named parameter groups beyond the language model (freezing, per-component learning
        rates): component -> parameter-name prefixes (relative to the HF model). The language
        model is everything not listed. Prefixes are matched longest first."""
        return {}

    def artifacts(self):
        """What the HF export saves next to the weights (a tokenizer or a processor)."""
        return self.tokenizer
