"""wandb (offline): a resumed run continues the same wandb run from the step it resumed at; the jobs of a
multirun share one group and carry their overrides as tags; data_stats and parameter counts are in the
run's summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lmms_engine.logging.wandb_sink import RUN_ID_FILE, run_identity
from lmms_engine.train.app import run
from tests.conftest import REPO, compose_config
from tests.wandb_records import run_records, summary_keys

WANDB_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
SMALL = ["logger=wandb", "trainer.export_hf=false", "data.packing_length=256"]


def _subprocess_env(tmp_path) -> dict:
    # Without WANDB_SERVICE: an earlier in-process test's wandb service would be shared by the
    # subprocesses (still holding the killed run's stream); a real resumed job starts its own.
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return {**env, **WANDB_ENV, "LMMS_ENGINE_CACHE": str(tmp_path / "cache")}


@pytest.fixture
def offline_wandb(monkeypatch):
    import wandb

    for key, value in WANDB_ENV.items():
        monkeypatch.setenv(key, value)
    yield
    wandb.teardown()  # stop this process's wandb service, which later subprocesses would otherwise share
    os.environ.pop("WANDB_SERVICE", None)


def test_run_id_is_kept_in_the_run_directory(tmp_path):
    ids = iter(["first", "second"])
    assert run_identity(tmp_path, lambda: next(ids)) == ("first", False)
    assert (tmp_path / RUN_ID_FILE).read_text() == "first\n"
    assert run_identity(tmp_path, lambda: next(ids)) == ("first", True)


def test_resumed_run_continues_the_same_wandb_run_with_summary(tmp_path, data_cache, offline_wandb):
    run_dir = tmp_path / "run"
    run(compose_config(*SMALL, "trainer.max_steps=2"), run_dir)
    run(compose_config(*SMALL, "trainer.max_steps=3", "trainer.resume=auto"), run_dir)
    first, resumed = run_records(run_dir)
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    assert first.run_id == resumed.run_id == run_id
    assert (resumed.branch_point.run, resumed.branch_point.metric, resumed.branch_point.value) == (run_id, "_step", 2)
    assert {"data_stats", "params", "trainable_params"} <= summary_keys(run_dir)


@pytest.mark.slow
def test_killed_and_resumed_run_has_one_wandb_run_id(tmp_path):
    run_dir, env = tmp_path / "run", _subprocess_env(tmp_path)
    cmd = [sys.executable, "train.py", *SMALL, "trainer.max_steps=6", "trainer.save_every=2", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # after step 3, past the checkpoint of step 2
    proc.wait()
    done = subprocess.run([*cmd, "trainer.resume=auto"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = run_records(run_dir)
    run_id = (run_dir / RUN_ID_FILE).read_text().strip()
    seen = [(r.run_id, r.branch_point.value) for r in records]
    # The killed process may die before wandb's offline writer flushes its run record (SIGKILL), so
    # its record is optional; every record there is must carry the one run id, the resume's last.
    assert 1 <= len(records) <= 2 and {r.run_id for r in records} == {run_id}, seen
    assert records[-1].branch_point.value in (2, 4), seen  # the checkpoint it resumed from
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_multirun_jobs_share_one_group_and_carry_their_overrides(tmp_path):
    env = _subprocess_env(tmp_path)
    result = subprocess.run([sys.executable, "train.py", "-m", "optim.lr=1e-3,2e-3", f"output_root={tmp_path}", *SMALL,
                             "trainer.max_steps=1", "model=tiny", "data=demo"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    job_dirs = sorted(p.parent for p in tmp_path.rglob("metrics.jsonl"))
    (first,), (second,) = (run_records(d) for d in job_dirs)
    assert first.run_group == second.run_group == f"tiny/{job_dirs[0].parent.name}"
    assert job_dirs[0].parent.name.startswith("multirun_") and first.run_id != second.run_id
    assert "optim.lr=0.001" in first.tags and "optim.lr=0.002" in second.tags and "trainer.max_steps=1" in first.tags
    assert not any(t.startswith("output_root") for t in first.tags)
