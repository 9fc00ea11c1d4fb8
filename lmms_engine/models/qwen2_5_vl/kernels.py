"""The generic encoder kernels (kernels/encoder_attention.py, kernels/encoder_mlp.py) bound to
Qwen2.5-VL's vision tower: its attention modules and rotary function, its gated SiLU MLPs."""

from __future__ import annotations

from torch import nn
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLMLP,
    Qwen2_5_VLVisionAttention,
    apply_rotary_pos_emb_vision,
)

from lmms_engine.kernels import encoder_attention, encoder_mlp

VISION_ATTENTION = (Qwen2_5_VLVisionAttention,)
# 1280 -> 3420 -> 1280 in the real towers: padded to 3456 on CUDA.
VISION_MLPS = (encoder_mlp.PaddableMlp(Qwen2_5_VLMLP, gated=True),)


def patch_vision_attention(vision_tower: nn.Module, backend: str) -> int:
    """Every vision attention module of the tower on one `backend` varlen call; returns how many."""
    return encoder_attention.patch_vision_attention(vision_tower, backend, VISION_ATTENTION,
                                                    apply_rotary_pos_emb_vision)


def pad_encoder_mlps(vision_tower: nn.Module, fused_act: bool = False, align: int = encoder_mlp.ALIGN) -> int:
    """The tower's MLPs of a width not a multiple of `align` on zero-padded weights; returns how many."""
    return encoder_mlp.pad_encoder_mlps(vision_tower, VISION_MLPS, fused_act, align)
