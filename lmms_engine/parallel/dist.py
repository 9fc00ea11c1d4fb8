"""Process-group helpers shared by the strategies (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK)."""

from __future__ import annotations

import datetime
import gc
import importlib
import importlib.util
import logging
import os

import torch
import torch.distributed as dist

from lmms_engine import compat

log = logging.getLogger(__name__)

# Native threads a process group's backend owns, as Linux names them: gloo's transport loop and
# work threads, NCCL's watchdog and heartbeat monitor. They end only when the backend is freed.
PROCESS_GROUP_THREADS = ("gloo_tcp_loop", "pt_gloo_runloop", "pt_nccl_watchdg", "pt_nccl_heartbt")

# Modules whose functions take the WORLD group as a default argument (`group=dist.group.WORLD`), a
# value bound when the module is first imported. Imported after init_process_group (transformers'
# save_pretrained imports torch.distributed.fsdp, and through it torch.distributed.nn, and DeepSpeed,
# lazily), that default keeps the job's WORLD group, and its backend threads, alive past destroy()
# until the interpreter exits. Imported before, the default is None. (DeepSpeed: when installed.)
BINDS_WORLD_AT_IMPORT = ("torch.distributed.nn.functional", "torch.distributed.fsdp.sharded_grad_scaler",
                         "torch.distributed.optim.zero_redundancy_optimizer", "deepspeed.comm.torch")


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
    for name in BINDS_WORLD_AT_IMPORT:
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            importlib.import_module(name)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))


def all_reduce_sum(value: torch.Tensor, group=None) -> torch.Tensor:
    """Sum over the ranks of `group` (None: all ranks), in place; returns `value`."""
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM, group=group)
    return value


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def destroy() -> None:
    """Leave the job and free its process groups now, on this thread, while the interpreter runs.

    destroy_process_group() only unregisters the groups: each C++ backend, and the worker threads
    it owns, lives until its last Python reference goes. Left to interpreter exit, a gloo worker
    still retiring the job's last collective frees that work's tensors, needs the GIL for their
    Python objects, is ended by the finalizing interpreter (pthread_exit) inside a noexcept
    destructor, and the process aborts: "terminate called without an active exception", SIGABRT.
    Callers drop their own references (engine, device mesh, wrapped module) first; DTensor's caches
    (which keep every mesh FSDP2 used) are emptied here, and the collection then frees the groups,
    whose destructors wait for pending work and join their threads.
    """
    if dist.is_initialized():
        dist.destroy_process_group()
    compat.clear_dtensor_caches()
    gc.collect()
    left = process_group_threads()
    if left:
        log.warning("process-group threads still alive after teardown: %s; something still holds a process "
                    "group, and the process may abort at exit", ", ".join(left))


def process_group_threads() -> list[str]:
    """Names of this process's live process-group backend threads (Linux; empty elsewhere)."""
    return [name for name in native_thread_names() if name in PROCESS_GROUP_THREADS]


def native_thread_names() -> list[str]:
    """Every thread of this process, C++ ones included, by name (from /proc; empty without it)."""
    names = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return names
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/comm", encoding="utf-8") as comm:
                names.append(comm.read().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return sorted(names)


def any_rank(strategy, flag: bool) -> bool:
    """True on every rank when `flag` is true on any (one all-reduce, so also a barrier; none on a
    single process)."""
    if strategy.world_size == 1:
        return flag
    return strategy.all_reduce_sum(torch.tensor([float(flag)], device=strategy.device)).item() > 0
