"""Qwen2 / Qwen2.5 causal language models: from a hub id or local path, or randomly initialised
from a preset's config (conf/model/*.yaml). A text family: the decoder alone, no encoders."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import AutoConfig, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from lmms_engine.models.base import ModelBundle
from lmms_engine.models.builder_utils import check_model_type, check_text_vocab_fits, make_model, plain
from lmms_engine.models.tokenizer import build_byte_tokenizer

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
    if pretrained is None and not config:
        raise ValueError(f"model {name!r}: set model.pretrained or give a preset config to initialise from")
    tok = load_tokenizer(tokenizer or pretrained, trust_remote_code)
    hf_config = _hf_config(pretrained, config, trust_remote_code)
    check_text_vocab_fits(hf_config, tok, name)  # on the config, before any weights are made or read
    model = make_model(Qwen2ForCausalLM, hf_config, pretrained, trust_remote_code, SUPPORTED_MODEL_TYPES, structure_only)
    return ModelBundle(model=model, tokenizer=tok, name=name, decoder_units=(Qwen2DecoderLayer,))


def _hf_config(pretrained: str | None, config: Mapping[str, Any] | None, trust_remote_code: bool) -> Qwen2Config:
    if pretrained:
        hf_config = AutoConfig.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        check_model_type(hf_config.model_type, pretrained, SUPPORTED_MODEL_TYPES)
        return hf_config
    return Qwen2Config(**plain(config))


def load_tokenizer(path: str | None, trust_remote_code: bool):
    """A hub id's or local path's tokenizer; None = the built-in byte-level ChatML tokenizer."""
    if path is None:
        return build_byte_tokenizer()
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
