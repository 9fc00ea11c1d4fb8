"""Runs as the report reads them: metrics.jsonl (one row per step), the composed config and data_stats.json.

A run directory is one holding `metrics.jsonl`; a multirun directory is expanded to its job
directories, in job order. A killed-and-resumed run may have logged a step twice (the lines after its
last checkpoint, then the same steps again): the last line of each step counts, so every curve is one
continuous line over the steps.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmms_engine.dotted import flatten

METRICS_FILE = "metrics.jsonl"


@dataclass
class RunData:
    path: Path
    rows: list[dict]  # metrics.jsonl: the last row logged for each step, by step
    config: dict[str, Any] = field(default_factory=dict)  # .hydra/config.yaml as dotted keys ({}: none)
    data_stats: dict[str, Any] = field(default_factory=dict)  # data_stats.json as dotted keys ({}: none)
    label: str = ""  # the run's name in legends and table headers


def run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Each path as the run directories it stands for: itself, or a multirun directory's jobs."""
    found = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise ValueError(f"{path}: no such directory; pass a run directory (outputs/<name>/<stamp>) or a "
                             "multirun directory (outputs/<name>/multirun_<stamp>)")
        if (path / METRICS_FILE).is_file():
            found.append(path)
            continue
        jobs = sorted((d for d in path.iterdir() if (d / METRICS_FILE).is_file()), key=_job_order)
        if not jobs:
            raise ValueError(f"{path}: no {METRICS_FILE} in it nor in its sub-directories; pass a run directory "
                             "(outputs/<name>/<stamp>) or a multirun directory (outputs/<name>/multirun_<stamp>)")
        found += jobs
    return found


def _job_order(job_dir: Path) -> tuple[float, str]:
    """Multirun jobs are `<number>_<overrides>`: 2_... before 10_...; other names after, by name."""
    number = job_dir.name.split("_", 1)[0]
    return (int(number) if number.isdigit() else float("inf"), job_dir.name)


def load_run(path: Path) -> RunData:
    config_file, stats_file = path / ".hydra" / "config.yaml", path / "data_stats.json"
    config = flatten(yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}) if config_file.is_file() else {}
    stats = flatten(json.loads(stats_file.read_text(encoding="utf-8"))) if stats_file.is_file() else {}
    return RunData(path=path, rows=read_metrics(path / METRICS_FILE), config=config, data_stats=stats)


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl's rows, the last one of each step, sorted by step (a line cut short by a kill is skipped)."""
    by_step: dict[int, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            by_step[row["step"]] = row
    return [by_step[step] for step in sorted(by_step)]


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the rows that hold a number for it (null, e.g. a skipped step's loss, is left out)."""
    points = [(row["step"], row[key]) for row in rows if is_number(row.get(key))]
    return [s for s, _ in points], [v for _, v in points]


def config_differences(runs: list[RunData]) -> dict[str, list]:
    """Dotted config keys whose values differ between the runs -> the value of each run (None: absent)."""
    keys = sorted({key for run in runs for key in run.config})
    differing = {}
    for key in keys:
        values = [run.config.get(key) for run in runs]
        if any(value != values[0] for value in values[1:]):
            differing[key] = values
    return differing


# name -> (metrics.jsonl key, summary of that key's values over the run's steps)
FIGURES: dict[str, tuple[str, Callable[[list[float]], float]]] = {
    "last step": ("step", lambda v: v[-1]),
    "final loss": ("loss", lambda v: v[-1]),
    "lowest loss": ("loss", min),
    "final eval loss": ("eval_loss", lambda v: v[-1]),
    "mean tokens/s": ("tokens_per_s", statistics.fmean),
    "mean MFU": ("mfu", statistics.fmean),
    "peak memory (GB)": ("peak_mem_gb", max),
    "tokens trained": ("tokens", sum),
    "time in steps (s)": ("step_s", sum),
    "skipped steps": ("bad_steps", lambda v: v[-1]),
}


def final_figures(runs: list[RunData]) -> dict[str, list]:
    """Figure name -> its value for each run (None where the run has no such metric); figures no run has are left out."""
    table = {}
    for name, (key, summary) in FIGURES.items():
        values = []
        for run in runs:
            _, points = series(run.rows, key)
            values.append(summary(points) if points else None)
        if any(value is not None for value in values):
            table[name] = values
    return table


def label_runs(runs: list[RunData], differences: dict[str, list]) -> None:
    """Name each run by its own values of the differing keys (`optim.lr=0.001`) when that tells every
    run apart, else by its directory (with its parent's name where directories share a name)."""
    by_values = [", ".join(f"{key}={values[i]}" for key, values in differences.items()) for i in range(len(runs))]
    if differences and len(set(by_values)) == len(runs):
        labels = by_values
    else:
        labels = [run.path.name for run in runs]
        if len(set(labels)) < len(runs):
            labels = [f"{run.path.parent.name}/{run.path.name}" for run in runs]
    for run, label in zip(runs, labels, strict=True):
        run.label = label
