"""Qwen3-VL (vision tower with DeepStack + Qwen3 decoder with interleaved mrope): from a hub id or
local path, or randomly initialised from a preset's config (conf/model/*qwen3_vl*.yaml).

Random init builds its processor in code (no download): the byte-level ChatML tokenizer with Qwen's
vision specials (models/qwen2_5_vl/builder.py's), Qwen3-VL's geometry (patch 16, temporal 2, merge 2) with
small pixel bounds, and transformers' own `Qwen3VLProcessor`, so placeholder expansion (per-frame
`<t seconds>` timestamps for videos, which the data side writes by the family's video rules:
models/qwen3_vl/video.py) is the real one.

Packed training goes through the generic family forward (models/encoders.py): the vision tower runs
once per micro-batch with its own per-image / per-frame varlen attention; its merged features
replace the placeholders and its DeepStack features reach the decoder as `visual_pos_masks` /
`deepstack_visual_embeds` (models/qwen3_vl/vision.py); the decoder gets the packed attention
backend and per-sample 3-D mrope positions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import (
    AutoProcessor,
    PreTrainedTokenizerBase,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextDecoderLayer

from lmms_engine.models.base import ModelBundle
from lmms_engine.models.builder_utils import (
    FamilyParts,
    build_family_bundle,
    checkpoint_config,
    plain,
    preset_token_id,
    require_weights_or_config,
)
from lmms_engine.models.mrope import MropeSpec
from lmms_engine.models.qwen2_5_vl import (
    TOKEN_ID_FIELDS,
    build_vl_tokenizer,
    check_vl_config,
)
from lmms_engine.models.qwen3_vl.vision import Qwen3VisionEncoder, qwen3_vision_encoder

SUPPORTED_MODEL_TYPES = ("qwen3_vl",)

# Built-in processor: 4..64 merged tokens (32 x 32 px each) per image or frame, so CPU runs stay small.
BUILTIN_MIN_PIXELS = 4 * 32 * 32
BUILTIN_MAX_PIXELS = 64 * 32 * 32


def qwen3_vl_encoders(config: Qwen3VLConfig) -> tuple[Qwen3VisionEncoder, ...]:
    return (qwen3_vision_encoder("model.visual", config.image_token_id, config.video_token_id),)


def build_qwen3_vl(
    name: str,
    pretrained: str | None = None,
    processor: str | None = None,
    config: Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
    structure_only: bool = False,
) -> ModelBundle:
    """Build a Qwen3-VL model and its processor.

    pretrained: hub id or local path; None = random init from `config` (a Qwen3VLConfig dict with
      `text_config` and `vision_config`; its special-token ids are taken from the processor).
    processor: hub id or local path; None = the pretrained model's, or the built-in byte-level one.
    structure_only: the module tree from the config, no weights read (ranks that receive them).
    """
    require_weights_or_config(name, pretrained, config)
    vl_processor = load_qwen3_vl_processor(processor or pretrained, trust_remote_code)
    hf_config = qwen3_vl_hf_config(pretrained, config, trust_remote_code, vl_processor.tokenizer, name)
    parts = FamilyParts(Qwen3VLForConditionalGeneration, SUPPORTED_MODEL_TYPES, (Qwen3VLTextDecoderLayer,),
                        check_vl_config, qwen3_vl_encoders,
                        lambda hf_config: {"mrope_spec": MropeSpec.for_qwen3_vl(hf_config)})
    return build_family_bundle(parts, name, vl_processor, hf_config, pretrained, trust_remote_code, structure_only)


def build_builtin_qwen3_vl_processor():
    """The download-free processor: byte-level tokenizer + vision specials, Qwen3-VL's geometry."""
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    size = {"shortest_edge": BUILTIN_MIN_PIXELS, "longest_edge": BUILTIN_MAX_PIXELS}
    geometry = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2}
    normalise = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}  # Qwen3-VL's, not CLIP's
    tokenizer = build_vl_tokenizer()
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, **geometry, **normalise),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(size=size, **geometry, **normalise),
        chat_template=tokenizer.chat_template,
    )


def builtin_processor(config: Mapping[str, Any] | None = None):
    """The built-in processor (Qwen3-VL's geometry is fixed; a preset's config does not change it)."""
    return build_builtin_qwen3_vl_processor()


def load_qwen3_vl_processor(path: str | None, trust_remote_code: bool):
    if path is None:
        return build_builtin_qwen3_vl_processor()
    loaded = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not hasattr(loaded, "video_processor") or not hasattr(loaded, "tokenizer"):
        raise ValueError(
            f"model.processor={path!r} loaded a {type(loaded).__name__}, not a Qwen3-VL processor with image / "
            "video processors and a tokenizer; point it at a Qwen3-VL checkpoint or processor folder"
        )
    return loaded


def qwen3_vl_hf_config(pretrained: str | None, config: Mapping[str, Any] | None, trust_remote_code: bool,
                       tokenizer: PreTrainedTokenizerBase, name: str) -> Qwen3VLConfig:
    if pretrained:
        return checkpoint_config(pretrained, trust_remote_code, SUPPORTED_MODEL_TYPES)
    values = plain(config)
    for field, token in TOKEN_ID_FIELDS.items():
        values[field] = preset_token_id(values, field, token, tokenizer, name, "Qwen3-VL")
    values["text_config"] = {"pad_token_id": tokenizer.pad_token_id, **(values.get("text_config") or {})}
    return Qwen3VLConfig(**values)
