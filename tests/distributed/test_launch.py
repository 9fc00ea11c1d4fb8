"""Launch forms over several processes, and FSDP2 checkpoints across a changed number of ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TEXT

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
# Launch mechanics only: the text-only tiny model keeps these runs short.
SMALL = [*TEXT, "trainer.export_hf=false", "data.packing_length=256", "parallel.device=cpu"]


def _run(args: list[str], tmp_path: Path) -> None:
    env = dict(os.environ, LMMS_ENGINE_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_multirun_with_several_processes_runs_each_job_under_torchrun(tmp_path):
    _run(["train.py", "-m", "optim.lr=1e-3,2e-3", "nproc_per_node=2", "parallel=fsdp2", "trainer.max_steps=2",
          f"output_root={tmp_path}", *SMALL], tmp_path)
    run_dirs = sorted(p.parent for p in tmp_path.rglob("metrics.jsonl"))
    assert len(run_dirs) == 2
    for run_dir, lr in zip(run_dirs, ("0.001", "0.002")):
        assert f"optim.lr={lr}" in run_dir.name
        assert len(_rows(run_dir)) == 2
        assert "fsdp2: 4 units + root over 2 ranks" in (run_dir / "train.log").read_text()


def test_submitit_local_launcher(tmp_path):
    """`hydra/launcher=slurm` goes through hydra-submitit-launcher; its local mode runs here."""
    _run(["train.py", "-m", "hydra/launcher=submitit_local", "trainer.max_steps=2", f"output_root={tmp_path}", *SMALL], tmp_path)
    (metrics,) = tmp_path.rglob("metrics.jsonl")
    assert len(_rows(metrics.parent)) == 2


@pytest.fixture(scope="module")
def fsdp2_two_rank_run(tmp_path_factory):
    """Six steps on two FSDP2 ranks with a checkpoint at step 3."""
    root = tmp_path_factory.mktemp("fsdp2")
    run_dir = root / "run"
    _run(["-m", "torch.distributed.run", "--nproc_per_node=2", "train.py", "parallel=fsdp2", "trainer.max_steps=6",
          "trainer.save_every=3", f"hydra.run.dir={run_dir}", *SMALL], root)
    return root, run_dir


def _resume_copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    shutil.rmtree(dest / "checkpoints" / "step_6")
    lines = (dest / "metrics.jsonl").read_text().splitlines()[:3]
    (dest / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return dest


def test_fsdp2_checkpoint_of_two_ranks_resumes_on_one(fsdp2_two_rank_run, tmp_path):
    root, reference = fsdp2_two_rank_run
    resumed = _resume_copy(reference, tmp_path / "resumed")
    # One process sees the same global batch with twice the accumulation.
    _run(["train.py", "parallel=single", "trainer.grad_accum=2", "trainer.max_steps=6", "trainer.save_every=3",
          "trainer.resume=auto", f"hydra.run.dir={resumed}", *SMALL], root)
    got, want = _rows(resumed), _rows(reference)
    assert [r["step"] for r in got] == list(range(1, 7))
    assert [r["loss"] for r in got[3:]] == pytest.approx([r["loss"] for r in want[3:]], abs=1e-5)


def test_single_process_checkpoint_resumes_on_two_fsdp2_ranks(fsdp2_two_rank_run, tmp_path):
    root, reference = fsdp2_two_rank_run
    single = tmp_path / "single"
    _run(["train.py", "parallel=single", "trainer.grad_accum=2", "trainer.max_steps=6", "trainer.save_every=3",
          f"hydra.run.dir={single}", *SMALL], root)
    resumed = _resume_copy(single, tmp_path / "resumed")
    # The resume keeps the run's own overrides (grad_accum=2 among them): two ranks set it back to 1.
    _run(["-m", "torch.distributed.run", "--nproc_per_node=2", "train.py", "parallel=fsdp2", "trainer.grad_accum=1",
          "trainer.max_steps=6", "trainer.save_every=3", "trainer.resume=auto", f"hydra.run.dir={resumed}", *SMALL], root)
    got, want = _rows(resumed), _rows(single)
    assert [r["loss"] for r in got[3:]] == pytest.approx([r["loss"] for r in want[3:]], abs=1e-5)
    assert [r["loss"] for r in want] == pytest.approx([r["loss"] for r in _rows(reference)], abs=1e-5)
