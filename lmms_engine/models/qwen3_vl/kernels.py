"""The generic encoder kernels (kernels/encoder_attention.py, kernels/encoder_mlp.py) bound to
Qwen3-VL's vision tower: its attention modules and rotary function, its fc1 -> GELU -> fc2 MLPs."""

from __future__ import annotations

from torch import nn
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    Qwen3VLVisionAttention,
    Qwen3VLVisionMLP,
    apply_rotary_pos_emb_vision,
)

from lmms_engine.kernels import encoder_attention, encoder_mlp

VISION_ATTENTION = (Qwen3VLVisionAttention,)
# 1152 -> 4304 -> 1152 in Qwen3-VL-8B's tower: padded to 4352 on CUDA.
VISION_MLPS = (encoder_mlp.PaddableMlp(Qwen3VLVisionMLP, gated=False),)


def patch_vision_attention(vision_tower: nn.Module, backend: str) -> int:
    """Every vision attention module of the tower on one `backend` varlen call; returns how many."""
    return encoder_attention.patch_vision_attention(vision_tower, backend, VISION_ATTENTION,
                                                    apply_rotary_pos_emb_vision)


def pad_encoder_mlps(vision_tower: nn.Module, fused_act: bool = False, align: int = encoder_mlp.ALIGN) -> int:
    """The tower's MLPs of a width not a multiple of `align` on zero-padded weights; returns how many."""
    return encoder_mlp.pad_encoder_mlps(vision_tower, VISION_MLPS, fused_act, align)
