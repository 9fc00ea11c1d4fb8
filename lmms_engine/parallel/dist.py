"""Process-group helpers shared by the strategies (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK)."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def under_launcher() -> bool:
    """True inside a torchrun / Slurm task, where this process is already one rank of a job."""
    return "LOCAL_RANK" in os.environ or "SLURM_PROCID" in os.environ


def export_submitit_env() -> None:
    """Inside a Slurm task started by hydra's submitit launcher: set RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR and MASTER_PORT from Slurm's variables, as torchrun would."""
    if "SUBMITIT_EXECUTOR" not in os.environ or "RANK" in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export()


def pick_device(device: str) -> torch.device:
    """'auto' -> this rank's GPU if CUDA is present, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu"):
        raise ValueError(f"parallel.device={device!r}; choose auto, cuda or cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("parallel.device=cuda but no CUDA device is visible")
        torch.cuda.set_device(env_local_rank())
        return torch.device("cuda", env_local_rank())
    return torch.device("cpu")


def init_process_group(device: torch.device) -> None:
    """Join the torchrun job (nccl on GPUs, gloo on CPU) unless already joined."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def any_rank(strategy, flag: bool) -> bool:
    """True on every rank when `flag` is true on any (one all-reduce, so also a barrier; none on a
    single process)."""
    if strategy.world_size == 1:
        return flag
    return strategy.all_reduce_sum(torch.tensor([float(flag)], device=strategy.device)).item() > 0
