"""SIGKILL a one-process training run at random moments (many inside checkpoint writes), resume it
with trainer.resume=auto each time, and check that it ends bitwise identical to a run never killed:
every tensor of the final checkpoint (weights, AdamW state, RNG and data position) and of the HF
export, and the same metrics.jsonl, each step once (steps re-trained after a resume replace the
lines the killed attempt logged, see logging/sinks.py).

Attempts are forked from a process that has already imported the code (tests/fault_harness.py):
three kills by default, twenty in the slow test; a slow test also kills the real `python train.py`
command twice. Kill moments come from a seeded random generator: a failure reproduces with its seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import TEXT
from tests.fault_harness import THREAD_ENV, ForkLauncher, RunSpec, SubprocessLauncher, kill_and_compare, reference_run

SPEC = RunSpec(overrides=[*TEXT, "parallel=single", "parallel.device=cpu", "data.packing_length=256", "data.num_proc=1",
                          "trainer.log_every=10", "trainer.export_hf=true"],
               steps=40, save_every=2, keep_last=2)


def _env(cache: Path) -> dict:
    env = dict(os.environ, LMMS_ENGINE_CACHE=str(cache), **THREAD_ENV)
    env.pop("LMMS_RUN_STAMP", None)
    return env


@pytest.fixture(scope="module")
def fork_launcher(tmp_path_factory):
    logs = tmp_path_factory.mktemp("fork_logs")
    launcher = ForkLauncher(1, _env(logs / "cache"), logs)
    yield launcher
    launcher.close()


@pytest.fixture(scope="module")
def reference(fork_launcher, tmp_path_factory) -> tuple[Path, dict]:
    """The uninterrupted run every killed run must equal, and the timings kill moments are drawn from."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    return run_dir, reference_run(fork_launcher, SPEC, run_dir)


def test_three_kills_resume_bitwise_identical(fork_launcher, reference, tmp_path):
    kill_and_compare(fork_launcher, SPEC, reference, tmp_path, kills=3, seed=15, name="kill_resume_single_x3")


@pytest.mark.slow
def test_twenty_kills_single_process_bitwise_identical(fork_launcher, reference, tmp_path):
    report = kill_and_compare(fork_launcher, SPEC, reference, tmp_path, kills=20, seed=2046,
                              name="kill_resume_single_x20")
    planned = [k for k in report.kills if k.in_write]  # the seed plans several kills inside a checkpoint write
    assert len(planned) >= 5 and all(k.saving for k in planned), report.summary()


@pytest.mark.slow
def test_kill_resume_real_command_bitwise_identical(reference, tmp_path):
    """`python train.py` itself (its own imports each time), killed twice, once inside a checkpoint
    write; it ends as the (forked) uninterrupted run, so the launch mode changes nothing either."""
    launcher = SubprocessLauncher(1, _env(tmp_path / "unused_cache"), tmp_path)
    try:  # startup_s: a fresh interpreter imports torch + transformers first (~10-25 s on 2 cores)
        kill_and_compare(launcher, SPEC, reference, tmp_path, kills=2, seed=3, name="kill_resume_single_subprocess",
                         startup_s=15.0)
    finally:
        launcher.close()
