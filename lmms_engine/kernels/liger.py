"""Liger kernel patches, applied to a model instance in the order users of the original engine know:

1. our registry (LIGER_REGISTRY), keyed by model type, for models whose patch we own;
2. otherwise liger-kernel's public `apply_liger_kernel_to_<model_type>`;
3. otherwise, if the model has a `language_model` component, that component by the same rules.

Every patch is instance-level and idempotent, and returns the names of what it patched. Fused linear
cross-entropy is not patched into the model: the training module computes its loss with Liger's
fused kernel directly (see kernels/loss.py), which works on packed labels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

log = logging.getLogger(__name__)

LigerPatch = Callable[[nn.Module], list[str]]
LIGER_REGISTRY: dict[str, LigerPatch] = {}


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
        liger_fn(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
        return [f"{model_type} (liger-kernel apply_liger_kernel_to_{model_type}: rope, rms_norm, swiglu)"]
    language_model = _language_model(model)
    if language_model is not None:
        return [f"language_model: {name}" for name in _apply(language_model)]
    raise ValueError(
        f"no Liger patch for model type {model_type!r}: not in lmms_engine's registry, not in liger-kernel, "
        "and no language_model component; use kernels=rmpad (no Liger) or register a patch with @register_liger"
    )


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
