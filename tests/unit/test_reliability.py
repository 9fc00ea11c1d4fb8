"""Faults during training: non-finite steps are skipped (and stop the run when they persist),
old checkpoints are pruned (trainer.keep_last), and SIGTERM checkpoints and exits cleanly."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from lmms_engine.logging.sinks import JsonlSink
from lmms_engine.train.app import run
from lmms_engine.train.module import CausalLMWithLoss
from tests.conftest import compose_config


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _cfg(cache: Path, *overrides: str):
    return compose_config(f"data.cache_dir={cache}", "trainer.export_hf=false", "data.packing_length=256", *overrides)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
    """An uninterrupted 4-step run checkpointing every step, keeping only the newest checkpoint."""
    run_dir = tmp_path_factory.mktemp("reference")
    run(_cfg(cache, "trainer.save_every=1", "trainer.keep_last=1"), run_dir)
    return run_dir


def _nan_forward(monkeypatch, bad_calls) -> list[dict]:
    """Patch the loss module: forward call k (1-based; step k with grad_accum=1) returns NaN if k
    is in bad_calls. Returns the parameter snapshots taken at each call (the weights step k sees)."""
    forward, snapshots = CausalLMWithLoss.forward, []

    def patched(self, *args, **kwargs):
        snapshots.append({k: v.detach().clone() for k, v in self.named_parameters()})
        loss = forward(self, *args, **kwargs)
        return loss * float("nan") if len(snapshots) in bad_calls else loss

    monkeypatch.setattr(CausalLMWithLoss, "forward", patched)
    return snapshots


def test_nan_step_is_skipped_counted_and_leaves_weights(cache, tmp_path, monkeypatch, caplog):
    snapshots = _nan_forward(monkeypatch, bad_calls={2})
    run_dir = run(_cfg(cache, "trainer.max_steps=3"), tmp_path / "run")
    rows = _metrics(run_dir)
    assert [r["skipped"] for r in rows] == [False, True, False]
    assert [r["bad_steps"] for r in rows] == [0, 1, 1]
    assert rows[1]["loss"] is None and rows[1]["loss_raw"] == "nan"
    assert rows[2]["lr"] != rows[1]["lr"] or rows[1]["lr"] == rows[0]["lr"]  # the schedule still advances
    assert all(torch.equal(snapshots[1][k], snapshots[2][k]) for k in snapshots[1])  # step 2 changed nothing
    assert not all(torch.equal(snapshots[0][k], snapshots[1][k]) for k in snapshots[0])  # step 1 did
    warning = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "step 2" in r.getMessage()]
    assert warning and "sample_ids" in warning[0]


def test_consecutive_bad_steps_stop_the_run(cache, tmp_path, monkeypatch):
    _nan_forward(monkeypatch, bad_calls={2, 3})
    with pytest.raises(ValueError, match=r"2 consecutive non-finite steps .* step 3.*lower optim.lr"):
        run(_cfg(cache, "trainer.max_steps=4", "trainer.max_bad_steps=2"), tmp_path / "run")
    assert len(_metrics(tmp_path / "run")) == 3


def test_keep_last_leaves_only_the_newest_checkpoint(reference):
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["step_4"]


def test_sigterm_checkpoints_and_resume_continues_identically(cache, reference, tmp_path, monkeypatch):
    log, handler_before = JsonlSink.log, signal.getsignal(signal.SIGTERM)

    def log_then_sigterm_at_step_2(self, metrics):
        log(self, metrics)
        if metrics["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(JsonlSink, "log", log_then_sigterm_at_step_2)
    run_dir = run(_cfg(cache), tmp_path / "run")
    monkeypatch.setattr(JsonlSink, "log", log)
    assert signal.getsignal(signal.SIGTERM) is handler_before  # restored after training
    assert [r["step"] for r in _metrics(run_dir)] == [1, 2]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_2"]

    cfg = _cfg(cache, "trainer.resume=auto")
    run(cfg, run_dir)
    resumed, expected = _metrics(run_dir), _metrics(reference)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in expected]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_2", "step_4"]
