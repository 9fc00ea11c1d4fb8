"""Finished 2-rank jobs exit cleanly (issue 21): status 0 and no abort text, through scripts/stress_exit.py.

The full stress (50 jobs per strategy) is the script itself, not CI; this keeps a short version: a
few ZeRO-3 jobs (where the abort was seen, about 1 run in 7 before the fix) and, marked slow, one of
each other strategy. Process-group threads that outlive teardown (the warning `process-group threads
still alive` of parallel/dist.py; seen under ZeRO-3 and, in CI, once under FSDP2) are issue 21's
open part: the run then leaves through train/shutdown.exit_if_groups_linger, so exits stay clean.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import stress_exit  # noqa: E402

pytestmark = [pytest.mark.distributed,
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                 reason="DeepSpeed not installed (uv sync --extra deepspeed)")]


def _stress(tmp_path: Path, strategies: str, runs: int) -> dict:
    args = stress_exit.parse_args(["--strategies", strategies, "--runs", str(runs), "--out", str(tmp_path)])
    results = [stress_exit.run_job(strategy, i, tmp_path, args) for i in range(1, runs + 1)
               for strategy in args.strategies]
    return stress_exit.summarize(results, args.strategies)


def _assert_all_clean(report: dict) -> None:
    for strategy, row in report["strategies"].items():
        failures = [f"{f['problem']} (log {f['log']})" for f in row["failures"]]
        assert row["clean"] == row["runs"], f"{strategy}: {failures}"


def test_zero3_jobs_exit_cleanly(tmp_path):
    _assert_all_clean(_stress(tmp_path, "zero3", 3))


@pytest.mark.slow
def test_each_strategy_exits_cleanly(tmp_path):
    _assert_all_clean(_stress(tmp_path, "zero2,fsdp2,ddp", 1))
