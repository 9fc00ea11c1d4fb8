"""Where step metrics go: metrics.jsonl, the console (progress bar + log lines), and wandb.

Only rank 0 writes; other ranks get a sink that drops everything.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lmms_engine.logging.wandb_sink import WandbSink, sweep_identity

log = logging.getLogger("lmms_engine.train")


class JsonlSink:
    """One JSON object per optimizer step, flushed at once so a killed run keeps every line.

    A run resumed at `start_step` keeps the lines of steps 1..start_step and drops the later ones
    (steps a killed run logged after its last checkpoint, which the resumed run trains again), so
    the file holds each step once, as the run that finished computed it."""

    def __init__(self, path: Path, start_step: int = 0):
        if start_step > 0 and path.is_file():
            _keep_steps_up_to(path, start_step)
        self._file = open(path, "a" if start_step > 0 else "w", encoding="utf-8")

    def log(self, metrics: dict) -> None:
        self._file.write(json.dumps(_json_safe(metrics)) + "\n")
        self._file.flush()

    def summary(self, values: dict) -> None:
        pass  # data_stats.json holds the data side; the file is one row per step

    def close(self) -> None:
        self._file.close()


class ConsoleSink:
    """A progress bar with loss, tokens/s and ETA, plus a log line every `log_every` steps."""

    def __init__(self, max_steps: int, start_step: int, log_every: int):
        self.log_every = log_every
        self._progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
        )
        self._task = self._progress.add_task("train", total=max_steps, completed=start_step, info="")
        self._progress.start()

    def log(self, metrics: dict) -> None:
        info = f"loss {metrics['loss']:.4f}  {metrics['tokens_per_s']:,.0f} tok/s"
        self._progress.update(self._task, completed=metrics["step"], info=info)
        if metrics["step"] % self.log_every == 0:
            log.info(_format_line(metrics))
        if "eval_loss" in metrics:  # always shown: evaluations are rare and what a user watches
            log.info(_format_eval_line(metrics))

    def summary(self, values: dict) -> None:
        if "params" in values:
            log.info("model: %s parameters, %s trained", f"{values['params']:,}", f"{values['trainable_params']:,}")

    def close(self) -> None:
        self._progress.stop()


class Sinks:
    def __init__(self, sinks: list):
        self._sinks = sinks

    def log(self, metrics: dict) -> None:
        for sink in self._sinks:
            sink.log(metrics)

    def summary(self, values: dict) -> None:
        """Run-level facts (data_stats, parameter counts): wandb's run summary, a console line."""
        for sink in self._sinks:
            sink.summary(values)

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()


def build_loggers(run_dir: Path, run_config: dict, max_steps: int, start_step: int, is_main: bool,
                  log_every: int = 1, wandb: dict | None = None) -> Sinks:
    """The `logger/` group's target. wandb: None, or {project, name, entity, mode, tags, group}; in a
    Hydra multirun, group null = the sweep's name, and the job's overrides are added to the tags."""
    if not is_main:
        return Sinks([])
    sinks = [JsonlSink(run_dir / "metrics.jsonl", start_step), ConsoleSink(max_steps, start_step, log_every)]
    if wandb is not None:
        sweep_group, sweep_tags = sweep_identity()
        settings = {**wandb, "group": wandb.get("group") or sweep_group, "tags": [*wandb.get("tags", []), *sweep_tags]}
        sinks.append(WandbSink(run_dir, run_config, start_step, **settings))
    return Sinks(sinks)


def _keep_steps_up_to(path: Path, last_step: int) -> None:
    """Rewrite `path` (atomically) without the lines of steps after `last_step`, nor a line cut
    short by a kill."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= last_step:
            kept.append(line + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


def _format_line(m: dict) -> str:
    # No MFU without a known peak FLOP/s (CPU, or an unlisted GPU): the entry point says why once.
    mfu = "" if m["mfu"] is None else f"mfu {100 * m['mfu']:.1f}%  "
    return (f"step {m['step']}  loss {m['loss']:.4f}  lr {m['lr']:.2e}  grad_norm {m['grad_norm']:.3f}  "
            f"tokens {m['tokens']}  {m['tokens_per_s']:,.0f} tok/s  {mfu}mem {m['peak_mem_gb']:.2f} GB")


def _format_eval_line(m: dict) -> str:
    # eval_tokens counts trained label tokens (data_stats.json: eval.label_tokens), not all tokens (eval.tokens)
    return f"step {m['step']}  eval_loss {m['eval_loss']:.4f} over {m['eval_tokens']:,} trained label tokens"


def _json_safe(metrics: dict) -> dict:
    # JSON has no NaN/Infinity: a non-finite value is written as null (with the raw text beside it).
    safe = {}
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            safe[key], safe[key + "_raw"] = None, str(value)
        else:
            safe[key] = value
    return safe
