"""Faults on two ranks (CPU, gloo): SIGKILL at random moments and resume, bitwise; non-finite
steps skipped on every rank (FSDP2, DeepSpeed ZeRO); SIGTERM checkpoints on both ranks; a failed
checkpoint write stops both ranks with a clear message.

Kill tests fork their ranks from a process that has already imported the code (tests/fault_harness.py:
RANK / WORLD_SIZE / MASTER_* set as torchrun would); a slow test kills real torchrun jobs too.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TEXT
from tests.fault_harness import (
    THREAD_ENV,
    ForkLauncher,
    RunSpec,
    SubprocessLauncher,
    _flatten,
    check_same_as_reference,
    checkpoint_tensors,
    kill_and_compare,
    metrics_rows,
    reference_run,
    run_once,
)

pytestmark = pytest.mark.distributed

FSDP2_SPEC = RunSpec(overrides=[*TEXT, "parallel=fsdp2", "parallel.device=cpu", "data.packing_length=256",
                                "data.num_proc=1", "trainer.log_every=10", "trainer.export_hf=true"],
                     steps=30, save_every=2, keep_last=2)


def _env(cache: Path) -> dict:
    env = dict(os.environ, LMMS_ENGINE_CACHE=str(cache), **THREAD_ENV)
    env.pop("LMMS_RUN_STAMP", None)
    return env


@pytest.fixture(scope="module")
def fork2(tmp_path_factory):
    logs = tmp_path_factory.mktemp("fork2_logs")
    launcher = ForkLauncher(2, _env(logs / "cache"), logs)
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def fsdp2_reference(fork2, tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("fsdp2_reference") / "run"
    return run_dir, reference_run(fork2, FSDP2_SPEC, run_dir)


# ---- SIGKILL and resume ----

def test_fsdp2_three_kills_resume_bitwise_identical(fork2, fsdp2_reference, tmp_path):
    kill_and_compare(fork2, FSDP2_SPEC, fsdp2_reference, tmp_path, kills=3, seed=1, name="kill_resume_fsdp2_x3")


@pytest.mark.slow
def test_fsdp2_twenty_kills_bitwise_identical(fork2, fsdp2_reference, tmp_path):
    report = kill_and_compare(fork2, FSDP2_SPEC, fsdp2_reference, tmp_path, kills=20, seed=2027,
                              name="kill_resume_fsdp2_x20")
    planned = [k for k in report.kills if k.in_write]  # the seed plans several kills inside a checkpoint write
    assert len(planned) >= 5 and all(k.saving for k in planned), report.summary()


@pytest.mark.slow
def test_fsdp2_kill_resume_under_torchrun_bitwise_identical(fsdp2_reference, tmp_path):
    """`torchrun --nproc_per_node=2 train.py parallel=fsdp2`, the whole job SIGKILLed twice."""
    launcher = SubprocessLauncher(2, _env(tmp_path / "unused_cache"), tmp_path)
    try:
        kill_and_compare(launcher, FSDP2_SPEC, fsdp2_reference, tmp_path, kills=2, seed=3,
                         name="kill_resume_fsdp2_torchrun", startup_s=20.0)
    finally:
        launcher.close()


# ---- a checkpoint write that fails on one rank, or on every rank ----

FILE_LIMIT = 4 * 2**20  # bytes: far below a rank's checkpoint shard (~17 MB), far above logs and the token cache


def test_fsdp2_failed_checkpoint_write_stops_both_ranks_and_resumes_exactly(fork2, fsdp2_reference, tmp_path):
    """The disk fills up (a real EFBIG from RLIMIT_FSIZE) on rank 1 alone, then on both ranks: each
    time both ranks exit with status 1 naming the checkpoint, the OS error and the previous
    checkpoint, which stays resumable; with room again the run finishes bitwise as the reference."""
    reference_dir, _ = fsdp2_reference
    run_dir = tmp_path / "run"
    shutil.copytree(reference_dir, run_dir)  # as if the reference had stopped after step 28's checkpoint
    shutil.rmtree(run_dir / "checkpoints" / f"step_{FSDP2_SPEC.steps}")
    shutil.rmtree(run_dir / "hf")
    args = [*FSDP2_SPEC.args(tmp_path / "cache"), f"hydra.run.dir={run_dir}", "trainer.resume=auto"]
    checkpoints, steps = run_dir / "checkpoints", FSDP2_SPEC.steps
    for attempt, limited in enumerate(([1], [0, 1])):
        code = run_once(fork2, args, attempt + 100, rlimit_fsize={r: FILE_LIMIT for r in limited})
        assert fork2.exit_codes == [1, 1], (code, fork2.logs(attempt + 100)[0][-3000:])
        for log in fork2.logs(attempt + 100):
            flat = " ".join(log.split())
            assert f"could not write checkpoint {checkpoints / f'step_{steps}'}: rank {limited[0]}: " in flat, log[-3000:]
            assert all(f"rank {r}: RuntimeError" in flat for r in limited), log[-3000:]
            # torch.save (inside DCP) reports the short write as a RuntimeError, hiding EFBIG / ENOSPC
            assert "unexpected pos" in flat and "GiB free on its file system" in flat, log[-3000:]
            assert f"previous complete checkpoint {checkpoints / f'step_{steps - 2}'} is intact" in flat, log[-3000:]
        assert sorted(p.name for p in checkpoints.iterdir()) == [f"step_{steps - 2}"]  # nothing pruned, no half folder
    assert run_once(fork2, args, 102) == 0
    check_same_as_reference(FSDP2_SPEC, run_dir, reference_dir, tmp_path)


# ---- SIGTERM on one rank of two ----

def test_fsdp2_sigterm_on_one_rank_checkpoints_both_and_resume_is_exact(fork2, fsdp2_reference, tmp_path):
    reference_dir, _ = fsdp2_reference
    run_dir = tmp_path / "run"
    args = [*FSDP2_SPEC.args(tmp_path / "cache"), f"hydra.run.dir={run_dir}", "trainer.resume=auto"]
    fork2.start(args, 200)
    while not (run_dir / "metrics.jsonl").is_file() or len(metrics_rows(run_dir)) < 5:
        assert fork2.poll() is None, fork2.logs(200)[0][-3000:]
        time.sleep(0.01)
    os.kill(fork2.pids[1], signal.SIGTERM)  # as a scheduler's preemption notice reaching one rank first
    assert fork2.wait(300) == 0 and fork2.exit_codes == [0, 0]
    stopped_at = metrics_rows(run_dir)[-1]["step"]
    assert 5 <= stopped_at < FSDP2_SPEC.steps
    checkpoint = run_dir / "checkpoints" / f"step_{stopped_at}"
    assert {"COMPLETE", "__0_0.distcp", "__1_0.distcp", "train_state_rank0.pt", "train_state_rank1.pt"} <= {
        p.name for p in checkpoint.iterdir()}
    rank0, rank1 = (" ".join(log.split()) for log in fork2.logs(200))
    assert "received SIGTERM" in rank1 and "received a stop signal on another rank" in rank0
    assert not (run_dir / "hf").exists()  # stopped early: the checkpoint is the output
    assert run_once(fork2, args, 201) == 0
    check_same_as_reference(FSDP2_SPEC, run_dir, reference_dir, tmp_path)


# ---- a non-finite loss on one rank ----

NAN_RUN = ["trainer.max_steps=4", "trainer.save_every=1", "trainer.export_hf=false"]


def _nan_run(launcher, parallel_args: list[str], tmp_path: Path, attempt: int, calls: list[int], *extra: str):
    run_dir = tmp_path / f"nan{attempt}"
    args = [*parallel_args, *NAN_RUN, f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}", *extra]
    code = run_once(launcher, args, attempt, inject={"fn": "tests.fault_harness:poison_loss", "ranks": [1],
                                                     "calls": calls})
    return code, run_dir


def _weights_and_optimizer(checkpoint: Path, tmp_path: Path) -> dict:
    """The model and optimizer tensors of a checkpoint (DCP or DeepSpeed), by name."""
    if (checkpoint / "deepspeed").is_dir():  # our own files in a test: DeepSpeed's hold pickled objects
        flat = {}
        for path in sorted((checkpoint / "deepspeed").glob("*.pt")):
            state = torch.load(path, weights_only=False, map_location="cpu")
            _flatten(state["module"] if "model_states" in path.name else state["optimizer_state_dict"], path.stem + ".", flat)
        return {k: v for k, v in flat.items() if isinstance(v, torch.Tensor)}
    out = tmp_path / checkpoint.name
    out.mkdir(parents=True)
    return {k: v for k, v in checkpoint_tensors(checkpoint, out).items()
            if isinstance(v, torch.Tensor) and not k.startswith("train_state")}  # (param group lr follows the schedule)


def _check_nan_step_skipped(launcher, parallel_args: list[str], tmp_path: Path, attempt: int) -> None:
    code, run_dir = _nan_run(launcher, parallel_args, tmp_path, attempt, calls=[3])
    assert code == 0, launcher.logs(attempt)[0][-3000:]
    rows = metrics_rows(run_dir)
    assert [r["skipped"] for r in rows] == [False, False, True, False]
    assert [r["bad_steps"] for r in rows] == [0, 0, 1, 1]
    assert rows[2]["loss"] is None and rows[2]["loss_raw"] == "nan"  # the all-reduced loss: NaN for every rank
    for log in launcher.logs(attempt):  # each rank decided to skip step 3
        assert "step 3: non-finite loss" in " ".join(log.split())
    for rank in (0, 1):
        state = torch.load(run_dir / "checkpoints" / "step_3" / f"train_state_rank{rank}.pt", weights_only=True)
        assert state["bad_steps"] == 1
    ckpt = run_dir / "checkpoints"
    before, after = (_weights_and_optimizer(ckpt / f"step_{s}", tmp_path / f"a{attempt}") for s in (2, 3))
    assert before.keys() == after.keys() and len(before) > 0
    assert all(torch.equal(before[k], after[k]) for k in before), "the skipped step changed weights or optimizer state"
    later = _weights_and_optimizer(ckpt / "step_4", tmp_path / f"b{attempt}")
    assert not all(torch.equal(after[k], later[k]) for k in after), "step 4 trains again"
    # Resuming from the skipped step's checkpoint (read weights-only, checkpoint/safe_load.py) gives step 4 again.
    resumed = tmp_path / f"resumed{attempt}"
    args = [*parallel_args, *NAN_RUN, f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={resumed}",
            f"trainer.resume={ckpt / 'step_3'}"]
    no_pickle = {"fn": "tests.fault_harness:forbid_unpickling_loads"}
    assert run_once(launcher, args, attempt + 50, inject=no_pickle) == 0, launcher.logs(attempt + 50)[0][-3000:]
    (step4,) = metrics_rows(resumed)
    assert step4["step"] == 4 and step4["loss"] == pytest.approx(rows[3]["loss"], abs=1e-6)


def _check_max_bad_steps_stops(launcher, parallel_args: list[str], tmp_path: Path, attempt: int) -> None:
    code, run_dir = _nan_run(launcher, parallel_args, tmp_path, attempt, [2, 3], "trainer.max_bad_steps=2")
    assert launcher.exit_codes == [1, 1], (code, launcher.logs(attempt)[0][-3000:])
    for log in launcher.logs(attempt):
        assert "2 consecutive non-finite steps (loss or grad norm), the last at step 3" in " ".join(log.split())
    assert [r["step"] for r in metrics_rows(run_dir)] == [1, 2, 3]


FSDP2_NAN = [*TEXT, "parallel=fsdp2", "parallel.device=cpu", "data.packing_length=256", "data.num_proc=1"]


def test_fsdp2_nan_on_one_rank_is_skipped_by_both(fork2, tmp_path):
    _check_nan_step_skipped(fork2, FSDP2_NAN, tmp_path, 300)


def test_fsdp2_consecutive_nan_steps_stop_both_ranks(fork2, tmp_path):
    _check_max_bad_steps_stops(fork2, FSDP2_NAN, tmp_path, 301)


needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="DeepSpeed not installed (uv sync --extra deepspeed)")


@needs_deepspeed
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_nan_on_one_rank_is_skipped_by_both(stage, fork2, tmp_path):
    _check_nan_step_skipped(fork2, [*FSDP2_NAN, f"parallel={stage}"], tmp_path, 400)


@needs_deepspeed
def test_deepspeed_consecutive_nan_steps_stop_both_ranks(fork2, tmp_path):
    _check_max_bad_steps_stops(fork2, [*FSDP2_NAN, "parallel=zero2"], tmp_path, 401)
