"""On one GPU (NCCL), a 1-step ZeRO-3 job under `torchrun --nproc_per_node=1` exits cleanly, 5 times
in a row (issue 21): status 0, no abort text, no process-group thread left after teardown."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import stress_exit  # noqa: E402


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed not installed")
def test_zero3_one_gpu_exits_cleanly_five_times(tmp_path):
    args = stress_exit.parse_args(["--strategies", "zero3", "--runs", "5", "--nproc", "1", "--device", "cuda",
                                   "--out", str(tmp_path)])
    results = [stress_exit.run_job("zero3", i, tmp_path, args) for i in range(1, 6)]
    report = stress_exit.summarize(results, ["zero3"])["strategies"]["zero3"]
    assert report["clean"] == 5, report["failures"]
    assert report["leak_warnings"] == 0
