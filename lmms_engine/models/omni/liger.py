"""The omni model's Liger patch (registered for its model type in kernels/liger.py's registry)."""

from __future__ import annotations

from torch import nn

from lmms_engine.kernels.liger import register_liger
from lmms_engine.models.qwen2_5_vl.liger import patch_qwen_vl_parts


@register_liger("lmms_omni")
def patch_lmms_omni(model: nn.Module) -> list[str]:
    """The omni model's Qwen2.5-VL part (decoder and vision tower) as Qwen2.5-VL's patch does it;
    its Whisper-style audio encoder has nothing Liger replaces and is left as it is."""
    return [f"lmms_omni: qwen2_5_vl (lmms_engine registry): "
            + patch_qwen_vl_parts(model.model.language_model, model.model.visual)]
