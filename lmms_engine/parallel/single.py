"""One process, one device: the reference every distributed strategy must match."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from lmms_engine.parallel import dist as pdist
from lmms_engine.parallel.common import apply_activation_checkpointing, apply_compile


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """'auto' -> bf16 compute on CUDA, fp32 on CPU. Params and optimizer state stay fp32."""
    choices = {"auto": None, "fp32": None, "bf16": torch.bfloat16}
    if precision not in choices:
        raise ValueError(f"parallel.precision={precision!r}; choose one of {sorted(choices)}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return choices[precision]


class SingleDevice:
    """Model on one device, fp32 master weights, optional bf16 autocast."""

    name = "single"

    def __init__(self, device: str = "auto", precision: str = "auto", activation_checkpointing: bool = False, compile: bool = False):
        self.device = pdist.pick_device(device)
        self.compute_dtype = autocast_dtype(precision, self.device)
        self.activation_checkpointing = activation_checkpointing
        self.compile = compile
        self.rank, self.world_size = 0, 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self) -> None:
        if pdist.env_world_size() > 1:
            raise ValueError("parallel=single runs one process; use parallel=fsdp2 (or ddp / zero*) under torchrun")

    def prepare(self, module: nn.Module, shard_units: tuple[type[nn.Module], ...]) -> nn.Module:
        if self.activation_checkpointing:
            apply_activation_checkpointing(module, shard_units)
        if self.compile:
            apply_compile(module, shard_units)
        return module.to(self.device)

    def build_optimizer(self, module: nn.Module, make_optimizer) -> torch.optim.Optimizer:
        return make_optimizer(module)

    def autocast(self):
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def gradient_sync(self, module: nn.Module, enabled: bool):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, module: nn.Module) -> None:
        loss.backward()

    def clip_grad_norm(self, module: nn.Module, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, module: nn.Module) -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        return pdist.all_reduce_sum(value)

    def barrier(self) -> None:
        pdist.barrier()

    def teardown(self) -> None:
        pdist.destroy()
