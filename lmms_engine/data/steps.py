"""What the training loop asks of its data, and the step source of the indexed data.

Two kinds of data feed the loop: the indexed SFT data (dataset.py: every sample known up front,
micro-batches listed per epoch) and the stream (streaming.py: packed online, window by window).
Both are a `TrainData`; each gives every rank a `StepSource`: the micro-batches of its next
optimizer step, the plan of those to come (for prefetching) and a position to checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .batch import Batch


@runtime_checkable
class StepSource(Protocol):
    """One rank's micro-batches, step by step, resumable from `state_dict()`."""

    def next_step(self) -> list[Any]:
        """This rank's micro-batches of the next optimizer step (each what `collate` takes)."""

    def plan(self) -> Iterator[Any]:
        """This rank's micro-batches from the current position on, in order, without end."""

    def state_dict(self) -> dict:
        """The position after the last step handed out (a checkpoint's "data" entry)."""


@runtime_checkable
class TrainData(Protocol):
    """A data object the entry point builds (`data/` config group) and the loop reads."""

    packing: bool
    stats: dict
    eval_data: Any  # an EvalData (data/holdout.py) of data.eval_path / eval_fraction, or None

    def collate(self, micro_batch: Any) -> Batch:
        """One micro-batch of `StepSource.next_step()` as model inputs."""

    def step_source(self, grad_accum: int, rank: int, world_size: int, state: dict | None = None) -> StepSource:
        """This rank's step source, at `state` (a checkpoint's data position; None: the start)."""


@dataclass
class DataPosition:
    epoch: int = 0
    index: int = 0  # micro-batches of this epoch already consumed by all ranks together


class StepBatches:
    """The step source of indexed data (anything with `micro_batches(epoch)`): step n takes the next
    grad_accum * world_size micro-batches of the epoch; rank r takes every world_size-th of them,
    starting at r. An epoch's tail too short for a whole step is dropped."""

    def __init__(self, dataset, grad_accum: int, rank: int, world_size: int, position: DataPosition | None = None):
        self.dataset, self.grad_accum, self.rank, self.world_size = dataset, grad_accum, rank, world_size
        self.position = position or DataPosition()
        self._epoch_batches: Sequence[list[int]] = dataset.micro_batches(self.position.epoch)
        per_step = grad_accum * world_size
        if len(self._epoch_batches) < per_step:
            raise ValueError(
                f"the dataset yields {len(self._epoch_batches)} micro-batches per epoch, fewer than one step needs "
                f"(grad_accum {grad_accum} x {world_size} ranks = {per_step}); add data or lower trainer.grad_accum"
            )

    @classmethod
    def at(cls, dataset, grad_accum: int, rank: int, world_size: int, state: dict | None = None) -> StepBatches:
        """At a checkpoint's data position `state` (None: the start)."""
        if state is not None and "epoch" not in state:
            raise ValueError("the checkpoint's data position is a stream's (it was saved with data.streaming=true); "
                             "resume with the same data.streaming setting")
        return cls(dataset, grad_accum, rank, world_size, DataPosition(**state) if state else None)

    def next_step(self) -> list[list[int]]:
        per_step = self.grad_accum * self.world_size
        if self.position.index + per_step > len(self._epoch_batches):
            self.position = DataPosition(epoch=self.position.epoch + 1, index=0)
            self._epoch_batches = self.dataset.micro_batches(self.position.epoch)
        start = self.position.index
        step_batches = self._epoch_batches[start : start + per_step]
        self.position = DataPosition(self.position.epoch, start + per_step)
        return step_batches[self.rank :: self.world_size]

    def plan(self) -> Iterator[list[int]]:
        """A copy walks ahead: consuming the plan does not move this object's position."""
        ahead = StepBatches(self.dataset, self.grad_accum, self.rank, self.world_size, DataPosition(**self.state_dict()))
        while True:
            yield from ahead.next_step()

    def state_dict(self) -> dict:
        return {"epoch": self.position.epoch, "index": self.position.index}
