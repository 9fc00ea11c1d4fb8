"""Weights & Biases: one wandb run per run directory, continued across resumes; sweep jobs grouped.

The wandb run id is kept in `<run_dir>/wandb_run_id`, written before `wandb.init`, so a run killed or
preempted and resumed in the same directory continues the same wandb run. It is rewound to the step
the run resumed at (wandb's `resume_from`), as metrics.jsonl drops the steps after the checkpoint, so
the dashboard curve is one line without the steps trained twice. The jobs of a Hydra multirun share
one wandb group (the sweep's name) and carry their overrides as tags.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

RUN_ID_FILE = "wandb_run_id"
MAX_TAG_CHARS = 64  # wandb refuses longer tags


class WandbSink:
    def __init__(self, run_dir: Path, config: dict, start_step: int, project: str, name: str | None, entity: str | None,
                 mode: str | None, tags: list[str], group: str | None = None):
        import wandb

        run_id, previous = run_identity(run_dir, new_run_id)
        # A run seen before is rewound to this process's first step; `id` and `resume_from` exclude each other.
        where = {"resume_from": f"{run_id}?_step={start_step}"} if previous else {"id": run_id}
        self._run = wandb.init(project=project, name=name or run_dir.name, entity=entity, mode=mode, dir=str(run_dir),
                               config=config, tags=[t[:MAX_TAG_CHARS] for t in tags], group=group, **where)

    def log(self, metrics: dict) -> None:
        self._run.log({k: v for k, v in metrics.items() if v is not None and k != "step"}, step=metrics["step"])

    def summary(self, values: dict) -> None:
        self._run.summary.update(values)

    def close(self) -> None:
        self._run.finish()


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]  # wandb ids: letters and digits; 48 random bits never collide in a project


def run_identity(run_dir: Path, new_id) -> tuple[str, bool]:
    """(wandb run id of `run_dir`, whether an earlier process of this run directory had it)."""
    path = run_dir / RUN_ID_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8").strip(), True
    run_id = new_id()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(run_id + "\n", encoding="utf-8")
    os.replace(tmp, path)  # atomic: a kill leaves the old state or the whole id
    return run_id, False


def sweep_identity() -> tuple[str | None, list[str]]:
    """(group, tags) of a Hydra multirun job: `<name>/<sweep dir>` and its overrides (those that name
    its directory); (None, []) outside a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None, []
    hydra = HydraConfig.get()
    excluded = set(hydra.job.config.override_dirname.exclude_keys)
    tags = [o for o in hydra.overrides.task if o.split("=", 1)[0].lstrip("+~") not in excluded]
    sweep_dir = Path(hydra.sweep.dir)
    return f"{sweep_dir.parent.name}/{sweep_dir.name}", tags
