"""The Qwen2.5-VL family (vision tower + Qwen2.5 decoder with 3-D mrope): its entry and its pieces.

  builder.py   build_qwen2_5_vl, the built-in processor, config checks, the packed forward
  vision.py    the vision tower as a ModalityEncoder (also the omni model's)
  flops.py     the vision tower's FLOPs
  kernels.py   its attention modules / MLPs bound to the generic encoder kernels
  liger.py     its Liger patch
"""

from lmms_engine.models.family import VISION, ModelFamily
from lmms_engine.models.qwen2_5_vl.builder import (
    IMAGE_PAD,
    SUPPORTED_MODEL_TYPES,
    TOKEN_ID_FIELDS,
    VIDEO_PAD,
    VISION_END,
    VISION_SPECIALS,
    VISION_START,
    VL_CHAT_TEMPLATE,
    build_builtin_processor,
    build_qwen2_5_vl,
    build_vl_tokenizer,
    builtin_processor,
    check_patch_geometry,
    check_special_token_ids,
    check_vl_config,
    load_vl_processor,
    qwen2_5_vl_encoders,
    set_text_attention,
    vl_hf_config,
    vl_hidden_states,
)
from lmms_engine.models.qwen2_5_vl.liger import patch_qwen2_5_vl

FAMILY = ModelFamily(
    name="qwen2_5_vl",
    builder="lmms_engine.models.qwen2_5_vl.build_qwen2_5_vl",
    model_types=SUPPORTED_MODEL_TYPES,
    presets=("tiny_qwen2_5_vl", "qwen2_5_vl", "qwen2_5_vl_3b", "qwen2_5_vl_7b"),
    bench_preset="qwen2_5_vl_3b",
    builtin_processor=builtin_processor,
    encoders=qwen2_5_vl_encoders,
    media_kinds=VISION,
    liger=patch_qwen2_5_vl,
)

__all__ = [
    "FAMILY", "IMAGE_PAD", "SUPPORTED_MODEL_TYPES", "TOKEN_ID_FIELDS", "VIDEO_PAD", "VISION_END", "VISION_SPECIALS",
    "VISION_START", "VL_CHAT_TEMPLATE", "build_builtin_processor", "build_qwen2_5_vl", "build_vl_tokenizer",
    "builtin_processor", "check_patch_geometry", "check_special_token_ids", "check_vl_config", "load_vl_processor",
    "qwen2_5_vl_encoders", "set_text_attention", "vl_hf_config", "vl_hidden_states",
]
