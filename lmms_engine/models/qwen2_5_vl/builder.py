"""Qwen2.5-VL (vision tower + Qwen2.5 decoder): from a hub id or local path, or randomly initialised
from a preset's config (conf/model/*qwen2_5_vl*.yaml).

Random init builds its processor in code (no download): the byte-level ChatML tokenizer of
models/tokenizer.py plus Qwen's vision specials, an image processor with small pixel bounds, and a
chat template that renders image / video parts Qwen's way, so placeholder expansion, label masks and
mrope positions behave as they do with the real Qwen2.5-VL processor.

Packed training: the vision tower attends within each image (full or windowed, never causal) while
the decoder attends causally within each sample. transformers' `Qwen2_5_VLModel.forward` hands its
keyword arguments to both, so the decoder's `cu_seq_lens_*` would reach the vision attention.
`vl_hidden_states` keeps them apart; `set_text_attention` gives the decoder alone a packed
attention backend.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from tokenizers import AddedToken
from transformers import (
    AutoProcessor,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLDecoderLayer
from transformers.utils import is_torchvision_available

from lmms_engine.models.base import ModelBundle
from lmms_engine.models.builder_utils import (
    FamilyParts,
    build_family_bundle,
    checkpoint_config,
    plain,
    preset_token_id,
    require_weights_or_config,
    with_tokenizer_ids,
)
from lmms_engine.models.encoders import family_hidden_states
from lmms_engine.models.mrope import MropeSpec
from lmms_engine.models.qwen2_5_vl.vision import QwenVisionEncoder, qwen_vision_encoder
from lmms_engine.models.tokenizer import build_byte_tokenizer

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("qwen2_5_vl",)

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
VISION_SPECIALS = (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)
# Config fields that must name the tokenizer's ids of these specials.
TOKEN_ID_FIELDS = {
    "image_token_id": IMAGE_PAD,
    "video_token_id": VIDEO_PAD,
    "vision_start_token_id": VISION_START,
    "vision_end_token_id": VISION_END,
}

# Built-in processor: images resized to 4..64 merged tokens (28x28 px each) so CPU runs stay small.
BUILTIN_MIN_PIXELS = 4 * 28 * 28
BUILTIN_MAX_PIXELS = 64 * 28 * 28

# ChatML (no default system prompt), with media parts rendered as Qwen2.5-VL's template does:
# one placeholder per image / video, expanded to its visual tokens by the processor.
VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] in ('image', 'image_url') %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] in ('video', 'video_url') %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def qwen2_5_vl_encoders(config: Qwen2_5_VLConfig) -> tuple[QwenVisionEncoder, ...]:
    """The family's encoders: the vision tower (with its merger) at model.visual."""
    return (qwen_vision_encoder("model.visual", config.image_token_id, config.video_token_id),)


def build_qwen2_5_vl(
    name: str,
    pretrained: str | None = None,
    processor: str | None = None,
    config: Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
    structure_only: bool = False,
) -> ModelBundle:
    """Build a Qwen2.5-VL model and its processor.

    pretrained: hub id or local path; None = random init from `config` (a Qwen2_5_VLConfig dict
      with `text_config` and `vision_config`; its special-token ids are taken from the processor).
    processor: hub id or local path; None = the pretrained model's processor, or the built-in
      byte-level processor when initialising randomly.
    structure_only: build the module tree from the config without reading any weights (ranks that
      receive weights from rank 0; build under the meta device to skip initialisation too).
    """
    require_weights_or_config(name, pretrained, config)
    vl_processor = load_vl_processor(processor or pretrained, trust_remote_code, config)
    hf_config = vl_hf_config(pretrained, config, trust_remote_code, vl_processor.tokenizer, name)
    parts = FamilyParts(Qwen2_5_VLForConditionalGeneration, SUPPORTED_MODEL_TYPES, (Qwen2_5_VLDecoderLayer,),
                        check_vl_config, qwen2_5_vl_encoders,
                        lambda hf_config: {"mrope_spec": MropeSpec.from_config(hf_config)})
    return build_family_bundle(parts, name, vl_processor, hf_config, pretrained, trust_remote_code, structure_only)


# ---------------------------------------------------------------- processor


def build_builtin_processor(vision_config: Mapping[str, Any] | None = None) -> Qwen2_5_VLProcessor:
    """The download-free processor: byte-level tokenizer + vision specials, small-image processors.

    vision_config: the model's vision config (dict); its patch geometry is copied so placeholder
    expansion matches the vision tower. None = Qwen2.5-VL's (patch 14, temporal 2, merge 2).
    """
    _require_torchvision()
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    geometry = _patch_geometry(vision_config or {})
    size = {"shortest_edge": BUILTIN_MIN_PIXELS, "longest_edge": BUILTIN_MAX_PIXELS}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, **geometry),
        tokenizer=build_vl_tokenizer(),
        video_processor=Qwen2VLVideoProcessor(size=size, **geometry),
        chat_template=VL_CHAT_TEMPLATE,
    )


