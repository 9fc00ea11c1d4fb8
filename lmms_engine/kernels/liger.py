"""Liger kernel patches, applied to a model instance in the order users of the original engine know:

1. our registry (LIGER_REGISTRY), keyed by model type, for models whose patch we own: each model
   family's package registers its own (`@register_liger`, in models/<family>/liger.py), named
   by its entry's `liger` (models/family.py);
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


# ---------------------------------------------------------------- pieces of the families' patches
# A family's own patch (models/<family>/liger.py or its module) is built from these and
# registered with @register_liger for its model type.


def patch_decoder_ops(text: nn.Module) -> list[nn.Module]:
    """RMSNorm on every decoder layer and the final norm, SwiGLU on the MLPs of a Qwen-style decoder
    body (`layers`, `norm`); returns the norms."""
    norms = [text.norm]
    for layer in text.layers:
        norms += [layer.input_layernorm, layer.post_attention_layernorm]
        compat.liger_patch_swiglu(layer.mlp)
    for norm in norms:
        compat.liger_patch_rms_norm(norm, eps=norm.variance_epsilon)
    return norms


def patch_qk_norms(text: nn.Module) -> list[nn.Module]:
    """Per-head RMSNorm on queries and keys (over head_dim, before rotary: Qwen3's `q_norm` / `k_norm`)."""
    norms = [norm for layer in text.layers for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm)]
    for norm in norms:
        compat.liger_patch_rms_norm(norm, eps=norm.variance_epsilon)
    return norms


def patch_rotary(modeling: ModuleType) -> str:
    """Liger's rotary kernel for the attention of a transformers modeling module that applies the
    plain `apply_rotary_pos_emb` (module-level: no instance holds it)."""
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    swap_module_attr(modeling, "apply_rotary_pos_emb", liger_rotary_pos_emb)
    return "rope (liger_rotary_pos_emb)"
