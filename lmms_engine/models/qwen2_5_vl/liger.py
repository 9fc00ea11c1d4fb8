"""Qwen2.5-VL's Liger patch (registered for its model type in kernels/liger.py's registry)."""

from __future__ import annotations

from torch import nn

from lmms_engine import compat
from lmms_engine.kernels.liger import patch_decoder_ops, register_liger, swap_module_attr


@register_liger("qwen2_5_vl")
def patch_qwen2_5_vl(model: nn.Module) -> list[str]:
    """Qwen2.5-VL from Liger's ops, not liger-kernel's model-level patch (which imports classes that
    transformers >= 5.23 removed): RMSNorm on every decoder layer, the final norm and the vision
    blocks; SwiGLU on the decoder MLPs and the (gated SiLU) vision MLPs; Liger's rotary kernel.

    Rotary embedding is the one module-level swap (the attention calls a module function, as in
    liger-kernel's own patches): transformers <= 5.22 applies the three mrope sections there
    (`apply_multimodal_rotary_pos_emb` -> Liger's mrope kernel); later versions merge the sections
    into cos / sin beforehand and call the plain `apply_rotary_pos_emb` (-> Liger's rope kernel).
    """
    return [f"{model.config.model_type} (lmms_engine registry): "
            + patch_qwen_vl_parts(model.model.language_model, model.model.visual)]


def patch_qwen_vl_parts(text: nn.Module, vision: nn.Module) -> str:
    """A Qwen2.5-VL decoder and vision tower (wherever they sit in a model) patched as above."""
    norms = patch_decoder_ops(text)
    for block in vision.blocks:
        norms += [block.norm1, block.norm2]
        if vision.config.hidden_act in ("silu", "swish"):
            compat.liger_patch_swiglu(block.mlp)
    for norm in norms[len(text.layers) * 2 + 1:]:
        compat.liger_patch_rms_norm(norm, eps=norm.variance_epsilon)
    rope = _patch_rope()
    return f"{len(norms)} RMSNorm, {len(text.layers) + len(vision.blocks)} SwiGLU MLPs, {rope}"


def _patch_rope() -> str:
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as modeling

    if hasattr(modeling, "apply_multimodal_rotary_pos_emb"):
        from liger_kernel.transformers.qwen2vl_mrope import liger_multimodal_rotary_pos_emb

        swap_module_attr(modeling, "apply_multimodal_rotary_pos_emb", liger_multimodal_rotary_pos_emb)
        return "mrope (liger_multimodal_rotary_pos_emb)"
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    swap_module_attr(modeling, "apply_rotary_pos_emb", liger_rotary_pos_emb)
    return "rope on merged mrope sections (liger_rotary_pos_emb)"