def build_vl_tokenizer() -> PreTrainedTokenizerBase:
    """The built-in byte-level ChatML tokenizer with Qwen's vision specials and VL chat template."""
    tokenizer = build_byte_tokenizer()
    specials = [AddedToken(token, special=True, normalized=False) for token in VISION_SPECIALS]
    tokenizer.add_tokens(specials, special_tokens=True)
    tokenizer.chat_template = VL_CHAT_TEMPLATE
    return tokenizer


def _patch_geometry(vision_config: Mapping[str, Any]) -> dict[str, int]:
    """Processor settings that must agree with the vision tower, from its config (or defaults)."""
    return {
        "patch_size": int(vision_config.get("patch_size", 14)),
        "temporal_patch_size": int(vision_config.get("temporal_patch_size", 2)),
        "merge_size": int(vision_config.get("spatial_merge_size", 2)),
    }


def builtin_processor(config: Mapping[str, Any] | None) -> Qwen2_5_VLProcessor:
    """The built-in processor of a preset's `config` (its vision tower's patch geometry)."""
    return build_builtin_processor(plain(config or {}).get("vision_config"))


def load_vl_processor(path: str | None, trust_remote_code: bool, config: Mapping[str, Any] | None):
    if path is None:
        return builtin_processor(config)
    _require_torchvision()
    loaded = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not hasattr(loaded, "image_processor") or not hasattr(loaded, "tokenizer"):
        raise ValueError(
            f"model.processor={path!r} loaded a {type(loaded).__name__}, not a vision-language processor "
            "with an image_processor and a tokenizer; point it at a Qwen2.5-VL checkpoint or processor folder"
        )
    return loaded


def _require_torchvision() -> None:
    # transformers' Qwen2.5-VL processor needs its torchvision video processor to exist at all.
    if not is_torchvision_available():
        raise ValueError(
            "Qwen2.5-VL needs torchvision for its image / video processors; install it "
            "(uv add torchvision, matching the installed torch)"
        )


# ---------------------------------------------------------------- model and config


def vl_hf_config(
    pretrained: str | None,
    config: Mapping[str, Any] | None,
    trust_remote_code: bool,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
) -> Qwen2_5_VLConfig:
    if pretrained:
        return checkpoint_config(pretrained, trust_remote_code, SUPPORTED_MODEL_TYPES)
    values = plain(config)
    for field, token in TOKEN_ID_FIELDS.items():
        values[field] = preset_token_id(values, field, token, tokenizer, name, "Qwen2.5-VL")
    values["text_config"] = with_tokenizer_ids(values.get("text_config") or {}, tokenizer)
    return Qwen2_5_VLConfig(**values)


# ---------------------------------------------------------------- consistency checks


def check_vl_config(config, processor, name: str) -> None:
    """The config's special-token ids and patch geometry against the processor (Qwen2.5-VL, Qwen3-VL)."""
    check_special_token_ids(config, processor.tokenizer, name)
    check_patch_geometry(config.vision_config, processor, name)


def check_special_token_ids(config: Qwen2_5_VLConfig, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """The model finds visual tokens by these ids: they must be the tokenizer's."""
    for field, token in TOKEN_ID_FIELDS.items():
        expected = tokenizer.convert_tokens_to_ids(token)
        if getattr(config, field) != expected:
            raise ValueError(
                f"model {name!r}: config.{field}={getattr(config, field)} but the processor's tokenizer maps "
                f"{token} to {expected}; load the processor that belongs to this checkpoint"
            )


def check_patch_geometry(vision_config, processor: Qwen2_5_VLProcessor, name: str) -> None:
    """Placeholder counts come from the processor's geometry, features from the tower's."""
    expected = _patch_geometry(vision_config.to_dict())
    actual = {key: int(getattr(processor.image_processor, key)) for key in expected}
    if actual != expected:
        raise ValueError(
            f"model {name!r}: the image processor uses {actual} but the vision tower expects {expected}; "
            "the number of visual tokens per image would not match"
        )


# ---------------------------------------------------------------- packed forward


def set_text_attention(model: Qwen2_5_VLForConditionalGeneration, text_impl: str, vision_impl: str = "sdpa") -> None:
    """Give the decoder `text_impl` (e.g. a registered packed backend) and the vision tower
    `vision_impl`: the decoder's packed backends are causal, the vision tower must not be."""
    model.model.language_model.set_attn_implementation(text_impl)
    model.model.visual.set_attn_implementation(vision_impl)


def vl_hidden_states(model: Qwen2_5_VLForConditionalGeneration, **inputs) -> torch.Tensor:
    """Decoder output (B, T, hidden) of a packed row (B = 1) or a padded batch: the family's generic
    forward (models/encoders.py) on a Qwen2.5-VL model, for callers holding the model alone."""
    return family_hidden_states(model, "model.language_model", qwen2_5_vl_encoders(model.config), **inputs)
