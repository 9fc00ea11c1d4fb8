"""Qwen2.5-VL's vision tower for the generic encoder kernels (kernels/encoder_attention.py,
kernels/encoder_mlp.py): its attention modules and rotary function, its gated SiLU MLPs, and the
two kernels bound to them."""

from __future__ import annotations

import functools

from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLMLP,
    Qwen2_5_VLVisionAttention,
    apply_rotary_pos_emb_vision,
)

from lmms_engine.kernels import encoder_attention, encoder_mlp

VISION_ATTENTION = (Qwen2_5_VLVisionAttention,)
# 1280 -> 3420 -> 1280 in the real towers: padded to 3456 on CUDA.
VISION_MLPS = (encoder_mlp.PaddableMlp(Qwen2_5_VLMLP, gated=True),)

# patch_vision_attention(tower, backend) -> int; pad_encoder_mlps(tower, fused_act=False, align=128) -> int
patch_vision_attention = functools.partial(encoder_attention.patch_vision_attention, attention_classes=VISION_ATTENTION,
                                           rotary=apply_rotary_pos_emb_vision)
pad_encoder_mlps = functools.partial(encoder_mlp.pad_encoder_mlps, mlps=VISION_MLPS)
