"""A model family added from outside lmms_engine, the way docs/design_principle.md ("Adding a model
family") describes it: its own package (this one: the builder and its `FAMILY` entry), one registry
line (`registry.register(FAMILY)`, done by the test) and its presets (conf/model/ here, found through
`hydra.searchpath`). Nothing in lmms_engine names it.

The family: Llama decoders (transformers' LlamaForCausalLM, a model type lmms_engine has no family
for), text only, the built-in byte-level ChatML tokenizer for random init. Liger would use
liger-kernel's public `apply_liger_kernel_to_llama` (no patch of its own); it declares torch.compile
untried, which the config checks then refuse by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from lmms_engine.models.base import ModelBundle
from lmms_engine.models.causal_lm import build_causal_lm, builtin_tokenizer
from lmms_engine.models.family import ModelFamily, Supports

SUPPORTED_MODEL_TYPES = ("llama",)


def build_tiny_llama(
    name: str,
    pretrained: str | None = None,
    tokenizer: str | None = None,
    config: Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
    structure_only: bool = False,
) -> ModelBundle:
    """A Llama causal LM: pretrained (hub id or local path) or random init from `config`."""
    return build_causal_lm(LlamaForCausalLM, LlamaConfig, LlamaDecoderLayer, SUPPORTED_MODEL_TYPES, name=name,
                           pretrained=pretrained, tokenizer=tokenizer, config=config,
                           trust_remote_code=trust_remote_code, structure_only=structure_only)


FAMILY = ModelFamily(
    name="tiny_llama",
    builder="tests.unit.tiny_family.build_tiny_llama",
    model_types=SUPPORTED_MODEL_TYPES,
    presets=("tiny_llama",),
    builtin_processor=builtin_tokenizer,
    supports=Supports(compile=False, note="the test family has not been tried with torch.compile"),
)
