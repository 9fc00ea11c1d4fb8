"""Held-out evaluation data: which records `data.eval_fraction` keeps out of training, and what the
evaluation walks (`EvalData`).

The split is by record, from the record's identity (file and line / record index) alone: the same
data gives the same held-out records whatever the seed, the weights of the dataset yaml, the
packing or the number of ranks, and a held-out record is never trained on (not even when the
dataset yaml lists its file twice or repeats it by weight).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .batch import Batch


@runtime_checkable
class EvalData(Protocol):
    """What `train/evaluate.py` reads: every eval micro-batch once, in a fixed order."""

    def eval_micro_batches(self) -> list[Any]:
        """All micro-batches of the eval data (each what `collate` takes), the same on every rank."""

    def collate(self, micro_batch: Any) -> Batch: ...


def check_eval_split(eval_path, eval_fraction: float, streaming: bool) -> None:
    """One clear line for a wrong combination of data.eval_path / data.eval_fraction."""
    if eval_path is not None and eval_fraction:
        raise ValueError(f"data.eval_path={str(eval_path)!r} and data.eval_fraction={eval_fraction} are both set; "
                         "evaluate on a separate file (eval_path) or on held-out training records (eval_fraction), "
                         "not both")
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"data.eval_fraction must be in [0, 1) (a fraction of the training records), got {eval_fraction}")
    if eval_fraction and streaming:
        raise ValueError("data.eval_fraction needs the indexed dataset (data.streaming=false), which knows every "
                         "record up front; with data.streaming=true evaluate on a separate file: data.eval_path=...")


def held_out_records(record_keys: Sequence[str], fraction: float) -> np.ndarray:
    """Sorted indices into `record_keys` of the held-out records: the ceil(fraction * n) records
    whose keys hash lowest (blake2b, so the choice is stable across runs, machines and seeds)."""
    if fraction <= 0.0 or len(record_keys) == 0:
        return np.zeros(0, dtype=np.int64)
    hashes = [int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") for key in record_keys]
    count = min(len(record_keys), math.ceil(fraction * len(record_keys)))
    return np.sort(np.argsort(np.asarray(hashes, dtype=np.uint64), kind="stable")[:count]).astype(np.int64)
