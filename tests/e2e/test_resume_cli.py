"""The resume of docs/train.md §6, typed as the docs show it after a `model=tiny data=demo` run:
`lmms-train hydra.run.dir=<run dir> trainer.resume=auto trainer.max_steps=N`, without repeating the
run's model= / data= (train/resume_args.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.cli_runs import metric_rows, run_dirs, train_cli

FIRST_RUN = ["model=tiny", "data=demo", "trainer.max_steps=4", "trainer.save_every=2", "trainer.export_hf=false",
             "data.packing_length=256"]
KEPT = (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "data_stats.json")


@pytest.fixture(scope="module")
def _first_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    result = train_cli([f"output_root={root}", *FIRST_RUN], root)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(root)
    return run_dir


@pytest.fixture
def run_dir(_first_run, tmp_path) -> Path:
    """A private copy of the 4-step run (checkpoints at steps 2 and 4), its token cache beside it."""
    shutil.copytree(_first_run.parents[1] / "cache", tmp_path / "cache")
    return Path(shutil.copytree(_first_run, tmp_path / "run"))


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_the_docs_resume_command_continues_the_run_and_keeps_its_record(run_dir, tmp_path):
    before = _snapshot(run_dir)
    result = train_cli([f"hydra.run.dir={run_dir}", "trainer.resume=auto", "trainer.max_steps=6"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    after = _snapshot(run_dir)
    for name in KEPT:
        assert after[name] == before[name], f"{name} was rewritten"
    rows = metric_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert after["metrics.jsonl"].startswith(before["metrics.jsonl"])  # appended, not rewritten
    assert after["train.log"].startswith(before["train.log"])
    assert f"resumed from {run_dir / 'checkpoints' / 'step_4'} at step 4" in after["train.log"].decode()
    assert (run_dir / "checkpoints" / "step_6" / "COMPLETE").is_file()
    (entry,) = yaml.safe_load((run_dir / ".hydra" / "resumes.yaml").read_text())
    assert entry["step"] == 4 and entry["checkpoint"] == str(run_dir / "checkpoints" / "step_4")
    assert entry["overrides"] == ["trainer.resume=auto", "trainer.max_steps=6"]


def test_a_changed_model_is_refused_in_one_line_and_nothing_is_written(run_dir, tmp_path):
    before = _snapshot(run_dir)
    result = train_cli([f"hydra.run.dir={run_dir}", "trainer.resume=auto", "model=tiny_qwen3"], tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"ERROR    resuming {run_dir}: model=tiny_qwen3 changes the run's model or data (model.")
    assert "model=tiny data=demo" in line  # the run's own choices, which a resume keeps
    assert _snapshot(run_dir) == before
