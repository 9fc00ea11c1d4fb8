"""Transformations every strategy applies in the same order (torchtitan style):
activation checkpointing, then compile, then sharding/wrapping."""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

from lmms_engine import compat
from lmms_engine.options import check_offload, checkpoint_every, encoder_checkpointing
from lmms_engine.parallel.offload import ActivationOffloader, offloaded_checkpoint

log = logging.getLogger(__name__)


def units_of(module: nn.Module, unit_types: tuple[type[nn.Module], ...]) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, child) for every submodule that is one of `unit_types`."""
    found = []
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, unit_types):
                found.append((parent, name, child))
    return found


def cast_inputs_before_checkpoint(module: nn.Module, dtype: torch.dtype) -> int:
    """Cast the floating inputs of every checkpointed unit to `dtype` on its checkpoint wrapper, i.e.
    before the checkpoint saves them; returns how many wrappers.

    FSDP2's mixed precision casts a unit's inputs to the compute dtype in its pre-forward hook, but
    torch before 2.13 skips that cast when the checkpoint recomputes the unit in backward (pytorch
    issue 159359). A unit fed fp32 tensors (the vision tower's rotary cos / sin) then recomputes on
    fp32 what ran on bf16: other numerics, and under torch.compile a CheckpointError ("saved dtype
    bfloat16, recomputed float32"). Cast here, both passes see the same bf16 inputs, on every torch."""
    wrappers = [m for m in module.modules() if compat.is_checkpoint_wrapper(m)]
    for wrapper in wrappers:
        wrapper.register_forward_pre_hook(functools.partial(_cast_floating_inputs, dtype=dtype), with_kwargs=True)
    return len(wrappers)


def _cast_floating_inputs(module, args, kwargs, *, dtype):
    return _cast_floating(args, dtype), _cast_floating(kwargs, dtype)


def _cast_floating(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if torch.is_floating_point(value) else value
    if type(value) in (tuple, list):
        return type(value)(_cast_floating(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast_floating(v, dtype) for k, v in value.items()}
    return value


def activation_offloader(offload: bool, every: int) -> ActivationOffloader | None:
    """parallel.offload_activations: the offloader of the checkpointed layers' inputs, or None."""
    check_offload(offload, every)
    return ActivationOffloader() if offload else None


def apply_activation_checkpointing(module: nn.Module, unit_types: tuple[type[nn.Module], ...], every: int = 1,
                                   offloader: ActivationOffloader | None = None) -> int:
    """Recompute the activations of every `every`-th unit in backward instead of storing them;
    with `offloader`, the input each of those units keeps lives in host memory until its recompute."""
    units = units_of(module, unit_types)[::every]
    checkpoint_fn = offloaded_checkpoint(offloader) if offloader is not None else None
    for parent, name, child in units:
        parent.register_module(name, compat.checkpoint_wrapper(child, preserve_rng_state=False, checkpoint_fn=checkpoint_fn))
    log.info("activation checkpointing on %d %s units%s", len(units), "/".join(t.__name__ for t in unit_types),
             ", their inputs offloaded to host memory" if offloader is not None else "")
    return len(units)


def apply_compile(module: nn.Module, unit_types: tuple[type[nn.Module], ...], backend: str = "inductor") -> int:
    """torch.compile each unit's forward separately (torchtitan compiles per block too): small graphs,
    and one compiled graph shared by every identical layer (parameters are graph inputs).

    The unit's `forward` is replaced on the instance, not the module wrapped: parameter names (hence
    checkpoints and exports) do not change, and the hooks that run around forward in the module's
    __call__ (FSDP2's all-gather / reshard, activation checkpointing) stay outside the graph, as
    with torchtitan's compile-then-fully_shard of each block.

    Shapes: the first step compiles for its pack's exact sizes; the next pack of another length
    recompiles once with the changed dimensions (tokens, documents in cu_seqlens, the longest
    document) marked dynamic by dynamo's automatic dynamic shapes, and that graph serves every later
    pack. Hidden sizes stay static, so inductor's norm and elementwise kernels keep fixed widths
    (dynamic=True would make them symbolic too). `backend`: "aot_eager" traces without code
    generation (CPU tests)."""
    units = units_of(module, unit_types)
    for _, _, child in units:
        child.forward = torch.compile(child.forward, backend=backend)
    log.info("torch.compile (%s) on %d units; the first two steps include compile time", backend, len(units))
    return len(units)


def apply_checkpointing_and_compile(module: nn.Module, unit_types: tuple[type[nn.Module], ...], every: int,
                                    compile: bool, encoder_types: tuple[type[nn.Module], ...] = (),
                                    encoders: bool | None = None,
                                    offloader: ActivationOffloader | None = None) -> None:
    """The transformations every strategy applies before wrapping, in their fixed order.

    unit_types: every shard unit; encoder_types: those that are encoder blocks (vision / audio),
    checkpointed all or none (`encoders`, see encoder_checkpointing); the rest (decoder layers) every
    `every`-th. Encoder activations are large (thousands of patches per image) while their recompute
    is cheap next to the decoder's, so checkpointing only them is a useful middle ground.
    `offloader` (parallel.offload_activations): the checkpointed decoder layers' inputs go to host memory
    (the decoder's hidden states scale with the sequence; encoder blocks keep theirs on the device)."""
    decoder_types = tuple(t for t in unit_types if t not in encoder_types)
    if every and decoder_types:
        apply_activation_checkpointing(module, decoder_types, every, offloader)
    if encoder_types and encoder_checkpointing(encoders, every):
        apply_activation_checkpointing(module, encoder_types, 1)
    if compile:
        apply_compile(module, unit_types)
