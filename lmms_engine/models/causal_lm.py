"""What the text families (Qwen2 / 2.5, Qwen3: the decoder alone, no encoders) share: the tokenizer,
the config (a checkpoint's, checked for its type, or a preset's) and the build."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import AutoTokenizer, PreTrainedConfig, PreTrainedModel
from torch import nn

from lmms_engine.models.base import ModelBundle
from lmms_engine.models.builder_utils import check_text_vocab_fits, checkpoint_config, make_model, plain
from lmms_engine.models.tokenizer import build_byte_tokenizer


def builtin_tokenizer(config: Mapping[str, Any] | None = None):
    """A text family's download-free tokenizer (the byte-level ChatML one; a preset's config does
    not change it)."""
    return build_byte_tokenizer()


def load_tokenizer(path: str | None, trust_remote_code: bool):
    """A hub id's or local path's tokenizer; None = the built-in byte-level ChatML tokenizer."""
    if path is None:
        return build_byte_tokenizer()
    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def text_config(config_class: type[PreTrainedConfig], supported: tuple[str, ...], pretrained: str | None,
                config: Mapping[str, Any] | None, trust_remote_code: bool) -> PreTrainedConfig:
    """The checkpoint's config (its model type one of `supported`), or `config_class` from a preset."""
    if pretrained:
        return checkpoint_config(pretrained, trust_remote_code, supported)
    return config_class(**plain(config))


def build_causal_lm(model_class: type[PreTrainedModel], config_class: type[PreTrainedConfig],
                    decoder_layer: type[nn.Module], supported: tuple[str, ...], *, name: str,
                    pretrained: str | None, tokenizer: str | None, config: Mapping[str, Any] | None,
                    trust_remote_code: bool, structure_only: bool) -> ModelBundle:
    """A text family's bundle: pretrained, structure only, or a seeded random init from `config`."""
    if pretrained is None and not config:
        raise ValueError(f"model {name!r}: set model.pretrained or give a preset config to initialise from")
    tok = load_tokenizer(tokenizer or pretrained, trust_remote_code)
    hf_config = text_config(config_class, supported, pretrained, config, trust_remote_code)
    check_text_vocab_fits(hf_config, tok, name)  # on the config, before any weights are made or read
    model = make_model(model_class, hf_config, pretrained, trust_remote_code, supported, structure_only)
    return ModelBundle(model=model, tokenizer=tok, name=name, decoder_units=(decoder_layer,))
