"""AdamW with decoupled weight decay on matrices only (norms and biases are not decayed), per-component
learning rates, and component freezing.

Components are named parameter sets of a model family (ModelBundle.components(): e.g. Qwen2.5-VL's
`vision` tower and `merger`); everything else is `lm`. Parameters are matched by name, after the
wrappers' prefixes (training module, DDP, activation checkpointing, torch.compile) are stripped, so
the same rule works before and after any strategy wrapped the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from lmms_engine.names import unwrapped_name

log = logging.getLogger(__name__)

LM = "lm"


def build_adamw(
    module: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
    components: Mapping[str, tuple[str, ...]] | None = None,
    component_lr: Mapping[str, float] | None = None,
) -> torch.optim.AdamW:
    """One decay / no-decay group pair per component. Each group carries `lr_scale` (its peak lr
    over `lr`): the loop sets group lr = schedule(step) * lr_scale."""
    components = dict(components or {})
    component_lr = dict(component_lr or {})
    check_component_names(component_lr, components, "optim.component_lr")
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if param.requires_grad:
            key = (component_of(name, components), param.ndim >= 2)
            groups.setdefault(key, []).append(param)
    param_groups = [
        {
            "params": params,
            "weight_decay": weight_decay if decayed else 0.0,
            "lr_scale": component_lr.get(component, lr) / lr if lr else 1.0,
            "component": component,
        }
        for (component, decayed), params in sorted(groups.items())
    ]
    on_cuda = any(p.is_cuda for group in param_groups for p in group["params"])
    # fused=True: one kernel for all params on CUDA; the foreach/for-loop path on CPU.
    return torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas), eps=eps, fused=on_cuda or None)


def freeze_components(model: nn.Module, frozen: list[str], components: Mapping[str, tuple[str, ...]]) -> int:
    """requires_grad=False on every parameter of the named components; returns how many were frozen."""
    check_component_names(frozen, components, "optim.freeze")
    count = 0
    for name, param in model.named_parameters():
        if component_of(name, components) in frozen:
            param.requires_grad_(False)
            count += param.numel()
    if frozen:
        log.info("frozen: %s (%.1fM parameters)", ", ".join(frozen), count / 1e6)
    if frozen and not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"optim.freeze={list(frozen)} freezes every parameter: nothing would be trained")
    return count


def component_of(name: str, components: Mapping[str, tuple[str, ...]]) -> str:
    """The component whose longest prefix matches the parameter's (unwrapped) name, else `lm`."""
    name = unwrapped_name(name)
    best, best_len = LM, -1
    for component, prefixes in components.items():
        for prefix in prefixes:
            if name.startswith(prefix) and len(prefix) > best_len:
                best, best_len = component, len(prefix)
    return best


def check_component_names(names, components: Mapping[str, tuple[str, ...]], key: str) -> None:
    valid = [LM, *components]
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise ValueError(f"{key}: unknown component(s) {', '.join(unknown)}; this model has {', '.join(valid)}")
