"""Qwen2 / Qwen2.5 causal language models: from a hub id or local path, or randomly initialised
from a preset's config (conf/model/*.yaml)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from lmms_engine.models.base import ModelBundle
from lmms_engine.models.random_init import build_random
from lmms_engine.models.tokenizer import build_byte_tokenizer

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("qwen2",)


def build_qwen2(
    name: str,
    pretrained: str | None = None,
    tokenizer: str | None = None,
    config: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    structure_only: bool = False,
) -> ModelBundle:
    """Build a Qwen2-family causal LM.

    pretrained: hub id or local path; None = random init from `config` (a Qwen2Config dict).
    tokenizer: hub id or local path; None = the pretrained model's tokenizer, or the built-in
      byte-level ChatML tokenizer when initialising randomly.
    """
    if pretrained is None and not config:
        raise ValueError(f"model {name!r}: set model.pretrained or give a preset config to initialise from")
    if structure_only:  # ranks that receive weights from rank 0: no weight reading, no init cost
        model = Qwen2ForCausalLM(_hf_config(pretrained, config, trust_remote_code))
    elif pretrained:
        model = _load_pretrained(pretrained, trust_remote_code)
    else:
        model = _init_random(config)
    tok = _load_tokenizer(tokenizer or pretrained, trust_remote_code)
    _check_vocab_fits(model, tok, name)
    return ModelBundle(model=model, tokenizer=tok, name=name, shard_units=(Qwen2DecoderLayer,))


def _load_pretrained(path: str, trust_remote_code: bool) -> Qwen2ForCausalLM:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    if model.config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model.pretrained={path!r} is a {model.config.model_type!r} model; "
            f"this builder supports {SUPPORTED_MODEL_TYPES}"
        )
    log.info("loaded pretrained %s (%s)", path, model.config.model_type)
    return model


def _hf_config(pretrained: str | None, config: dict[str, Any] | None, trust_remote_code: bool) -> Qwen2Config:
    if pretrained:
        return AutoConfig.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
    return Qwen2Config(**dict(config))


def _init_random(config: dict[str, Any]) -> Qwen2ForCausalLM:
    # Same weights whole or under ZeRO-3's zero.Init (see models/random_init.py).
    return build_random(Qwen2ForCausalLM, _hf_config(None, config, False))


def _load_tokenizer(path: str | None, trust_remote_code: bool):
    if path is None:
        return build_byte_tokenizer()
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def _check_vocab_fits(model, tokenizer, name: str) -> None:
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(
            f"model {name!r}: tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{model.config.vocab_size}; use a matching tokenizer or raise model.config.vocab_size"
        )
