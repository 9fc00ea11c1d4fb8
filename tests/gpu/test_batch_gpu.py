"""A Batch through the prefetching DataLoader on CUDA: pinned by Batch.pin_memory, then copied to
the device asynchronously, equal to direct collation. Run on a GPU: `pytest -m gpu tests/gpu`."""

from __future__ import annotations

import numpy as np
import torch

from lmms_engine.data.collate import collate_packed
from lmms_engine.data.types import Sample
from lmms_engine.train.prefetch import PrefetchCollator


def _samples() -> list[Sample]:
    rng = np.random.default_rng(0)
    return [Sample(ids, ids.copy(), f"s{i}") for i, ids in
            enumerate(rng.integers(0, 100, size=n).astype(np.int32) for n in (7, 3, 12, 5))]


def _collate(indices: list[int]):
    samples = _samples()
    return collate_packed([samples[i] for i in indices])


def test_prefetched_batches_are_pinned_and_reach_the_device_unchanged():
    plan = [[0, 1], [2, 3]]
    collator = PrefetchCollator(_collate, iter(plan), num_workers=1, pin_memory=True)
    try:
        for indices in plan:
            got = collator.get(indices)
            assert got.input_ids.is_pinned() and got.cu_seqlens.is_pinned()
            on_device = got.to(torch.device("cuda"))
            torch.cuda.synchronize()
            want = _collate(indices)
            assert torch.equal(on_device.input_ids.cpu(), want.input_ids)
            assert torch.equal(on_device.labels.cpu(), want.labels)
            assert on_device.doc_lengths == want.doc_lengths and on_device.sample_ids == want.sample_ids
    finally:
        collator.close()
