"""Liger kernel patches, applied to a model instance in the order users of the original engine know:

1. our registry (LIGER_REGISTRY), keyed by model type, for models whose patch we own;
2. otherwise liger-kernel's public `apply_liger_kernel_to_<model_type>`;
3. otherwise, if the model has a `language_model` component, that component by the same rules.

Every patch is instance-level and idempotent, and returns the names of what it patched. Fused linear
cross-entropy is not patched into the model: the training module computes its loss with Liger's
fused kernel directly (see kernels/loss.py), which works on packed labels.

The one module-level change kept is the rotary function that attention layers call from their
modeling module (no instance holds it). liger-kernel's public patches also replace the modeling
module's RMSNorm / MLP classes, which would change every model built later in the process (a
benchmark builds several): those classes are put back at once. Every module-level change is
recorded, and `restore_module_level` undoes them all (compiled runs: kernels/patcher.py).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from types import ModuleType

from torch import nn

from lmms_engine import compat

log = logging.getLogger(__name__)

LigerPatch = Callable[[nn.Module], list[str]]
LIGER_REGISTRY: dict[str, LigerPatch] = {}
# (modeling module, attribute) -> the value before the first Liger patch rebound it.
_MODULE_ORIGINALS: dict[tuple[ModuleType, str], object] = {}


def swap_module_attr(module: ModuleType, name: str, value) -> None:
    """Rebind `module.name` to `value`, remembering the original (once) for restore_module_level."""
    _MODULE_ORIGINALS.setdefault((module, name), getattr(module, name))
    setattr(module, name, value)


def restore_module_level() -> list[str]:
    """Undo every module-level rebinding a Liger patch made in this process; returns what it restored."""
    restored = []
    for (module, name), original in _MODULE_ORIGINALS.items():
        if getattr(module, name) is not original:
            setattr(module, name, original)
            restored.append(f"{module.__name__}.{name}")
    return restored


def register_liger(model_type: str):
    """Decorator: `@register_liger("my_model")` makes a patch function take precedence for that type."""

    def decorate(patch: LigerPatch) -> LigerPatch:
        LIGER_REGISTRY[model_type] = patch
        return patch

    return decorate


def apply_liger(model: nn.Module) -> list[str]:
    """Patch `model` in place with Liger ops; raise ValueError when no rule covers it."""
    if getattr(model, "_lmms_liger_patched", None):  # idempotent: a second call patches nothing
        return []
    patched = _apply(model)
    model._lmms_liger_patched = patched
    return patched


def _apply(model: nn.Module) -> list[str]:
    model_type = model.config.model_type
    if model_type in LIGER_REGISTRY:
        return LIGER_REGISTRY[model_type](model)
    liger_fn = _liger_public_patch(model_type)
    if liger_fn is not None:
        with _classes_kept(_modeling_module(model_type)):
            liger_fn(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
        return [f"{model_type} (liger-kernel apply_liger_kernel_to_{model_type}: rope, rms_norm, swiglu)"]
    language_model = _language_model(model)
    if language_model is not None:
        return [f"language_model: {name}" for name in _apply(language_model)]
    raise ValueError(
        f"no Liger patch for model type {model_type!r}: not in lmms_engine's registry, not in liger-kernel, "
        "and no language_model component; use kernels=rmpad (no Liger) or register a patch with @register_liger"
    )


def _modeling_module(model_type: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    except ImportError:
        return None


class _classes_kept:
    """Around a liger-kernel public patch: its module-level class swaps are undone on exit (the
    instances are patched already), other rebindings (functions: rotary) are recorded and kept."""

    def __init__(self, module: ModuleType | None):
        self.module = module
        self.before = dict(vars(module)) if module is not None else {}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for name, old in self.before.items():
            new = getattr(self.module, name)
            if new is not old:
                setattr(self.module, name, old)
                if not isinstance(old, type):
                    swap_module_attr(self.module, name, new)


def _liger_public_patch(model_type: str):
    import liger_kernel.transformers as liger

    # liger-kernel resolves its public names lazily (module __getattr__), so ask by attribute.
    try:
        return getattr(liger, f"apply_liger_kernel_to_{model_type}")
    except AttributeError:
        return None


def _language_model(model: nn.Module) -> nn.Module | None:
    """transformers 5 keeps the LM at model.model.language_model (older: model.language_model)."""
    for owner in (model, getattr(model, "model", None)):
        if owner is not None and isinstance(getattr(owner, "language_model", None), nn.Module):
            return owner.language_model
    return None


# ---------------------------------------------------------------- our patches


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
    norms = _patch_decoder(text)
    for block in vision.blocks:
        norms += [block.norm1, block.norm2]
        if vision.config.hidden_act in ("silu", "swish"):
            compat.liger_patch_swiglu(block.mlp)
    for norm in norms[len(text.layers) * 2 + 1:]:
        compat.liger_patch_rms_norm(norm, eps=norm.variance_epsilon)
    rope = _patch_qwen2_5_vl_rope()
    return f"{len(norms)} RMSNorm, {len(text.layers) + len(vision.blocks)} SwiGLU MLPs, {rope}"


def _patch_decoder(text: nn.Module) -> list[nn.Module]:
    """RMSNorm on every decoder layer and the final norm, SwiGLU on the MLPs; returns the norms."""
    norms = [text.norm]
    for layer in text.layers:
        norms += [layer.input_layernorm, layer.post_attention_layernorm]
        compat.liger_patch_swiglu(layer.mlp)
    for norm in norms:
        compat.liger_patch_rms_norm(norm, eps=norm.variance_epsilon)
    return norms


def _patch_qwen2_5_vl_rope() -> str:
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as modeling

    if hasattr(modeling, "apply_multimodal_rotary_pos_emb"):
        from liger_kernel.transformers.qwen2vl_mrope import liger_multimodal_rotary_pos_emb

        swap_module_attr(modeling, "apply_multimodal_rotary_pos_emb", liger_multimodal_rotary_pos_emb)
        return "mrope (liger_multimodal_rotary_pos_emb)"
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    swap_module_attr(modeling, "apply_rotary_pos_emb", liger_rotary_pos_emb)
    return "rope on merged mrope sections (liger_rotary_pos_emb)"


@register_liger("qwen2_audio")
def patch_qwen2_audio(model: nn.Module) -> list[str]:
    """Qwen2-Audio's Qwen2 decoder from Liger's ops: RMSNorm on every decoder layer and the final
    norm, SwiGLU on the decoder MLPs, Liger's rotary kernel for the qwen2 modeling module. The
    Whisper-style audio encoder (LayerNorm, GELU MLP, no rotary) has nothing Liger replaces and is
    left as it is."""
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    from transformers.models.qwen2 import modeling_qwen2

    text = model.model.language_model
    norms = _patch_decoder(text)
    swap_module_attr(modeling_qwen2, "apply_rotary_pos_emb", liger_rotary_pos_emb)
    return [f"qwen2_audio (lmms_engine registry): {len(norms)} RMSNorm, {len(text.layers)} SwiGLU MLPs, "
            "rope (liger_rotary_pos_emb)"]


@register_liger("lmms_omni")
def patch_lmms_omni(model: nn.Module) -> list[str]:
    """The omni model's Qwen2.5-VL part (decoder and vision tower) as `patch_qwen2_5_vl` does it;
    its Whisper-style audio encoder has nothing Liger replaces and is left as it is."""
    return [f"lmms_omni: qwen2_5_vl (lmms_engine registry): "
            + patch_qwen_vl_parts(model.model.language_model, model.model.visual)]


@register_liger("qwen3")
def patch_qwen3(model: nn.Module) -> list[str]:
    """Qwen3 dense from Liger's ops, instance-level (liger-kernel's own qwen3 patch also replaces
    module-level classes for every later model): RMSNorm on every decoder layer, the per-head
    q / k norms and the final norm, SwiGLU on the MLPs, Liger's rotary kernel."""
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    from transformers.models.qwen3 import modeling_qwen3

    text = model.model
    norms = _patch_decoder(text) + _patch_qk_norms(text)
    swap_module_attr(modeling_qwen3, "apply_rotary_pos_emb", liger_rotary_pos_emb)
    return [f"qwen3 (lmms_engine registry): {len(norms)} RMSNorm (q / k norms included), "
            f"{len(text.layers)} SwiGLU MLPs, rope (liger_rotary_pos_emb)"]


