"""Faults during training: non-finite steps are skipped (and stop the run when they persist),
old checkpoints are pruned (trainer.keep_last), SIGTERM checkpoints and exits cleanly, and a
checkpoint write that fails (disk full, permissions, read-only) stops the run with a clear message,
keeping the previous checkpoint intact and resumable."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from lmms_engine.checkpoint.manager import CheckpointWriteError, latest_checkpoint
from lmms_engine.logging.sinks import JsonlSink
from lmms_engine.train.app import run
from lmms_engine.train.module import CausalLMWithLoss
from tests.conftest import SHRINK, compose_config
from tests.fault_harness import THREAD_ENV, SubprocessLauncher


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _cfg(cache: Path, *overrides: str):
    return compose_config(f"data.cache_dir={cache}", "trainer.export_hf=false", "data.packing_length=256", *overrides)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
    """An uninterrupted 4-step run checkpointing every step, keeping only the newest checkpoint."""
    run_dir = tmp_path_factory.mktemp("reference")
    run(_cfg(cache, "trainer.save_every=1", "trainer.keep_last=1"), run_dir)
    return run_dir


def _nan_forward(monkeypatch, bad_calls) -> list[dict]:
    """Patch the loss module: forward call k (1-based; step k with grad_accum=1) returns NaN if k
    is in bad_calls. Returns the parameter snapshots taken at each call (the weights step k sees)."""
    forward, snapshots = CausalLMWithLoss.forward, []

    def patched(self, *args, **kwargs):
        snapshots.append({k: v.detach().clone() for k, v in self.named_parameters()})
        loss = forward(self, *args, **kwargs)
        return loss * float("nan") if len(snapshots) in bad_calls else loss

    monkeypatch.setattr(CausalLMWithLoss, "forward", patched)
    return snapshots


def test_nan_step_is_skipped_counted_and_leaves_weights(cache, tmp_path, monkeypatch, caplog):
    snapshots = _nan_forward(monkeypatch, bad_calls={2})
    run_dir = run(_cfg(cache, "trainer.max_steps=3"), tmp_path / "run")
    rows = _metrics(run_dir)
    assert [r["skipped"] for r in rows] == [False, True, False]
    assert [r["bad_steps"] for r in rows] == [0, 1, 1]
    assert rows[1]["loss"] is None and rows[1]["loss_raw"] == "nan"
    assert rows[2]["lr"] != rows[1]["lr"] or rows[1]["lr"] == rows[0]["lr"]  # the schedule still advances
    assert all(torch.equal(snapshots[1][k], snapshots[2][k]) for k in snapshots[1])  # step 2 changed nothing
    assert not all(torch.equal(snapshots[0][k], snapshots[1][k]) for k in snapshots[0])  # step 1 did
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "step 2" in r.getMessage()]
    assert warning and "sample_ids" in warning[0]


def test_consecutive_bad_steps_stop_the_run(cache, tmp_path, monkeypatch):
    _nan_forward(monkeypatch, bad_calls={2, 3})
    with pytest.raises(ValueError, match=r"2 consecutive non-finite steps .* step 3.*lower optim.lr"):
        run(_cfg(cache, "trainer.max_steps=4", "trainer.max_bad_steps=2"), tmp_path / "run")
    assert len(_metrics(tmp_path / "run")) == 3


def test_keep_last_leaves_only_the_newest_checkpoint(reference):
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["step_4"]


def test_sigterm_checkpoints_and_resume_continues_identically(cache, reference, tmp_path, monkeypatch):
    log, handler_before = JsonlSink.log, signal.getsignal(signal.SIGTERM)

    def log_then_sigterm_at_step_2(self, metrics):
        log(self, metrics)
        if metrics["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(JsonlSink, "log", log_then_sigterm_at_step_2)
    run_dir = run(_cfg(cache), tmp_path / "run")
    monkeypatch.setattr(JsonlSink, "log", log)
    assert signal.getsignal(signal.SIGTERM) is handler_before  # restored after training
    assert [r["step"] for r in _metrics(run_dir)] == [1, 2]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_2"]

    cfg = _cfg(cache, "trainer.resume=auto")
    run(cfg, run_dir)
    resumed, expected = _metrics(run_dir), _metrics(reference)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in expected]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_2", "step_4"]


# ---- a checkpoint write that fails: disk full, permissions, read-only file system ----

def _fail_checkpoint_write(monkeypatch, err_no: int, where: str, at_save: int) -> None:
    """Make checkpoint save number `at_save` fail with OSError(err_no) at `where`, after part of it
    was written: "shards" (inside DCP's file writer, after its first item reached the file),
    "train_state" (the per-rank train state file) or "seal" (after the COMPLETE marker, at the rename)."""
    import torch.distributed.checkpoint.filesystem as dcp_fs

    from lmms_engine.checkpoint import manager
    from lmms_engine.parallel.base import Strategy

    saves, error = [], OSError(err_no, os.strerror(err_no))
    write_item, save_model_optimizer = dcp_fs._write_item, Strategy.save_model_optimizer
    save_synced, seal = manager._save_synced, manager._seal

    def failing_item(*args, **kwargs):
        write_item(*args, **kwargs)
        raise error

    def counted_save(self, path, module, optimizer):
        saves.append(path)
        if where == "shards" and len(saves) == at_save:
            monkeypatch.setattr(dcp_fs, "_write_item", failing_item)
        try:
            return save_model_optimizer(self, path, module, optimizer)
        finally:
            monkeypatch.setattr(dcp_fs, "_write_item", write_item)

    def failing_train_state(obj, path):
        if where == "train_state" and len(saves) == at_save:
            path.write_bytes(b"half")
            raise OSError(err_no, os.strerror(err_no), str(path))
        return save_synced(obj, path)

    def failing_seal(tmp, final):
        if where == "seal" and len(saves) == at_save:
            (tmp / manager.COMPLETE_MARKER).write_text("ok\n")  # sealed as far as the marker, not renamed
            raise OSError(err_no, os.strerror(err_no), str(final))
        return seal(tmp, final)

    monkeypatch.setattr(Strategy, "save_model_optimizer", counted_save)
    monkeypatch.setattr(manager, "_save_synced", failing_train_state)
    monkeypatch.setattr(manager, "_seal", failing_seal)


FAILURES = {"ENOSPC": (errno.ENOSPC, "shards"), "EACCES": (errno.EACCES, "train_state"), "EROFS": (errno.EROFS, "seal")}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_failed_checkpoint_write_stops_the_run_and_keeps_the_previous_one(name, cache, tmp_path, monkeypatch):
    err_no, where = FAILURES[name]
    _fail_checkpoint_write(monkeypatch, err_no, where, at_save=2)
    cfg = _cfg(cache, "trainer.max_steps=6", "trainer.save_every=2", "trainer.keep_last=1")
    with pytest.raises(CheckpointWriteError) as failure:
        run(cfg, tmp_path / "run")
    assert isinstance(failure.value, ValueError)  # app.main: logged, exit status 1
    checkpoints = tmp_path / "run" / "checkpoints"
    message = str(failure.value)
    assert f"could not write checkpoint {checkpoints / 'step_4'}" in message
    assert os.strerror(err_no) in message and f"[Errno {err_no}]" in message
    assert f"previous complete checkpoint {checkpoints / 'step_2'} is intact" in message
    # No half checkpoint left (nothing to resume by mistake), and keep_last=1 pruned nothing.
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_2"]
    assert latest_checkpoint(checkpoints).name == "step_2"
    assert [r["step"] for r in _metrics(tmp_path / "run")] == [1, 2, 3, 4]


def test_resume_after_a_failed_write_continues_exactly(cache, tmp_path, monkeypatch):
    cfg = _cfg(cache, "trainer.max_steps=6", "trainer.save_every=2", "trainer.keep_last=1")
    expected = _metrics(run(cfg, tmp_path / "uninterrupted"))
    with monkeypatch.context() as patch:
        _fail_checkpoint_write(patch, errno.ENOSPC, "shards", at_save=2)
        with pytest.raises(CheckpointWriteError):
            run(cfg, tmp_path / "run")
    cfg.trainer.resume = "auto"  # the disk has room again
    run(cfg, tmp_path / "run")
    rows = _metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # steps 3-4 trained again, logged once
    assert [r["loss"] for r in rows] == [r["loss"] for r in expected]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_6"]


def test_unwritable_checkpoint_directory_fails_before_training(cache, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the checkpoint folder should be")
    with pytest.raises(ValueError, match=r"checkpoint directory .*checkpoints is not writable: \[Errno 17\]"):
        run(_cfg(cache), run_dir)
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "data_stats.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only (chmod 500) directory anyway")
def test_read_only_output_directory_fails_before_training(cache, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=r"is not writable: \[Errno 13\] Permission denied"):
            run(_cfg(cache), run_dir)
    finally:
        run_dir.chmod(0o700)


def test_failed_export_is_a_clear_error(cache, tmp_path, monkeypatch):
    from lmms_engine.checkpoint import export

    def disk_full(lm, state, artifacts, out_dir):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir) + ".tmp/model.safetensors")

    monkeypatch.setattr(export, "_write", disk_full)
    with pytest.raises(ValueError, match=r"could not export the model to .*hf: \[Errno 28\] No space left"):
        run(_cfg(cache, "trainer.max_steps=1", "trainer.export_hf=true"), tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step_1"


def test_interrupted_deletion_never_leaves_a_resumable_partial_checkpoint(tmp_path, monkeypatch):
    """Pruning renames a checkpoint to `.deleting` before deleting files: a kill half way through
    leaves nothing that latest_checkpoint would pick; the next save sweeps the leftovers."""
    from lmms_engine.checkpoint import manager

    for step in (2, 4, 6):
        (tmp_path / f"step_{step}").mkdir()
        (tmp_path / f"step_{step}" / "__0_0.distcp").write_bytes(b"x")
        (tmp_path / f"step_{step}" / manager.COMPLETE_MARKER).write_text("ok\n")

    def killed_half_way(path, ignore_errors=False):
        if Path(path).exists():
            (Path(path) / "__0_0.distcp").unlink()  # one file gone, the marker not yet
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(manager.shutil, "rmtree", killed_half_way)
        with pytest.raises(KeyboardInterrupt):
            manager.prune_checkpoints(tmp_path, keep_last=1, keep=tmp_path / "step_6")
    assert latest_checkpoint(tmp_path).name == "step_6"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_2", "step_4.deleting", "step_6"]
    (tmp_path / "step_8.tmp").mkdir()  # a save killed half way
    manager.prune_checkpoints(tmp_path, keep_last=1, keep=tmp_path / "step_6")
    manager.remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_6"]


@pytest.mark.slow
def test_real_full_disk_exits_with_status_1_and_resumes(cache, reference, tmp_path):
    """`python train.py` with a real write failure: RLIMIT_FSIZE makes every file larger than 4 MiB
    fail (EFBIG, as a full disk fails a write). The resumed run trains step 5, cannot checkpoint it,
    and exits with status 1 through app.main's user-error path; step 4 stays, and resumes."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    overrides = [*SHRINK, f"data.cache_dir={cache}", "trainer.export_hf=false", "data.packing_length=256",
                 "trainer.save_every=1", "trainer.keep_last=1", "trainer.resume=auto"]
    launcher = SubprocessLauncher(1, dict(os.environ, **THREAD_ENV), tmp_path)
    launcher.start([*overrides, "trainer.max_steps=6", f"hydra.run.dir={run_dir}"], 0, rlimit_fsize=4 * 2**20)
    assert launcher.wait(300) == 1
    output = " ".join((tmp_path / "attempt0.log").read_text().split())
    checkpoints = run_dir / "checkpoints"
    assert f"could not write checkpoint {checkpoints / 'step_5'}: rank 0: RuntimeError" in output, output[-3000:]
    assert f"the previous complete checkpoint {checkpoints / 'step_4'} is intact" in output
    assert "Traceback" not in output  # a message, not a crash
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_4"]
    run(compose_config(*overrides, "trainer.max_steps=6"), run_dir)  # room again: resume from step 4
    assert [r["step"] for r in _metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
