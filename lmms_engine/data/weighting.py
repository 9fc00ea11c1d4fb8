"""The flat sample list of a dataset yaml: each entry's samples repeated or subsampled per its
`weight` / `num_samples` (moved out of dataset.py unchanged)."""

from __future__ import annotations

import logging

import numpy as np

from .sources import DatasetEntry

logger = logging.getLogger("lmms_engine.data")


def weighted_sample_index(store, entries: list[DatasetEntry], seed: int) -> np.ndarray:
    """The flat sample list: each entry's samples repeated / subsampled per weight or num_samples."""
    selected = []
    for i, entry in enumerate(entries):
        base = store.samples_of(entry.files)
        if len(base) == 0:
            logger.warning("%s: no usable samples", entry.origin)
            continue
        target = target_count(len(base), entry)
        selected.append(base[expand_indices(len(base), target, np.random.default_rng([seed, i]))])
    return np.concatenate(selected) if selected else np.zeros(0, dtype=np.int64)


def target_count(n: int, entry: DatasetEntry) -> int:
    if entry.num_samples is not None:
        return entry.num_samples
    if entry.weight is not None:
        return max(1, round(entry.weight * n))
    return n


def expand_indices(n: int, target: int, rng: np.random.Generator) -> np.ndarray:
    """`target` indices into range(n): every index target // n times, then target % n distinct
    indices drawn with `rng` (the fractional part of a weight), in order."""
    assert n > 0 and target > 0
    full, rest = divmod(target, n)
    extra = np.sort(rng.choice(n, size=rest, replace=False))
    return np.concatenate([np.tile(np.arange(n), full), extra]).astype(np.int64)
