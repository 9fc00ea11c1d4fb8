"""One-rank ZeRO-3 run in one process, then a census of what outlived it (issue 21); used by
tests/distributed/test_exit.py (gloo on CPU) and tests/gpu/test_exit_gpu.py (NCCL). `launch()`
starts it as its own process with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT set:

    python tests/distributed/zero3_exit_probe.py OUT [overrides...]

Writes OUT/report.json after `run()` returned and a collection ran: how many DeepSpeedEngine
objects and ZeRO-3 parameters (carrying `ds_process_group`) are alive, whether the WORLD process
group is, the process-group threads left, the modules left on ZeRO-3's forward stack, and the
warnings `parallel/dist.destroy` logged. (Library imports are inside the functions: the tests
import `launch` without them.)
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
JOB = ("parallel=zero3", "trainer.max_steps=1", "data.packing=false", "data.micro_batch_size=2")


def launch(out: Path, device: str, timeout: int = 600) -> dict:
    """Run the probe on `device` (cpu: gloo, CUDA hidden; cuda: NCCL) with the environment of
    scripts/stress_exit.py's jobs; fail with its output unless it exits 0; return its report."""
    sys.path.insert(0, str(REPO / "scripts"))
    import stress_exit

    env = dict(stress_exit.job_env(device), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()))
    proc = subprocess.run([sys.executable, __file__, str(out), f"parallel.device={device}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"probe exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}")
    return json.loads((out / "report.json").read_text())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def watch_world_group() -> list:
    """Weak references to the WORLD group, taken as the strategy joins the job."""
    import weakref

    import torch.distributed as dist

    from lmms_engine.parallel import dist as pdist

    refs: list[weakref.ref] = []
    join = pdist.init_process_group

    def joined(device):
        join(device)
        refs.append(weakref.ref(dist.group.WORLD))

    pdist.init_process_group = joined
    return refs


def census(world: list, warnings: list[str]) -> dict:
    import gc

    import torch
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.zero import parameter_offload

    from lmms_engine.parallel import dist as pdist

    gc.collect()
    objects = gc.get_objects()
    return {
        "engines": sum(isinstance(o, DeepSpeedEngine) for o in objects),
        "zero3_params": sum(isinstance(o, torch.nn.Parameter) and hasattr(o, "ds_process_group") for o in objects),
        "world_group_seen": len(world),
        "world_group_alive": any(ref() is not None for ref in world),
        "threads": pdist.process_group_threads(),
        "forward_stack": [type(m).__name__ for m in parameter_offload.FWD_MODULE_STACK],
        "warnings": warnings,
    }


def main(out: Path, overrides: list[str]) -> None:
    sys.path.insert(0, str(REPO))
    from lmms_engine.train.app import run
    from tests.conftest import compose_config

    records = _Records()
    logging.getLogger("lmms_engine.parallel.dist").addHandler(records)
    world = watch_world_group()
    run(compose_config(*JOB, *overrides), out / "run")
    report = census(world, records.messages)
    (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
