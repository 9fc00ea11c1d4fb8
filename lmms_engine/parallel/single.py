"""One process, one device: the reference every distributed strategy must match.

On CUDA with bf16 compute, the model goes through FSDP2 over a one-rank group: nothing is sharded,
but FSDP2's mixed precision gives bf16 parameters, activations and gradients for compute with fp32
master weights, fp32 gradients and fp32 optimizer state (faster and leaner than op-level autocast,
which keeps the residual stream and saved activations in fp32). On CPU (fp32) the module is plain.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import torch
import torch.distributed as dist
from torch import nn

from lmms_engine.parallel import dist as pdist
from lmms_engine.parallel.base import Strategy, compute_dtype
from lmms_engine.parallel.common import activation_offloader, apply_checkpointing_and_compile, checkpoint_every
from lmms_engine.parallel.fsdp2 import FSDP2


class SingleDevice(Strategy):
    name = "single"

    def __init__(self, device: str = "auto", precision: str = "auto", activation_checkpointing: bool | int = False,
                 encoder_checkpointing: bool | None = None, compile: bool = False, offload_activations: bool = False):
        super().__init__(device)
        self.dtype = compute_dtype(precision, self.device)
        self.checkpoint_every = checkpoint_every(activation_checkpointing)
        self.offloader = activation_offloader(offload_activations, self.checkpoint_every)
        self.encoder_checkpointing = encoder_checkpointing
        self.compile = compile
        self._fsdp = None
        if self.dtype != torch.float32:
            self._fsdp = FSDP2(device=self.device.type, precision=precision, reshard_after_forward=False,
                               activation_checkpointing=activation_checkpointing,
                               encoder_checkpointing=encoder_checkpointing, compile=compile,
                               offload_activations=offload_activations)
            self.offloader = self._fsdp.offloader  # the one its prepare() uses

    def setup(self) -> None:
        if pdist.env_world_size() > 1:
            raise ValueError("parallel=single runs one process; use parallel=fsdp2 (or ddp / zero*) under torchrun")
        if self._fsdp is not None:
            _init_single_rank_group(self.device)
            self._fsdp.setup()

    def prepare(self, module: nn.Module, shard_units: tuple[type[nn.Module], ...],
                encoder_units: tuple[type[nn.Module], ...] = ()) -> nn.Module:
        if self._fsdp is not None:
            return self._fsdp.prepare(module, shard_units, encoder_units)
        apply_checkpointing_and_compile(module, shard_units, self.checkpoint_every, self.compile, encoder_units,
                                        self.encoder_checkpointing, self.offloader)
        return module.to(self.device)

    def teardown(self) -> None:
        if self._fsdp is not None:
            self._fsdp.teardown()  # drops its device mesh, then destroys the one-rank group
        else:
            super().teardown()

    def gradient_sync(self, module: nn.Module, enabled: bool):
        """One rank: gradients are still reduced (cast to fp32 and added to the master gradients)
        after every micro-batch, but the bf16 parameter copies are kept until the step's last
        backward rather than re-cast from the fp32 masters for each micro-batch."""
        if self._fsdp is not None:
            module.set_reshard_after_backward(enabled)
        return contextlib.nullcontext()


def _init_single_rank_group(device: torch.device) -> None:
    if dist.is_initialized():
        return
    store = dist.FileStore(os.path.join(tempfile.mkdtemp(prefix="lmms_pg_"), "store"), 1)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=0, world_size=1)
