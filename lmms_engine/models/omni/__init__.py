"""An omni model that sees and hears: Qwen2.5-VL plus Qwen2-Audio's encoder (model type "lmms_omni").

Importing this package registers the model type with transformers' Auto classes (AutoConfig,
AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor).
  modeling.py    config and modules, the forward (generic family forward, two encoders)
  processing.py  the processor (images, video, audio) and the built-in one
  builder.py     build_omni: from an omni checkpoint, from a VL + an audio checkpoint, or random
  liger.py       its Liger patch (the Qwen2.5-VL part's)
and defines the family's entry, FAMILY: Qwen2.5-VL's vision rules (the default video rules) and
Qwen2-Audio's audio rules for its processor.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from lmms_engine.models.family import AUDIO, VISION, MediaRules, ModelFamily
from lmms_engine.models.omni.builder import build_omni
from lmms_engine.models.omni.liger import patch_lmms_omni
from lmms_engine.models.omni.modeling import (
    MODEL_TYPE,
    LmmsOmniConfig,
    LmmsOmniForConditionalGeneration,
    LmmsOmniModel,
    batch_mrope_position_ids,
    omni_encoders,
    omni_hidden_states,
)
from lmms_engine.models.omni.processing import (
    OMNI_CHAT_TEMPLATE,
    LmmsOmniProcessor,
    build_builtin_omni_processor,
    build_omni_tokenizer,
    builtin_processor,
    omni_processor_from_parts,
)
from lmms_engine.models.qwen2_audio.media import QwenAudioRules

FAMILY = ModelFamily(
    name="lmms_omni",
    builder="lmms_engine.models.omni.build_omni",
    model_types=(MODEL_TYPE,),
    presets=("tiny_omni", "omni_7b"),
    builtin_processor=builtin_processor,
    encoders=omni_encoders,
    media_kinds=VISION | AUDIO,
    liger=patch_lmms_omni,
    media=MediaRules(processor_classes=(LmmsOmniProcessor,), audio=QwenAudioRules()),
)

__all__ = [
    "FAMILY", "MODEL_TYPE", "OMNI_CHAT_TEMPLATE", "LmmsOmniConfig", "LmmsOmniForConditionalGeneration", "LmmsOmniModel",
    "LmmsOmniProcessor", "batch_mrope_position_ids", "build_builtin_omni_processor", "build_omni",
    "build_omni_tokenizer", "omni_encoders", "omni_hidden_states", "omni_processor_from_parts",
]

AutoConfig.register(MODEL_TYPE, LmmsOmniConfig, exist_ok=True)
AutoModel.register(LmmsOmniConfig, LmmsOmniModel, exist_ok=True)
AutoModelForCausalLM.register(LmmsOmniConfig, LmmsOmniForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(LmmsOmniConfig, LmmsOmniForConditionalGeneration, exist_ok=True)
AutoProcessor.register(LmmsOmniConfig, LmmsOmniProcessor, exist_ok=True)
