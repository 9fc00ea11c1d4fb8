"""Faults on two ranks (CPU, gloo): SIGKILL at random moments and resume, bitwise; non-finite
steps skipped on every rank (FSDP2, DeepSpeed ZeRO); SIGTERM checkpoints on both ranks; a failed
checkpoint write stops both ranks with a clear message.

Kill tests fork their ranks from a process that has already imported the code (tests/fault_harness.py:
RANK / WORLD_SIZE / MASTER_* set as torchrun would); a slow test kills real torchrun jobs too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import TEXT
from tests.fault_harness import THREAD_ENV, ForkLauncher, RunSpec, SubprocessLauncher, kill_and_compare, reference_run

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
    kill_and_compare(fork2, FSDP2_SPEC, fsdp2_reference, tmp_path, kills=3, seed=5, name="kill_resume_fsdp2_x3")


@pytest.mark.slow
def test_fsdp2_twenty_kills_bitwise_identical(fork2, fsdp2_reference, tmp_path):
    report = kill_and_compare(fork2, FSDP2_SPEC, fsdp2_reference, tmp_path, kills=20, seed=2025,
                              name="kill_resume_fsdp2_x20")
    assert sum(k.saving for k in report.kills) >= 5, report.summary()


@pytest.mark.slow
def test_fsdp2_kill_resume_under_torchrun_bitwise_identical(fsdp2_reference, tmp_path):
    """`torchrun --nproc_per_node=2 train.py parallel=fsdp2`, the whole job SIGKILLed twice."""
    launcher = SubprocessLauncher(2, _env(tmp_path / "unused_cache"), tmp_path)
    try:
        kill_and_compare(launcher, FSDP2_SPEC, fsdp2_reference, tmp_path, kills=2, seed=7,
                         name="kill_resume_fsdp2_torchrun", startup_s=20.0)
    finally:
        launcher.close()
