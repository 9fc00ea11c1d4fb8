"""Running the command-line entry points as a user does: a fresh interpreter per command, on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def train_cli(args: list[str], tmp_path: Path, module: str = "lmms_engine.train", timeout: int = 600, env_extra=None):
    """`lmms-train ARGS` (or `python -m MODULE ARGS`), its token cache under `tmp_path`."""
    env = {**os.environ, "LMMS_ENGINE_CACHE": str(tmp_path / "cache"), **(env_extra or {})}
    env.pop("LMMS_RUN_STAMP", None)
    cmd = [sys.executable, "-c", f"from {module} import main; main()", *args] if module == "lmms_engine.train" else \
          [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def run_dirs(root: Path) -> list[Path]:
    """The run directories under `root` (those with a metrics.jsonl)."""
    return sorted(p.parent for p in root.rglob("metrics.jsonl"))


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
