"""Qwen3-VL's vision tower for the generic encoder kernels (kernels/encoder_attention.py,
kernels/encoder_mlp.py): its attention modules and rotary function, its fc1 -> GELU -> fc2 MLPs, and
the two kernels bound to them."""

from __future__ import annotations

import functools

from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    Qwen3VLVisionAttention,
    Qwen3VLVisionMLP,
    apply_rotary_pos_emb_vision,
)

from lmms_engine.kernels import encoder_attention, encoder_mlp

VISION_ATTENTION = (Qwen3VLVisionAttention,)
# 1152 -> 4304 -> 1152 in Qwen3-VL-8B's tower: padded to 4352 on CUDA.
VISION_MLPS = (encoder_mlp.PaddableMlp(Qwen3VLVisionMLP, gated=False),)

# patch_vision_attention(tower, backend) -> int; pad_encoder_mlps(tower, fused_act=False, align=128) -> int
patch_vision_attention = functools.partial(encoder_attention.patch_vision_attention, attention_classes=VISION_ATTENTION,
                                           rotary=apply_rotary_pos_emb_vision)
pad_encoder_mlps = functools.partial(encoder_mlp.pad_encoder_mlps, mlps=VISION_MLPS)
