"""Collation ahead of the training step, in DataLoader worker processes.

A VL micro-batch is built from files at collate time (images decoded, resized and patchified by the
processor, video frames decoded): tens to hundreds of milliseconds of CPU work per pack, which would
leave the GPU idle if it ran inside the step. The order of micro-batches is fully known in advance
(`StepBatches` is a pure function of seed, epoch and position), so `PrefetchCollator` runs a
DataLoader over that plan: workers collate the next micro-batches while the GPU trains on this one,
and results come back in plan order (pinned by Batch.pin_memory, for asynchronous host-to-device copies).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

from typing import Any

import torch
from torch.utils.data import DataLoader

from lmms_engine.data.batch import Batch


class DirectCollator:
    """Collates in the training process, when asked (data_workers = 0)."""

    def __init__(self, collate: Callable[[Any], Batch]):
        self.collate = collate

    def get(self, indices: list[int]) -> Batch:
        return self.collate(indices)

    def close(self) -> None:
        pass


class PrefetchCollator:
    """`get(indices)` returns the collated micro-batch `indices`, which must be the plan's next one."""

    def __init__(self, collate: Callable[[Any], Batch], plan: Iterable[list[int]], num_workers: int,
                 prefetch_factor: int = 2, pin_memory: bool = False):
        self._planned: deque[list[int]] = deque()
        loader = DataLoader(_IndexIdentity(), batch_sampler=_Recorded(plan, self._planned), collate_fn=collate,
                            num_workers=num_workers, prefetch_factor=prefetch_factor, pin_memory=pin_memory)
        self._batches: Iterator[Batch] | None = iter(loader)

    def get(self, indices: list[int]) -> Batch:
        batch = next(self._batches)
        expected = self._planned.popleft()
        if _key(expected) != _key(indices):
            raise RuntimeError(f"prefetched micro-batch {_key(expected)[:4]}... is not the requested "
                               f"{_key(indices)[:4]}...; the prefetch plan and the training loop disagree")
        return batch

    def close(self) -> None:
        self._batches = None  # the DataLoader iterator shuts its workers down when released


def _key(micro_batch) -> list | tuple:
    """What names a micro-batch: its sample indices, or a stream micro-batch's key."""
    return micro_batch.key if hasattr(micro_batch, "key") else list(micro_batch)


class _IndexIdentity:
    """A map-style dataset whose item i is i: the collate function receives the index list itself
    (a stream's micro-batch, iterated by the DataLoader, arrives as its list of samples)."""

    def __getitem__(self, index: int) -> int:
        return index


class _Recorded:
    """The plan as a batch sampler, remembering (in the main process) what it handed out, in order."""

    def __init__(self, plan: Iterable[list[int]], record: deque):
        self.plan, self.record = plan, record

    def __iter__(self):
        for indices in self.plan:
            self.record.append(indices)
            yield indices


def make_collator(collate, plan: Iterable[list[int]], num_workers: int, device: torch.device):
    if num_workers <= 0:
        return DirectCollator(collate)
    return PrefetchCollator(collate, plan, num_workers, pin_memory=device.type == "cuda")
