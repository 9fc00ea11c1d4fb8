"""FSDP2 (torch.distributed.fsdp.fully_shard): each shard unit (decoder layer, vision / audio block)
is its own FSDP group, then the root; bf16 compute with fp32 master weights and fp32 reduction."""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from lmms_engine.parallel import dist as pdist
from lmms_engine.parallel.base import Strategy, compute_dtype
from lmms_engine.parallel.common import apply_activation_checkpointing, apply_compile, units_of

log = logging.getLogger(__name__)


def shard_with_fsdp2(module: nn.Module, unit_types: tuple[type[nn.Module], ...], mesh, mp_policy: MixedPrecisionPolicy,
                     reshard_after_forward: bool, cpu_offload: bool) -> nn.Module:
    """fully_shard every unit, then the root (which keeps embeddings, final norm and lm_head)."""
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    units = [child for _, _, child in units_of(module, unit_types)]
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward, offload_policy=offload)
    # The root's params are needed again right at the start of backward: keep them unsharded.
    fully_shard(module, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=False, offload_policy=offload)
    log.info("fsdp2: %d units + root over %d ranks", len(units), mesh.size())
    return module


class FSDP2(Strategy):
    """Data parallel with sharded params, grads and optimizer state (torchrun; gloo on CPU)."""

    name = "fsdp2"

    def __init__(self, device: str = "auto", precision: str = "auto", reshard_after_forward: bool = True,
                 cpu_offload: bool = False, activation_checkpointing: bool = False, compile: bool = False):
        super().__init__(device)
        self.param_dtype = compute_dtype(precision, self.device)
        self.reshard_after_forward = reshard_after_forward
        self.cpu_offload = cpu_offload
        self.activation_checkpointing = activation_checkpointing
        self.compile = compile
        self.mesh = None

    def setup(self) -> None:
        pdist.init_process_group(self.device)
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.mesh = init_device_mesh(self.device.type, (self.world_size,))

    def prepare(self, module: nn.Module, shard_units: tuple[type[nn.Module], ...]) -> nn.Module:
        if self.activation_checkpointing:
            apply_activation_checkpointing(module, shard_units)
        if self.compile:
            apply_compile(module, shard_units)
        if not self.cpu_offload:
            module.to(self.device)
        policy = MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=torch.float32)
        return shard_with_fsdp2(module, shard_units, self.mesh, policy, self.reshard_after_forward, self.cpu_offload)

    def gradient_sync(self, module: nn.Module, enabled: bool):
        # No reduce-scatter on accumulation micro-steps: gradients accumulate unsharded locally.
        module.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()
