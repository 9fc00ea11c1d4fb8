"""An omni model that sees and hears: Qwen2.5-VL plus Qwen2-Audio's encoder (model type "lmms_omni").

Importing this package registers the model type with transformers' Auto classes (AutoConfig,
AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor).
  modeling.py    config and modules, the forward (generic family forward, two encoders)
  processing.py  the processor (images, video, audio) and the built-in one
  builder.py     build_omni: from an omni checkpoint, from a VL + an audio checkpoint, or random
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from lmms_engine.models.omni.builder import build_omni
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
    omni_processor_from_parts,
)

__all__ = [
    "MODEL_TYPE", "OMNI_CHAT_TEMPLATE", "LmmsOmniConfig", "LmmsOmniForConditionalGeneration", "LmmsOmniModel",
    "LmmsOmniProcessor", "batch_mrope_position_ids", "build_builtin_omni_processor", "build_omni",
    "build_omni_tokenizer", "omni_encoders", "omni_hidden_states", "omni_processor_from_parts",
]

AutoConfig.register(MODEL_TYPE, LmmsOmniConfig, exist_ok=True)
AutoModel.register(LmmsOmniConfig, LmmsOmniModel, exist_ok=True)
AutoModelForCausalLM.register(LmmsOmniConfig, LmmsOmniForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(LmmsOmniConfig, LmmsOmniForConditionalGeneration, exist_ok=True)
AutoProcessor.register(LmmsOmniConfig, LmmsOmniProcessor, exist_ok=True)
