"""What the model-family builders share: config coercion, token-id defaults, pretrained loading,
the consistency checks that run before any weights are made or read, and the common tail of the
multimodal builders (`build_family_bundle`: checks, model, bundle)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from lmms_engine.models.base import ModelBundle

log = logging.getLogger(__name__)


def plain(value):
    """Nested mappings / sequences (e.g. Hydra's DictConfig) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [plain(item) for item in value]
    return value


def with_tokenizer_ids(text_config: dict, tokenizer: PreTrainedTokenizerBase) -> dict:
    """bos / eos / pad ids from the tokenizer unless the preset names them (transformers' defaults
    are Qwen's ids, outside a small vocabulary)."""
    defaults = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return {**defaults, **text_config}


def preset_token_id(values: Mapping[str, Any], field: str, token: str, tokenizer: PreTrainedTokenizerBase, name: str,
                    family: str) -> int:
    """The tokenizer's id of the special `token` that config `field` holds (a random-init preset's
    config); the preset may name it too, but then it must agree. family: who needs the token."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"model {name!r}: the tokenizer has no {token} token, which {family} needs")
    if field in values and values[field] != token_id:
        raise ValueError(
            f"model {name!r}: config.{field}={values[field]} but the tokenizer's {token} is id {token_id}; "
            f"drop {field} from the preset (it is taken from the tokenizer) or use the matching tokenizer"
        )
    return token_id


def check_model_type(model_type: str, path: str, supported: tuple[str, ...]) -> None:
    if model_type not in supported:
        raise ValueError(f"model.pretrained={path!r} is a {model_type!r} model; this builder supports {supported}")


def checkpoint_config(path: str, trust_remote_code: bool, supported: tuple[str, ...]):
    """A hub id's or local path's config, whose model type this builder supports."""
    hf_config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    check_model_type(hf_config.model_type, path, supported)
    return hf_config


def load_pretrained(model_class: type[PreTrainedModel], path: str, trust_remote_code: bool,
                    supported: tuple[str, ...]) -> PreTrainedModel:
    """fp32 weights of a hub id or local path, whose model type this builder supports."""
    model = model_class.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    check_model_type(model.config.model_type, path, supported)
    log.info("loaded pretrained %s (%s)", path, model.config.model_type)
    return model


def check_text_vocab_fits(config, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """The decoder (a multimodal config's text config) must have an embedding row per token."""
    text_config = config.get_text_config()
    if len(tokenizer) > text_config.vocab_size:
        key = "model.config.vocab_size" if text_config is config else "model.config.text_config.vocab_size"
        raise ValueError(
            f"model {name!r}: tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{text_config.vocab_size}; use a matching tokenizer or raise {key}"
        )


def make_model(model_class: type[PreTrainedModel], hf_config, pretrained: str | None, trust_remote_code: bool,
               supported: tuple[str, ...], structure_only: bool) -> PreTrainedModel:
    """The module tree only (ranks that receive weights from rank 0; under the meta device no
    initialisation either), a pretrained checkpoint's weights, or a seeded random init."""
    from lmms_engine.models.random_init import build_random

    if structure_only:
        return model_class(hf_config)
    if pretrained:
        return load_pretrained(model_class, pretrained, trust_remote_code, supported)
    return build_random(model_class, hf_config)  # whole, or partitioned under ZeRO-3's zero.Init


def require_weights_or_config(name: str, pretrained: str | None, config: Mapping[str, Any] | None) -> None:
    if pretrained is None and not config:
        raise ValueError(f"model {name!r}: set model.pretrained or give a preset config to initialise from")


@dataclass(frozen=True)
class FamilyParts:
    """What a multimodal family (a decoder at `model.language_model` beside its encoders) brings to
    `build_family_bundle`."""

    model_class: type[PreTrainedModel]
    supported: tuple[str, ...]  # model types its builder accepts
    decoder_units: tuple[type[nn.Module], ...]
    check: Callable[[Any, Any, str], None]  # (hf_config, processor, name): its own config checks
    encoders: Callable[[Any], tuple]  # hf_config -> its ModalityEncoders
    data_extras: Callable[[Any], Mapping[str, Any]] = lambda hf_config: {}


def build_family_bundle(parts: FamilyParts, name: str, processor, hf_config, pretrained: str | None,
                        trust_remote_code: bool, structure_only: bool) -> ModelBundle:
    """Check the config against the processor (before any weights are made or read), make the model
    and bundle it with its processor."""
    check_text_vocab_fits(hf_config, processor.tokenizer, name)
    parts.check(hf_config, processor, name)
    model = make_model(parts.model_class, hf_config, pretrained, trust_remote_code, parts.supported, structure_only)
    return ModelBundle(
        model=model,
        tokenizer=processor.tokenizer,
        name=name,
        decoder_units=parts.decoder_units,
        encoders=parts.encoders(hf_config),
        decoder_path="model.language_model",
        processor=processor,
        data_extras=parts.data_extras(hf_config),
    )
