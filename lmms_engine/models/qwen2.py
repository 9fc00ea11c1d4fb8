"""Qwen2 / Qwen2.5 causal language models: from a hub id or local path, or randomly initialised
from a preset's config (conf/model/*.yaml). A text family: the decoder alone, no encoders; Liger
patches it with liger-kernel's public `apply_liger_kernel_to_qwen2`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from lmms_engine.models.base import ModelBundle
from lmms_engine.models.causal_lm import build_causal_lm, builtin_tokenizer
from lmms_engine.models.family import ModelFamily

SUPPORTED_MODEL_TYPES = ("qwen2",)


def build_qwen2(
    name: str,
    pretrained: str | None = None,
    tokenizer: str | None = None,
    config: Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
    structure_only: bool = False,
) -> ModelBundle:
    """Build a Qwen2-family causal LM.

    pretrained: hub id or local path; None = random init from `config` (a Qwen2Config dict).
    tokenizer: hub id or local path; None = the pretrained model's tokenizer, or the built-in
      byte-level ChatML tokenizer when initialising randomly.
    structure_only: the module tree from the config, no weights read (ranks that receive them).
    """
    return build_causal_lm(Qwen2ForCausalLM, Qwen2Config, Qwen2DecoderLayer, SUPPORTED_MODEL_TYPES,
                           name=name, pretrained=pretrained, tokenizer=tokenizer, config=config, trust_remote_code=trust_remote_code,
                           structure_only=structure_only)


FAMILY = ModelFamily(
    name="qwen2",
    builder="lmms_engine.models.qwen2.build_qwen2",
    model_types=SUPPORTED_MODEL_TYPES,
    presets=("tiny", "qwen2", "qwen2_5_0_5b", "qwen2_5_1_5b", "qwen2_5_7b"),
    bench_preset="qwen2_5_1_5b",
    builtin_processor=builtin_tokenizer,
)
