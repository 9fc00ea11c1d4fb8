"""OmegaConf resolvers used by conf/: `run_stamp`, `demo_data`, `path_name` and `unless`.

`run_stamp`: one run directory for all ranks of a torchrun job.

Hydra names the run directory with a timestamp taken when each process composes its config, so
ranks started a second apart would split the run. The `run_stamp` resolver gives every rank the
same stamp: $LMMS_RUN_STAMP if set; else, under a one-node torchrun, the start time of the torchrun
agent (the parent of every local rank); under a multi-node torchrun, the rendezvous id (pass the
same --rdzv-id on every node, or set LMMS_RUN_STAMP); else the current time.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from omegaconf import OmegaConf

STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"


def run_stamp() -> str:
    if os.environ.get("LMMS_RUN_STAMP"):
        return os.environ["LMMS_RUN_STAMP"]
    if "TORCHELASTIC_RUN_ID" in os.environ:
        if os.environ.get("LOCAL_WORLD_SIZE") == os.environ.get("WORLD_SIZE"):
            # One node: every rank is a child of the same torchrun agent.
            return _format(_process_start_time(os.getppid()))
        rdzv_id = os.environ["TORCHELASTIC_RUN_ID"]  # several nodes: the rendezvous id (--rdzv-id)
        if rdzv_id in ("", "none"):
            raise ValueError("a multi-node torchrun needs a run id shared by every node: pass the same --rdzv-id "
                             "on each node, or set LMMS_RUN_STAMP (or hydra.run.dir) to the same value everywhere")
        return rdzv_id
    return datetime.datetime.now().strftime(STAMP_FORMAT)


def _process_start_time(pid: int) -> float:
    """Seconds since the epoch at which `pid` started (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[19])  # field 22 of stat: start time in clock ticks after boot
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _format(epoch_seconds: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_seconds).strftime(STAMP_FORMAT)


def demo_data(name: str) -> str:
    """Absolute path of a file of the bundled demo data (works from any working directory)."""
    return str(Path(__file__).resolve().parents[1] / "data" / "demo" / name)


def path_name(path: str) -> str:
    """The last component of a path or hub id (`Qwen/Qwen2.5-7B-Instruct` -> `Qwen2.5-7B-Instruct`)."""
    return Path(str(path)).name


def unless(other, value):
    """`value` while `other` is null, else null: a default that gives way to an alternative key
    (`max_steps: ${unless:${.epochs},120}`), so exactly one of the two is set either way."""
    return value if other is None else None


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)
    if not OmegaConf.has_resolver("demo_data"):
        OmegaConf.register_new_resolver("demo_data", demo_data)
    if not OmegaConf.has_resolver("path_name"):
        OmegaConf.register_new_resolver("path_name", path_name)
    if not OmegaConf.has_resolver("unless"):
        OmegaConf.register_new_resolver("unless", unless)
