"""Resumable checkpoints: model + optimizer in the strategy's format (torch.distributed.checkpoint,
sharded and reshardable, by default; DeepSpeed's own for ZeRO), plus each rank's train state (step,
data position, RNG) as a weights-only torch file.

Atomicity: everything is written into `step_<N>.tmp/`; once every rank is done, rank 0 writes the
`COMPLETE` marker and renames the folder to `step_<N>/`. A folder without the marker, or still named
`.tmp`, is never resumed from, so a run killed mid-save resumes from the previous checkpoint.

Retention (`keep_last`): once the new checkpoint is sealed and every rank has passed the barrier,
rank 0 deletes the older complete `step_<N>/` folders beyond the newest `keep_last`; it never
touches the folder just written. A folder is deleted by renaming it to `<name>.deleting` first, so
an interrupted deletion never leaves a step folder with files missing; `.tmp` and `.deleting`
leftovers of a killed run are removed after the next successful save.

Failures: a failed write (disk full, permissions, read-only file system) on any rank is raised on
every rank as CheckpointWriteError (a ValueError: the run exits with status 1 and a
message naming the checkpoint, the OS error and the previous complete checkpoint). The half-written
folder is removed and nothing is pruned.
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
from torch.distributed.checkpoint.api import CheckpointException

from lmms_engine.checkpoint.safe_load import load_weights_only

log = logging.getLogger(__name__)

# A one-process run has no process group; DCP then saves/loads locally, as intended.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

COMPLETE_MARKER = "COMPLETE"
DELETING_SUFFIX = ".deleting"
STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step_{step}"


def latest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step under `root`, or None."""
    if not root.is_dir():
        return None
    complete = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / COMPLETE_MARKER).is_file()]
    return max(complete, key=lambda p: int(STEP_DIR.match(p.name).group(1)), default=None)


def check_writable(root: Path, rank: int = 0, size: int = 2) -> None:
    """Fail now, not at the first checkpoint hours later, if `root` cannot be created or written
    (a ValueError naming the OS error; called at startup, and to diagnose a failed save)."""
    probe = root / f".write_probe_rank{rank}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        try:
            with open(probe, "wb") as f:
                f.write(bytes(size))
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as err:
        raise ValueError(f"checkpoint directory {root} is not writable: {describe_os_error(err)}; choose another "
                         f"output_root (or hydra.run.dir) or fix its permissions / free space") from err


