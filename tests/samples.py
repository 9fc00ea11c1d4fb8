"""Random text samples for the tests' packed batches (one maker, so every test draws them alike)."""

from __future__ import annotations

import numpy as np

from lmms_engine.data.types import Sample


def random_samples(lengths, seed: int = 0, vocab: int = 256, masked_part: int = 2, prefix: str = "s") -> list[Sample]:
    """One sample per length: token ids drawn from [0, vocab) by a seeded generator, the first
    1/masked_part of each masked out of the loss (a "prompt"); ids named f"{prefix}{i}"."""
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = rng.integers(0, vocab, size=n, dtype=np.int32)
        labels = ids.copy()
        labels[: n // masked_part] = -100
        out.append(Sample(ids, labels, f"{prefix}{i}"))
    return out
