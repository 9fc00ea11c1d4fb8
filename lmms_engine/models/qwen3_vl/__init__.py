"""The Qwen3-VL family (vision tower with DeepStack + Qwen3 decoder with interleaved mrope): its
entry and its pieces.

  builder.py   build_qwen3_vl and the built-in processor
  vision.py    the vision tower as a ModalityEncoder (DeepStack features to the decoder)
  flops.py     the vision tower's FLOPs (DeepStack mergers included)
  kernels.py   its attention modules / MLPs bound to the generic encoder kernels
  liger.py     its Liger patch
  video.py     its processor's video rules (frame count, clip resize, timestamps), for the data side
"""

from transformers import Qwen3VLProcessor

from lmms_engine.models.family import VISION, MediaRules, ModelFamily, Supports
from lmms_engine.models.qwen3_vl.builder import (
    SUPPORTED_MODEL_TYPES,
    build_builtin_qwen3_vl_processor,
    build_qwen3_vl,
    builtin_processor,
    load_qwen3_vl_processor,
    qwen3_vl_encoders,
    qwen3_vl_hf_config,
)
from lmms_engine.models.qwen3_vl.liger import patch_qwen3_vl
from lmms_engine.models.qwen3_vl.video import Qwen3VideoRules

FAMILY = ModelFamily(
    name="qwen3_vl",
    builder="lmms_engine.models.qwen3_vl.build_qwen3_vl",
    model_types=SUPPORTED_MODEL_TYPES,
    presets=("tiny_qwen3_vl", "qwen3_vl", "qwen3_vl_2b", "qwen3_vl_4b", "qwen3_vl_8b"),
    bench_preset="qwen3_vl_4b",
    builtin_processor=builtin_processor,
    encoders=qwen3_vl_encoders,
    media_kinds=VISION,
    liger=patch_qwen3_vl,
    media=MediaRules(processor_classes=(Qwen3VLProcessor,), video=Qwen3VideoRules()),
    # The sequence-parallel input hook slices embeddings and positions only.
    supports=Supports(sequence_parallel=False,
                      note="its DeepStack features enter decoder layers at full-pack positions"),
)

__all__ = ["FAMILY", "SUPPORTED_MODEL_TYPES", "build_builtin_qwen3_vl_processor", "build_qwen3_vl", "builtin_processor",
           "load_qwen3_vl_processor", "qwen3_vl_encoders", "qwen3_vl_hf_config"]
