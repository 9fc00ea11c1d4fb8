"""Hands each optimizer step its micro-batches, resumably, with each rank taking its own share."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataPosition:
    epoch: int = 0
    index: int = 0  # micro-batches of this epoch already consumed by all ranks together


class StepBatches:
    """Step n takes the next grad_accum * world_size micro-batches of the epoch; rank r takes every
    world_size-th of them, starting at r. An epoch's tail too short for a whole step is dropped."""

    def __init__(self, dataset, grad_accum: int, rank: int, world_size: int, position: DataPosition | None = None):
        self.dataset, self.grad_accum, self.rank, self.world_size = dataset, grad_accum, rank, world_size
        self.position = position or DataPosition()
        self._epoch_batches = dataset.micro_batches(self.position.epoch)
        per_step = grad_accum * world_size
        if len(self._epoch_batches) < per_step:
            raise ValueError(
                f"the dataset yields {len(self._epoch_batches)} micro-batches per epoch, fewer than one step needs "
                f"(grad_accum {grad_accum} x {world_size} ranks = {per_step}); add data or lower trainer.grad_accum"
            )

    def next_step(self) -> list[list[int]]:
        per_step = self.grad_accum * self.world_size
        if self.position.index + per_step > len(self._epoch_batches):
            self.position = DataPosition(epoch=self.position.epoch + 1, index=0)
            self._epoch_batches = self.dataset.micro_batches(self.position.epoch)
        start = self.position.index
        step_batches = self._epoch_batches[start : start + per_step]
        self.position = DataPosition(self.position.epoch, start + per_step)
        return step_batches[self.rank :: self.world_size]

    def plan(self):
        """This rank's micro-batches from the current position on, forever (a copy: consuming the
        plan does not move this object's position)."""
        ahead = StepBatches(self.dataset, self.grad_accum, self.rank, self.world_size, DataPosition(**self.state_dict()))
        while True:
            yield from ahead.next_step()

    def state_dict(self) -> dict:
        return {"epoch": self.position.epoch, "index": self.position.index}


def make_step_batches(dataset, grad_accum: int, rank: int, world_size: int, state: dict | None = None):
    """The step source of `dataset`, at the data position `state` (a checkpoint's "data"; None: the start).
    A streaming dataset brings its own (data/streaming.py); an indexed one is walked by StepBatches."""
    if hasattr(dataset, "step_batches"):
        return dataset.step_batches(grad_accum, rank, world_size, state)
    return StepBatches(dataset, grad_accum, rank, world_size, DataPosition(**state) if state else None)
