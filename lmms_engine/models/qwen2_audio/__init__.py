"""The Qwen2-Audio family (Whisper-style audio encoder + linear projector + Qwen2 decoder): its entry
and its pieces.

  builder.py    build_qwen2_audio, the built-in processor, config checks, the packed forward
  encoder.py    the encoder without padding (rmpad) and its varlen attention
  modality.py   encoder + projector as a ModalityEncoder (also the omni model's)
  flops.py      the encoder's and projector's FLOPs
  media.py      its audio rules for the data side (placeholders per clip, conv context)
  liger.py      its Liger patch
"""

from transformers import Qwen2AudioProcessor

from lmms_engine.models.family import AUDIO, MediaRules, ModelFamily
from lmms_engine.models.qwen2_audio.builder import (
    AUDIO_BOS,
    AUDIO_CHAT_TEMPLATE,
    AUDIO_EOS,
    AUDIO_PAD,
    AUDIO_PLACEHOLDERS,
    AUDIO_SPECIALS,
    SUPPORTED_MODEL_TYPES,
    audio_hidden_states,
    build_audio_tokenizer,
    build_builtin_audio_processor,
    build_qwen2_audio,
    builtin_processor,
    chatml_media_template,
    check_feature_extractor,
    load_audio_processor,
    placeholder_count,
    qwen2_audio_encoders,
)
from lmms_engine.models.qwen2_audio.liger import patch_qwen2_audio
from lmms_engine.models.qwen2_audio.media import QwenAudioRules

FAMILY = ModelFamily(
    name="qwen2_audio",
    builder="lmms_engine.models.qwen2_audio.build_qwen2_audio",
    model_types=SUPPORTED_MODEL_TYPES,
    presets=("tiny_qwen2_audio", "qwen2_audio_7b"),
    bench_preset="qwen2_audio_7b",
    builtin_processor=builtin_processor,
    encoders=qwen2_audio_encoders,
    media_kinds=AUDIO,
    liger=patch_qwen2_audio,
    media=MediaRules(processor_classes=(Qwen2AudioProcessor,), audio=QwenAudioRules()),
)

__all__ = [
    "AUDIO_BOS", "AUDIO_CHAT_TEMPLATE", "AUDIO_EOS", "AUDIO_PAD", "AUDIO_PLACEHOLDERS", "AUDIO_SPECIALS", "FAMILY",
    "SUPPORTED_MODEL_TYPES", "audio_hidden_states", "build_audio_tokenizer", "build_builtin_audio_processor",
    "build_qwen2_audio", "builtin_processor", "chatml_media_template", "check_feature_extractor",
    "load_audio_processor", "placeholder_count", "qwen2_audio_encoders",
]
