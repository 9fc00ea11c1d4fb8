"""One process, one device (`parallel=single`): the reference every distributed strategy must match.

`single_device(...)`, the config's `_target_`, picks one of two strategies by the compute dtype:

    bf16 (CUDA; precision auto or bf16)   OneRankFSDP2: FSDP2 over a one-rank process group. Nothing
                                          is sharded, but FSDP2's mixed precision gives bf16 parameters,
                                          activations and gradients for compute with fp32 master
                                          weights, fp32 gradients and fp32 optimizer state (faster and
                                          leaner than op-level autocast, which keeps the residual
                                          stream and saved activations in fp32)
    fp32 (CPU; or precision fp32)          SingleDevice: the module as built, on the device
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


def single_device(device: str = "auto", precision: str = "auto", activation_checkpointing: bool | int = False,
                  encoder_checkpointing: bool | None = None, compile: bool = False,
                  offload_activations: bool = False) -> Strategy:
    """The strategy of `parallel=single`: OneRankFSDP2 for bf16 compute, else SingleDevice (fp32)."""
    options = dict(activation_checkpointing=activation_checkpointing, encoder_checkpointing=encoder_checkpointing,
                   compile=compile, offload_activations=offload_activations)
    if compute_dtype(precision, pdist.pick_device(device)) == torch.float32:
        return SingleDevice(device=device, **options)
    return OneRankFSDP2(device=device, precision=precision, **options)


class SingleDevice(Strategy):
    """The module as built, on one device, in fp32 (on CUDA in bf16, parallel=single runs
    OneRankFSDP2 instead: single_device)."""

    name = "single"

    def __init__(self, device: str = "auto", activation_checkpointing: bool | int = False,
                 encoder_checkpointing: bool | None = None, compile: bool = False, offload_activations: bool = False):
        super().__init__(device)
        self.dtype = torch.float32
        self.checkpoint_every = checkpoint_every(activation_checkpointing)
        self.offloader = activation_offloader(offload_activations, self.checkpoint_every)
        self.encoder_checkpointing = encoder_checkpointing
        self.compile = compile

    def setup(self) -> None:
        refuse_multiple_processes()

    def prepare(self, module: nn.Module, shard_units: tuple[type[nn.Module], ...],
                encoder_units: tuple[type[nn.Module], ...] = ()) -> nn.Module:
        apply_checkpointing_and_compile(module, shard_units, self.checkpoint_every, self.compile, encoder_units,
                                        self.encoder_checkpointing, self.offloader)
        return module.to(self.device)


class OneRankFSDP2(FSDP2):
    """parallel=single with bf16 compute: FSDP2 over a one-rank process group (see the module
    docstring), its parameters kept unsharded after forward (there is no other rank to gather from)."""

    name = "single"

    def __init__(self, device: str = "auto", precision: str = "auto", activation_checkpointing: bool | int = False,
                 encoder_checkpointing: bool | None = None, compile: bool = False, offload_activations: bool = False):
        super().__init__(device=device, precision=precision, reshard_after_forward=False,
                         activation_checkpointing=activation_checkpointing, encoder_checkpointing=encoder_checkpointing,
                         compile=compile, offload_activations=offload_activations)

    def setup(self) -> None:
        refuse_multiple_processes()
        _init_single_rank_group(self.device)
        super().setup()

    def gradient_sync(self, module: nn.Module, enabled: bool):
        """One rank: gradients are still reduced (cast to fp32 and added to the master gradients)
        after every micro-batch, but the bf16 parameter copies are kept until the step's last
        backward rather than re-cast from the fp32 masters for each micro-batch."""
        module.set_reshard_after_backward(enabled)
        return contextlib.nullcontext()


def refuse_multiple_processes() -> None:
    if pdist.env_world_size() > 1:
        raise ValueError("parallel=single runs one process; use parallel=fsdp2 (or ddp / zero*) under torchrun")


def _init_single_rank_group(device: torch.device) -> None:
    if dist.is_initialized():
        return
    store = dist.FileStore(os.path.join(tempfile.mkdtemp(prefix="lmms_pg_"), "store"), 1)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=0, world_size=1)
