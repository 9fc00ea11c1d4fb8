"""The issue's config of the original engine on a GPU, Liger included (as written, paths made local)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import torch
import yaml

from lmms_engine.kernels import attention
from tests.conftest import REPO
from tests.legacy_config import local_issue_config


def test_issue_config_trains_on_cuda_with_liger_and_the_fastest_attention(tmp_path):
    config = local_issue_config(tmp_path, records=24)
    env = {**os.environ, "LMMS_ENGINE_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    if importlib.util.find_spec("wandb") is None:  # the GPU image has none (optional at run time): report_to none
        node = yaml.safe_load(config.read_text())
        node["trainer_args"]["report_to"] = "none"
        config.write_text(yaml.safe_dump(node, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "lmms_engine.launch.cli", "--config", str(config)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]
    (run_dir,) = [p.parent for p in (tmp_path / "output").rglob("metrics.jsonl")]
    log = (run_dir / "train.log").read_text()
    assert "liger: patched" in log
    backend = attention.resolve_backend("auto", torch.device("cuda"))  # flash_attention_2 -> the fastest available
    assert f"attention: {backend} over padding-free batches" in log
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(r["loss"] is not None for r in rows)

