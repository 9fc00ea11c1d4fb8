"""Resumable checkpoints: model + optimizer in the strategy's format (torch.distributed.checkpoint,
sharded and reshardable, by default; DeepSpeed's own for ZeRO), plus each rank's train state (step,
data position, RNG) as a weights-only torch file.

Atomicity: everything is written into `step_<N>.tmp/`; once every rank is done, rank 0 writes the
`COMPLETE` marker and renames the folder to `step_<N>/`. A folder without the marker, or still named
`.tmp`, is never resumed from, so a run killed mid-save resumes from the previous checkpoint.

Retention (`keep_last`): once the new checkpoint is sealed and every rank has passed the barrier,
rank 0 deletes the older complete `step_<N>/` folders beyond the newest `keep_last`; it never
touches the folder just written, nor `.tmp` folders or anything without the marker.
"""

from __future__ import annotations

import logging
import os
import warnings
import re
import shutil
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

# A one-process run has no process group; DCP then saves/loads locally, as intended.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

COMPLETE_MARKER = "COMPLETE"
STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step_{step}"


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step under `root`, or None."""
    if not root.is_dir():
        return None
    complete = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / COMPLETE_MARKER).is_file()]
    return max(complete, key=lambda p: int(STEP_DIR.match(p.name).group(1)), default=None)


def save_checkpoint(root: Path, step: int, module: nn.Module, optimizer, train_state: dict, strategy,
                    keep_last: int | None = None) -> Path:
    """Write checkpoint `step` atomically; every rank calls this. keep_last: prune older ones (None: keep all)."""
    final, tmp = checkpoint_dir(root, step), root / f"step_{step}.tmp"
    if strategy.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    strategy.barrier()
    strategy.save_model_optimizer(tmp, module, optimizer)
    torch.save(train_state, tmp / f"train_state_rank{strategy.rank}.pt")
    strategy.barrier()
    if strategy.is_main:
        _seal(tmp, final)
    strategy.barrier()
    log.info("saved checkpoint %s", final)
    if keep_last is not None and strategy.is_main:
        prune_checkpoints(root, keep_last, keep=final)
    return final


def prune_checkpoints(root: Path, keep_last: int, keep: Path) -> list[Path]:
    """Delete complete checkpoints older than the newest `keep_last` (never `keep`); return them."""
    complete = sorted((p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / COMPLETE_MARKER).is_file()),
                      key=lambda p: int(STEP_DIR.match(p.name).group(1)), reverse=True)
    doomed = [p for p in complete[keep_last:] if p != keep]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed checkpoint %s (trainer.keep_last=%d)", path, keep_last)
    return doomed


def _seal(tmp: Path, final: Path) -> None:
    """Mark complete, then rename: the rename is the atomic commit point."""
    marker = tmp / COMPLETE_MARKER
    marker.write_text("ok\n")
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: Path, module: nn.Module, optimizer, strategy) -> dict:
    """Load model + optimizer in place; return this rank's train state (rank 0's if it has none)."""
    if not (path / COMPLETE_MARKER).is_file():
        raise ValueError(f"checkpoint {path} is incomplete (no {COMPLETE_MARKER} marker); it cannot be resumed")
    strategy.load_model_optimizer(path, module, optimizer)
    own = path / f"train_state_rank{strategy.rank}.pt"
    return torch.load(own if own.is_file() else path / "train_state_rank0.pt", weights_only=True)
