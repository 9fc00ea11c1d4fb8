"""What every model family hands to the rest of the framework."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class ModelBundle:
    """A built model with its tokenizer and the facts other components need about it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    # Module classes that FSDP2 shards one by one (decoder layers, vision / audio blocks).
    shard_units: tuple[type[nn.Module], ...] = field(default_factory=tuple)
