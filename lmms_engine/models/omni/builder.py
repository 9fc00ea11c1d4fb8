"""Building an omni model: from a saved omni checkpoint, from a Qwen2.5-VL checkpoint plus a
Qwen2-Audio checkpoint (its parts), or randomly from a preset with the built-in processor."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoProcessor,
    PreTrainedTokenizerBase,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2AudioEncoderConfig,
    Qwen2AudioForConditionalGeneration,
)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLDecoderLayer

from lmms_engine.models import qwen2_5_vl as vl
from lmms_engine.models import qwen2_audio as audio
from lmms_engine.models.base import ModelBundle
from lmms_engine.models.builder_utils import check_model_type, check_text_vocab_fits, plain
from lmms_engine.models.mrope import MropeSpec
from lmms_engine.models.omni.modeling import (
    DECODER_PATH,
    MODEL_TYPE,
    LmmsOmniConfig,
    LmmsOmniForConditionalGeneration,
    omni_encoders,
)
from lmms_engine.models.omni.processing import LmmsOmniProcessor, builtin_processor, omni_processor_from_parts
from lmms_engine.models.random_init import build_random
from lmms_engine.parallel.model_init import building_partitioned

log = logging.getLogger(__name__)


def build_omni(
    name: str,
    pretrained: str | None = None,
    vision_lm: str | None = None,
    audio_encoder: str | None = None,
    processor: str | None = None,
    config: Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
    structure_only: bool = False,
) -> ModelBundle:
    """Build an omni model and its processor, one of three ways:

    pretrained: a saved omni checkpoint (hub id or local path), with its processor;
    vision_lm + audio_encoder: a Qwen2.5-VL checkpoint (decoder, vision tower, processor) and a
      Qwen2-Audio checkpoint whose audio encoder and feature extractor are taken; the audio
      projector starts random;
    neither: random init from `config` ({vl_config: a Qwen2_5_VLConfig dict, audio_config: a
      Qwen2AudioEncoderConfig dict}) with the built-in byte-level processor; token ids from it.
    processor: hub id or local path overriding the processor these would give.
    structure_only: the module tree from the config, no weights read (ranks that receive them).
    """
    if pretrained and (vision_lm or audio_encoder):
        raise ValueError(f"model {name!r}: set model.pretrained (an omni checkpoint) or model.vision_lm + "
                         "model.audio_encoder (its parts), not both")
    if bool(vision_lm) != bool(audio_encoder):
        raise ValueError(f"model {name!r}: building from parts needs both model.vision_lm (a Qwen2.5-VL checkpoint) "
                         "and model.audio_encoder (a Qwen2-Audio checkpoint)")
    if not (pretrained or vision_lm or config):
        raise ValueError(f"model {name!r}: set model.pretrained, model.vision_lm + model.audio_encoder, "
                         "or give a preset config to initialise from")
    omni_processor = _load_processor(pretrained, vision_lm, audio_encoder, processor, config, trust_remote_code)
    hf_config = _hf_config(pretrained, vision_lm, audio_encoder, config, trust_remote_code, omni_processor.tokenizer, name)
    _check_config(hf_config, omni_processor, name)
    if structure_only:
        model = LmmsOmniForConditionalGeneration(hf_config)
    elif pretrained:
        model = LmmsOmniForConditionalGeneration.from_pretrained(pretrained, dtype=torch.float32,
                                                                 trust_remote_code=trust_remote_code)
    else:
        model = build_random(LmmsOmniForConditionalGeneration, hf_config)  # whole or ZeRO-3 partitioned
        if vision_lm:
            _load_parts(model, vision_lm, audio_encoder, trust_remote_code, name)
    return ModelBundle(
        model=model,
        tokenizer=omni_processor.tokenizer,
        name=name,
        decoder_units=(Qwen2_5_VLDecoderLayer,),
        encoders=omni_encoders(hf_config),
        decoder_path=DECODER_PATH,
        processor=omni_processor,
        data_extras={"mrope_spec": MropeSpec.from_config(hf_config.vl_config)},
    )


def _load_processor(pretrained, vision_lm, audio_encoder, processor, config, trust_remote_code) -> LmmsOmniProcessor:
    if processor or pretrained:
        loaded = AutoProcessor.from_pretrained(processor or pretrained, trust_remote_code=trust_remote_code)
        if not all(hasattr(loaded, piece) for piece in ("image_processor", "feature_extractor", "tokenizer")):
            raise ValueError(
                f"model.processor={processor or pretrained!r} loaded a {type(loaded).__name__}, not an omni processor "
                "with an image_processor, a feature_extractor and a tokenizer"
            )
        return loaded
    if vision_lm:
        vl_processor = vl.load_vl_processor(vision_lm, trust_remote_code, None)
        return omni_processor_from_parts(vl_processor, audio.load_audio_processor(audio_encoder, trust_remote_code, None))
    return builtin_processor(config)


def _hf_config(pretrained, vision_lm, audio_encoder, config, trust_remote_code, tokenizer, name) -> LmmsOmniConfig:
    if pretrained:
        hf_config = AutoConfig.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        if hf_config.model_type != MODEL_TYPE:
            raise ValueError(f"model.pretrained={pretrained!r} is a {hf_config.model_type!r} model, not {MODEL_TYPE!r}; "
                             "for a Qwen2.5-VL + Qwen2-Audio pair use model.vision_lm and model.audio_encoder")
        return hf_config
    audio_id = _audio_token_id(tokenizer, name)
    if vision_lm:
        vl_config = vl.vl_hf_config(vision_lm, None, trust_remote_code, tokenizer, name)
        audio_config = AutoConfig.from_pretrained(audio_encoder, trust_remote_code=trust_remote_code)
        check_model_type(audio_config.model_type, audio_encoder, audio.SUPPORTED_MODEL_TYPES)
        return LmmsOmniConfig(vl_config=vl_config, audio_config=audio_config.audio_config, audio_token_id=audio_id)
    values = plain(config)
    if "audio_token_id" in values and values["audio_token_id"] != audio_id:
        raise ValueError(f"model {name!r}: config.audio_token_id={values['audio_token_id']} but the tokenizer's "
                         f"{audio.AUDIO_PAD} is id {audio_id}; drop audio_token_id from the preset")
    vl_config = vl.vl_hf_config(None, values.get("vl_config") or {}, trust_remote_code, tokenizer, name)
    audio_config = Qwen2AudioEncoderConfig(**(values.get("audio_config") or {}))
    return LmmsOmniConfig(vl_config=vl_config, audio_config=audio_config, audio_token_id=audio_id)


def _audio_token_id(tokenizer: PreTrainedTokenizerBase, name: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(audio.AUDIO_PAD)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"model {name!r}: the tokenizer has no {audio.AUDIO_PAD} token, which the omni model needs")
    return token_id


def _check_config(config: LmmsOmniConfig, processor: LmmsOmniProcessor, name: str) -> None:
    """Token ids, vocabulary and feature geometry agree with the processor (before any weights)."""
    check_text_vocab_fits(config.vl_config, processor.tokenizer, name)
    vl.check_special_token_ids(config.vl_config, processor.tokenizer, name)
    vl.check_patch_geometry(config.vl_config.vision_config, processor, name)
    audio.check_feature_extractor(config.audio_config, processor, name)
    if config.audio_token_id != _audio_token_id(processor.tokenizer, name):
        raise ValueError(f"model {name!r}: config.audio_token_id={config.audio_token_id} but the processor's tokenizer "
                         f"maps {audio.AUDIO_PAD} to {_audio_token_id(processor.tokenizer, name)}")


def _load_parts(model: LmmsOmniForConditionalGeneration, vision_lm: str, audio_encoder: str,
                trust_remote_code: bool, name: str) -> None:
    """Copy a Qwen2.5-VL checkpoint's weights (same names) and a Qwen2-Audio checkpoint's
    `model.audio_tower.*` into the randomly initialised model; only the projector stays random."""
    if building_partitioned():
        raise ValueError(f"model {name!r}: building from parts under ZeRO-3 is not supported; build it once without "
                         "ZeRO-3, save it (save_pretrained) and set model.pretrained to that folder")
    vl_model = Qwen2_5_VLForConditionalGeneration.from_pretrained(vision_lm, dtype="auto", trust_remote_code=trust_remote_code)
    missing, unexpected = model.load_state_dict(vl_model.state_dict(), strict=False)
    del vl_model
    assert not unexpected, f"Qwen2.5-VL weights without a place in the omni model: {unexpected[:5]}"
    assert all(k.startswith(("model.audio_tower.", "model.audio_projector.")) for k in missing), missing[:5]
    audio_model = Qwen2AudioForConditionalGeneration.from_pretrained(audio_encoder, dtype="auto",
                                                                      trust_remote_code=trust_remote_code)
    model.model.audio_tower.load_state_dict(audio_model.model.audio_tower.state_dict())
    del audio_model
    model.float()
    if model.config.tie_word_embeddings:
        model.tie_weights()
    log.info("omni model %s: Qwen2.5-VL weights from %s, audio encoder from %s, projector random", name, vision_lm,
             audio_encoder)


