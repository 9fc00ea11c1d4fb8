"""One-rank ZeRO-3 run in this process, then a census of what outlived it (issue 21); read by
tests/distributed/test_exit.py. Run as a plain process with RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT set (gloo on CPU):

    python tests/distributed/zero3_exit_probe.py OUT [overrides...]

Writes OUT/report.json after `run()` returned and a collection ran: how many DeepSpeedEngine
objects and ZeRO-3 parameters (carrying `ds_process_group`) are alive, whether the WORLD process
group is, the process-group threads left, the modules left on ZeRO-3's forward stack, and the
warnings `parallel/dist.destroy` logged.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import weakref
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lmms_engine.parallel import dist as pdist  # noqa: E402
from lmms_engine.train.app import run  # noqa: E402
from tests.conftest import compose_config  # noqa: E402

JOB = ("parallel=zero3", "parallel.device=cpu", "trainer.max_steps=1", "data.packing=false", "data.micro_batch_size=2")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def watch_world_group() -> list[weakref.ref]:
    """Weak references to the WORLD group, taken as the strategy joins the job."""
    refs: list[weakref.ref] = []
    join = pdist.init_process_group

    def joined(device):
        join(device)
        refs.append(weakref.ref(dist.group.WORLD))

    pdist.init_process_group = joined
    return refs


def census(world: list[weakref.ref], warnings: list[str]) -> dict:
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.zero import parameter_offload

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
    records = _Records()
    logging.getLogger("lmms_engine.parallel.dist").addHandler(records)
    world = watch_world_group()
    run(compose_config(*JOB, *overrides), out / "run")
    report = census(world, records.messages)
    (out / "report.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
