"""The original engine's launch form with its config, under torchrun with 2 gloo ranks (CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.legacy_config import local_issue_config

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_issue_config_trains_under_torchrun_on_two_ranks(tmp_path):
    config = local_issue_config(tmp_path, records=24)
    env = {**os.environ, "LMMS_ENGINE_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "lmms_engine.launch.cli",
           "--config", str(config), "kernels.use_liger_kernel=false"]  # Liger needs CUDA
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    (run_dir,) = [p.parent for p in (tmp_path / "output").rglob("metrics.jsonl")]  # both ranks agree on one
    stats = json.loads((run_dir / "data_stats.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == stats["packs"] // 2 >= 2  # one epoch: a pack per rank and step
    assert "over 2 ranks" in (run_dir / "train.log").read_text()
    assert result.stderr.count("runs as: lmms-train") == 1  # the translation is printed by rank 0 only
    assert (run_dir / "hf" / "config.json").is_file()
