"""DDP (torch DistributedDataParallel): every rank holds the whole model and optimizer state and
gradients are all-reduced (averaged) after backward. The simplest data parallelism, for models
that fit one device with their optimizer state; bf16 is op-level autocast over fp32 weights."""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lmms_engine.parallel import dist as pdist
from lmms_engine.parallel.base import Strategy, compute_dtype
from lmms_engine.parallel.common import activation_offloader, apply_checkpointing_and_compile, checkpoint_every

log = logging.getLogger(__name__)


def wrap_with_ddp(module: nn.Module, device: torch.device, find_unused_parameters: bool) -> DistributedDataParallel:
    """DDP over the default process group; on CPU (gloo) there are no device ids."""
    device_ids = [device.index] if device.type == "cuda" else None
    # broadcast_buffers=False: our models' buffers (rotary frequencies) are the same on every rank
    # by construction, so re-broadcasting them before every forward is wasted communication.
    return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False,
                                   find_unused_parameters=find_unused_parameters)


class DDP(Strategy):
    """Replicated params, grads and optimizer state; gradients averaged over ranks (torchrun)."""

    name = "ddp"

    def __init__(self, device: str = "auto", precision: str = "auto", activation_checkpointing: bool | int = False,
                 encoder_checkpointing: bool | None = None,
                 compile: bool = False, find_unused_parameters: bool = False,
                 offload_activations: bool = False):
        super().__init__(device)
        self.dtype = compute_dtype(precision, self.device)
        self.checkpoint_every = checkpoint_every(activation_checkpointing)
        self.offloader = activation_offloader(offload_activations, self.checkpoint_every)
        self.encoder_checkpointing = encoder_checkpointing
        self.compile = compile
        self.find_unused_parameters = find_unused_parameters

    def setup(self) -> None:
        pdist.init_process_group(self.device)
        self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()

    def prepare(self, module: nn.Module, shard_units: tuple[type[nn.Module], ...],
                encoder_units: tuple[type[nn.Module], ...] = ()) -> nn.Module:
        apply_checkpointing_and_compile(module, shard_units, self.checkpoint_every, self.compile, encoder_units,
                                        self.encoder_checkpointing, self.offloader)
        wrapped = wrap_with_ddp(module.to(self.device), self.device, self.find_unused_parameters)
        log.info("ddp: replicated over %d ranks, compute dtype %s", self.world_size, self.dtype)
        return wrapped

    def unwrap(self, module: nn.Module) -> nn.Module:
        """The module given to prepare() (the DDP wrapper hides its attributes, e.g. `.lm`)."""
        return module.module

    def autocast(self):
        # Weights, gradients and optimizer state stay fp32; only the ops run in bf16.
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def gradient_sync(self, module: nn.Module, enabled: bool):
        # no_sync: accumulation micro-steps add into local .grad without an all-reduce; the last
        # micro-step's backward all-reduces the accumulated sum.
        return contextlib.nullcontext() if enabled else module.no_sync()
