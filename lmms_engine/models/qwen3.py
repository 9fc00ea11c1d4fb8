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

from transformers import AutoConfig, Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer

from lmms_engine.models.base import ModelBundle
from lmms_engine.models.builder_utils import check_model_type, check_text_vocab_fits, make_model, plain
from lmms_engine.models.qwen2 import load_tokenizer

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
    if pretrained is None and not config:
        raise ValueError(f"model {name!r}: set model.pretrained or give a preset config to initialise from")
    tok = load_tokenizer(tokenizer or pretrained, trust_remote_code)
    hf_config = qwen3_hf_config(pretrained, config, trust_remote_code)
    check_text_vocab_fits(hf_config, tok, name)  # on the config, before any weights are made or read
    model = make_model(Qwen3ForCausalLM, hf_config, pretrained, trust_remote_code, SUPPORTED_MODEL_TYPES, structure_only)
    return ModelBundle(model=model, tokenizer=tok, name=name, decoder_units=(Qwen3DecoderLayer,))


def qwen3_hf_config(pretrained: str | None, config: Mapping[str, Any] | None, trust_remote_code: bool) -> Qwen3Config:
    if pretrained:
        hf_config = AutoConfig.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        check_model_type(hf_config.model_type, pretrained, SUPPORTED_MODEL_TYPES)
        return hf_config
    return Qwen3Config(**plain(config))
