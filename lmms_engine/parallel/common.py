"""Transformations every strategy applies in the same order (torchtitan style):
activation checkpointing, then compile, then sharding/wrapping."""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger(__name__)


def units_of(module: nn.Module, unit_types: tuple[type[nn.Module], ...]) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, child) for every submodule that is one of `unit_types`."""
    found = []
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, unit_types):
                found.append((parent, name, child))
    return found


def apply_activation_checkpointing(module: nn.Module, unit_types: tuple[type[nn.Module], ...]) -> int:
    """Recompute each unit's activations in backward instead of storing them. Returns units wrapped."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    units = units_of(module, unit_types)
    for parent, name, child in units:
        parent.register_module(name, checkpoint_wrapper(child, preserve_rng_state=False))
    log.info("activation checkpointing on %d %s units", len(units), "/".join(t.__name__ for t in unit_types))
    return len(units)


def apply_compile(module: nn.Module, unit_types: tuple[type[nn.Module], ...]) -> int:
    """torch.compile each unit separately (small graphs, one compile reused by identical layers)."""
    units = units_of(module, unit_types)
    for _, _, child in units:
        child.compile(dynamic=True)  # in place: parameter names (checkpoints, export) do not change
    log.info("compiled %d units", len(units))
    return len(units)
