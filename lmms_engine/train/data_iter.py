"""Hands each optimizer step its micro-batches, resumably, with each rank taking its own share.

The step sources themselves live with the data (data/steps.py: the StepSource protocol and the
indexed data's StepBatches; data/streaming.py: a stream's); this is the loop's one way to get one.
"""

from __future__ import annotations

from lmms_engine.data.steps import DataPosition, StepBatches, StepSource, TrainData

__all__ = ["DataPosition", "StepBatches", "StepSource", "make_step_batches"]


def make_step_batches(dataset: TrainData, grad_accum: int, rank: int, world_size: int,
                      state: dict | None = None) -> StepSource:
    """The step source of `dataset` for this rank, at the data position `state` (a checkpoint's
    "data"; None: the start)."""
    return dataset.step_source(grad_accum, rank, world_size, state)
