"""On one GPU (NCCL), a 1-step ZeRO-3 job under `torchrun --nproc_per_node=1` exits cleanly, 5 times
in a row (issue 21): status 0, no abort text, no process-group thread left after teardown; and a
one-rank ZeRO-3 run in one process leaves no engine, ZeRO-3 parameter, group or NCCL thread."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import stress_exit  # noqa: E402

from tests.distributed.zero3_exit_probe import launch  # noqa: E402


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed not installed")
def test_zero3_one_gpu_exits_cleanly_five_times(tmp_path):
    args = stress_exit.parse_args(["--strategies", "zero3", "--runs", "5", "--nproc", "1", "--device", "cuda",
                                   "--out", str(tmp_path)])
    results = [stress_exit.run_job("zero3", i, tmp_path, args) for i in range(1, 6)]
    report = stress_exit.summarize(results, ["zero3"])["strategies"]["zero3"]
    assert report["clean"] == 5, report["failures"]
    assert report["leak_warnings"] == 0


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed not installed")
def test_zero3_one_gpu_run_leaves_no_engine_parameter_or_process_group_alive(tmp_path):
    report = launch(tmp_path, "cuda")
    assert report["world_group_seen"] == 1, report
    assert report == {**report, "engines": 0, "zero3_params": 0, "world_group_alive": False, "threads": [],
                      "forward_stack": [], "warnings": []}