def save_checkpoint(root: Path, step: int, module: nn.Module, optimizer, train_state: dict, strategy,
                    keep_last: int | None = None) -> Path:
    """Write checkpoint `step` atomically; every rank calls this. keep_last: prune older ones (None: keep all).

    A write that fails on any rank (disk full, permissions, read-only file system) fails on every
    rank with CheckpointWriteError: the half-written folder is removed, nothing is pruned, and the
    previous complete checkpoint is left as it was.
    """
    final, tmp = checkpoint_dir(root, step), root / f"step_{step}.tmp"
    _all_ranks_or_fail(strategy, final, _on_main(strategy, _make_empty, tmp))
    _all_ranks_or_fail(strategy, final, _attempt(_write_shards, tmp, module, optimizer, train_state, strategy))
    _all_ranks_or_fail(strategy, final, _on_main(strategy, _seal, tmp, final))
    log.info("saved checkpoint %s", final)
    if strategy.is_main:
        if keep_last is not None:
            prune_checkpoints(root, keep_last, keep=final)
        remove_leftovers(root)
    return final


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written on some rank. A ValueError: the run stops with its message
    and exit status 1, like other problems the user has to fix."""


# What a failed write raises: an OSError, or, from torch.save (which the DCP writer and DeepSpeed use
# too), a RuntimeError of its zip writer ("unexpected pos ..."): it reports a short write (a full
# disk) that way, without the OS error.
WRITE_ERRORS = (OSError, RuntimeError)


def _write_shards(tmp: Path, module: nn.Module, optimizer, train_state: dict, strategy) -> None:
    strategy.save_model_optimizer(tmp, module, optimizer)
    _save_synced(train_state, tmp / f"train_state_rank{strategy.rank}.pt")


def _make_empty(tmp: Path) -> None:
    _remove(tmp, strict=True)
    tmp.mkdir(parents=True)


def _attempt(fn, *args) -> BaseException | None:
    """Run fn(*args); return the write error it raised (None if it succeeded). DCP reports a write
    that failed on any rank as a CheckpointException (a BaseException) on every rank."""
    try:
        fn(*args)
    except (*WRITE_ERRORS, CheckpointException) as err:
        return err
    return None


def _on_main(strategy, fn, *args) -> BaseException | None:
    return _attempt(fn, *args) if strategy.is_main else None


def _all_ranks_or_fail(strategy, final: Path, error: BaseException | None) -> None:
    """A barrier that also tells every rank whether any rank failed; then all raise together
    (a rank that raised alone would leave the others waiting in the next collective)."""
    failed = strategy.any_rank(error is not None)
    if not failed:
        return
    root = final.parent
    if strategy.is_main:
        _remove(root / f"{final.name}.tmp")  # best effort: the disk may still refuse
    previous = latest_checkpoint(root)
    kept = (f"the previous complete checkpoint {previous} is intact; free space or fix permissions, then resume "
            f"with trainer.resume=auto" if previous else "there is no earlier complete checkpoint of this run")
    reason = describe_os_error(error) if error is not None else "the write failed on another rank"
    if not isinstance(error, OSError):  # the OS error is hidden (or elsewhere): look at the disk from here
        reason += _disk_report(root, strategy.rank)
    raise CheckpointWriteError(f"could not write checkpoint {final}: {reason}; {kept}") from error


def _disk_report(root: Path, rank: int) -> str:
    """What a small test write in `root` says (the OS error a full disk gives), and the free space."""
    try:
        check_writable(root, rank, size=2**20)
        probe = ""
    except ValueError as err:
        probe = f"; a 1 MiB test write there fails too: {describe_os_error(err.__cause__)}"
    try:
        free = f"; {shutil.disk_usage(root).free / 2**30:.2f} GiB free on its file system"
    except OSError:
        free = ""
    return probe + free


def describe_os_error(error: BaseException) -> str:
    """The OS error in a line: `[Errno 28] No space left on device (path)`; for DCP's exception,
    each failed rank's error (without DCP's tracebacks)."""
    if isinstance(error, CheckpointException):
        return "; ".join(f"rank {rank}: {describe_os_error(exc)}" for rank, (exc, _) in sorted(error.failures.items()))
    if isinstance(error, OSError) and error.strerror:
        where = f" ({error.filename})" if error.filename else ""
        return f"[Errno {error.errno}] {error.strerror}{where}"
    return f"{type(error).__name__}: {str(error).strip()}"


def prune_checkpoints(root: Path, keep_last: int, keep: Path) -> list[Path]:
    """Delete complete checkpoints older than the newest `keep_last` (never `keep`); return them."""
    complete = sorted((p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / COMPLETE_MARKER).is_file()),
                      key=lambda p: int(STEP_DIR.match(p.name).group(1)), reverse=True)
    doomed = [p for p in complete[keep_last:] if p != keep]
    for path in doomed:
        _remove(path)
        log.info("removed checkpoint %s (trainer.keep_last=%d)", path, keep_last)
    return doomed


def remove_leftovers(root: Path) -> None:
    """Folders a killed run left behind: unfinished saves (`.tmp`) and unfinished deletions
    (`.deleting`). Called right after a save, when no other save can be in progress."""
    for path in root.iterdir():
        if path.name.endswith((".tmp", DELETING_SUFFIX)) and path.is_dir():
            _remove(path)
            log.info("removed %s (left by an interrupted save or deletion)", path)


def _remove(path: Path, strict: bool = False) -> None:
    """Rename, then delete: a deletion cut short leaves a `.deleting` folder, never a step folder
    with some files gone (which could still carry the COMPLETE marker). strict: raise if the rename fails."""
    if not path.exists():
        return
    doomed = path if path.name.endswith(DELETING_SUFFIX) else path.with_name(path.name + DELETING_SUFFIX)
    if doomed != path:
        shutil.rmtree(doomed, ignore_errors=True)
        try:
            os.replace(path, doomed)
        except OSError:
            if strict:
                raise
            doomed = path
    shutil.rmtree(doomed, ignore_errors=True)


def _seal(tmp: Path, final: Path) -> None:
    """Mark complete, then rename: the rename is the atomic commit point."""
    marker = tmp / COMPLETE_MARKER
    with open(marker, "w") as f:
        f.write("ok\n")
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    _remove(final, strict=True)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _save_synced(obj, path: Path) -> None:
    """torch.save, flushed to the disk before the checkpoint is sealed."""
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


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
    return load_weights_only(own if own.is_file() else path / "train_state_rank0.pt")
