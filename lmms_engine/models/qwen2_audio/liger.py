"""Qwen2-Audio's Liger patch (registered for its model type in kernels/liger.py's registry)."""

from __future__ import annotations

from torch import nn

from lmms_engine.kernels.liger import patch_decoder_ops, patch_rotary, register_liger


@register_liger("qwen2_audio")
def patch_qwen2_audio(model: nn.Module) -> list[str]:
    """Qwen2-Audio's Qwen2 decoder from Liger's ops: RMSNorm on every decoder layer and the final
    norm, SwiGLU on the decoder MLPs, Liger's rotary kernel for the qwen2 modeling module. The
    Whisper-style audio encoder (LayerNorm, GELU MLP, no rotary) has nothing Liger replaces and is
    left as it is."""
    from transformers.models.qwen2 import modeling_qwen2

    text = model.model.language_model
    norms = patch_decoder_ops(text)
    patch_rotary(modeling_qwen2)
    return [f"qwen2_audio (lmms_engine registry): {len(norms)} RMSNorm, {len(text.layers)} SwiGLU MLPs, "
            "rope (liger_rotary_pos_emb)"]