def _patch_qk_norms(text: nn.Module) -> list[nn.Module]:
    """Qwen3's per-head RMSNorm on queries and keys (over head_dim, before rotary)."""
    norms = [norm for layer in text.layers for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm)]
    for norm in norms:
        compat.liger_patch_rms_norm(norm, eps=norm.variance_epsilon)
    return norms


@register_liger("qwen3_vl")
def patch_qwen3_vl(model: nn.Module) -> list[str]:
    """Qwen3-VL's decoder from Liger's ops: RMSNorm on every layer, the q / k norms and the final
    norm, SwiGLU on the MLPs, Liger's rotary kernel (transformers interleaves the mrope sections into
    cos / sin before the plain `apply_rotary_pos_emb`). The vision tower (LayerNorm, GELU MLP, 2-D
    vision rotary) has nothing of Liger's registry-level ops and is left as it is."""
    from liger_kernel.transformers.rope import liger_rotary_pos_emb
    from transformers.models.qwen3_vl import modeling_qwen3_vl

    text = model.model.language_model
    norms = _patch_decoder(text) + _patch_qk_norms(text)
    swap_module_attr(modeling_qwen3_vl, "apply_rotary_pos_emb", liger_rotary_pos_emb)
    return [f"qwen3_vl (lmms_engine registry): {len(norms)} RMSNorm (q / k norms included), "
            f"{len(text.layers)} SwiGLU MLPs, rope (liger_rotary_pos_emb on interleaved mrope)"]
