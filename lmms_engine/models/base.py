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


def resolve_dtype(name: str):
    """'float32' | 'bfloat16' | 'float16' -> torch dtype, with a clear error otherwise."""
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(dtypes)}")
    return dtypes[name]
