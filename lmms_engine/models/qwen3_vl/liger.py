"""Qwen3-VL's Liger patch (registered for its model type in kernels/liger.py's registry)."""

from __future__ import annotations

from torch import nn

from lmms_engine.kernels.liger import patch_decoder_ops, patch_qk_norms, patch_rotary, register_liger


@register_liger("qwen3_vl")
def patch_qwen3_vl(model: nn.Module) -> list[str]:
    """Qwen3-VL's decoder from Liger's ops: RMSNorm on every layer, the q / k norms and the final
    norm, SwiGLU on the MLPs, Liger's rotary kernel (transformers interleaves the mrope sections into
    cos / sin before the plain `apply_rotary_pos_emb`). The vision tower (LayerNorm, GELU MLP, 2-D
    vision rotary) has nothing of Liger's registry-level ops and is left as it is."""
    from transformers.models.qwen3_vl import modeling_qwen3_vl

    text = model.model.language_model
    norms = patch_decoder_ops(text) + patch_qk_norms(text)
    patch_rotary(modeling_qwen3_vl)
    return [f"qwen3_vl (lmms_engine registry): {len(norms)} RMSNorm (q / k norms included), "
            f"{len(text.layers)} SwiGLU MLPs, rope (liger_rotary_pos_emb on interleaved mrope)"]
