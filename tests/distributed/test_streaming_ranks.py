"""Streaming data on two ranks (FSDP2 over gloo): each rank streams its own shard, saves its own
stream position, and a resume from a mid-run checkpoint continues exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.distributed.test_strategies import losses, token_cache, torchrun  # noqa: F401 (fixture)

pytestmark = pytest.mark.distributed

STREAM = ["model=tiny", "data=demo", "parallel=fsdp2", "data.streaming=true", "data.stream_window=8"]


def _data_state(run_dir: Path, rank: int) -> dict:
    return torch.load(run_dir / "checkpoints" / "step_3" / f"train_state_rank{rank}.pt", weights_only=True)["data"]


def test_two_ranks_stream_their_own_shards_and_resume_exactly(tmp_path, token_cache):  # noqa: F811
    reference = torchrun(tmp_path / "ref", token_cache, *STREAM)
    states = [_data_state(reference, rank) for rank in range(2)]
    assert [s["rank"] for s in states] == [0, 1] and all(s["world_size"] == 2 for s in states)
    assert states[0]["readers"] != states[1]["readers"]  # each rank read its own byte range
    resumed = torchrun(tmp_path / "resumed", token_cache, *STREAM,
                       f"trainer.resume={reference / 'checkpoints' / 'step_3'}")
    assert losses(resumed) == losses(reference)[3:]
