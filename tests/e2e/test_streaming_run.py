"""A streaming run (data.streaming=true) through the real entry point: it trains, and a resume from a
mid-run checkpoint, with another number of collating workers, continues exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmms_engine.train.app import run
from tests.conftest import compose_config

STREAM = ["data.streaming=true", "data.stream_window=64", "trainer.max_steps=8", "trainer.save_every=4",
          "trainer.grad_accum=2"]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "hf" / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("stream_ref")
    run(compose_config(*STREAM, "trainer.data_workers=0"), run_dir)
    return run_dir


def test_streaming_run_trains_and_saves_its_stream_position(reference):
    rows = _metrics(reference)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[-1]["loss"] < rows[0]["loss"]
    stats = json.loads((reference / "data_stats.json").read_text())
    assert stats["streaming"] is True
    state = torch.load(reference / "checkpoints" / "step_4" / "train_state_rank0.pt", weights_only=True)
    assert set(state["data"]) == {"window", "readers", "emitted", "rank", "world_size"}


def test_resume_with_other_data_workers_continues_exactly(reference, tmp_path):
    cfg = compose_config(*STREAM, "trainer.data_workers=2",
                         f"trainer.resume={reference / 'checkpoints' / 'step_4'}")
    run(cfg, tmp_path / "resumed")
    resumed, expected = _metrics(tmp_path / "resumed"), _metrics(reference)
    assert [r["step"] for r in resumed] == [5, 6, 7, 8]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in expected[4:]]
    final, want = _weights(tmp_path / "resumed"), _weights(reference)
    assert final.keys() == want.keys()
    assert all(torch.equal(final[k], want[k]) for k in want)
