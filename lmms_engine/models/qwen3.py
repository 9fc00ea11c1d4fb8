"""Qwen3 dense causal language models: from a hub id or local path, or randomly initialised from a
preset's config (conf/model/*qwen3*.yaml). A text family: the decoder alone, no encoders.

Qwen3 differs from Qwen2 by an RMSNorm on each head's queries and keys (before rotary) and an
explicit head_dim; both act per token, so packed rows need nothing beyond Qwen2's: the packed
attention backend sees the normed, rotated q / k like any other, and the Liger patch
(kernels/liger.py, "qwen3") covers the q / k norms too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

from lmms_engine.models.base import ModelBundle
from lmms_engine.models.causal_lm import build_causal_lm, text_config

SUPPORTED_MODEL_TYPES = ("qwen3",)


def build_qwen3(
    name: str,
    pretrained: str | None = None,
    tokenizer: str | None = None,
    config: Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
    structure_only: bool = False,
) -> ModelBundle:
    """Build a Qwen3 dense causal LM.

    pretrained: hub id or local path; None = random init from `config` (a Qwen3Config dict).
    tokenizer: hub id or local path; None = the pretrained model's tokenizer, or the built-in
      byte-level ChatML tokenizer when initialising randomly.
    structure_only: the module tree from the config, no weights read (ranks that receive them).
    """
    return build_causal_lm(Qwen3ForCausalLM, Qwen3Config, Qwen3DecoderLayer, SUPPORTED_MODEL_TYPES,
                           name=name, pretrained=pretrained, tokenizer=tokenizer, config=config, trust_remote_code=trust_remote_code,
                           structure_only=structure_only)


def qwen3_hf_config(pretrained: str | None, config: Mapping[str, Any] | None, trust_remote_code: bool) -> Qwen3Config:
    """The checkpoint's config (refused unless qwen3), or one from a preset."""
    return text_config(Qwen3Config, SUPPORTED_MODEL_TYPES, pretrained, config, trust_remote_code)
