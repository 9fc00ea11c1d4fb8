"""Sequence packing: whole samples into bins of at most `packing_length` tokens.

Best-fit decreasing (BFD): samples in decreasing length order; each goes into the open bin whose
remaining room is the smallest that still fits it, or opens a new bin. Compared with first-fit
(or greedy concatenation in data order) it leaves less room unused, so fewer packs, fewer steps and
less padding-equivalent waste; and it is deterministic (a stable sort, a fixed tie rule), so every
rank computes the same packs without communicating.

Open bins are indexed by remaining room: a sorted list of the distinct room values (bisect finds the
best fit in O(log C)) and, per value, a stack of bins. There are at most packing_length + 1 distinct
values, so the whole packing is O(n log n) for the sort plus O(n log C) for the placement.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass

import numpy as np

from lmms_engine.options import OVERLONG_POLICIES


def pack_best_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Bins (lists of indices into `lengths`) with sum of lengths <= capacity each.

    Every index appears in exactly one bin. Within a bin, samples are in placement order.
    """
    if capacity <= 0:
        raise ValueError(f"packing_length must be positive, got {capacity}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.min() <= 0 or lengths.max() > capacity):
        raise ValueError(
            f"sample lengths must be in [1, {capacity}] to be packed (got {lengths.min()}..{lengths.max()}); "
            "apply the overlong policy first"
        )
    bins: list[list[int]] = []
    open_rooms = _OpenBins()
    for index in np.argsort(-lengths, kind="stable").tolist():
        length = int(lengths[index])
        found = open_rooms.take_best_fit(length)
        if found is None:
            bin_id, room = len(bins), capacity
            bins.append([])
        else:
            bin_id, room = found
        bins[bin_id].append(index)
        open_rooms.add(bin_id, room - length)
    return bins


class _OpenBins:
    """Bins that still have room, indexed by how much room they have."""

    def __init__(self):
        self._rooms: list[int] = []  # sorted distinct room values
        self._bins_by_room: dict[int, list[int]] = {}

    def add(self, bin_id: int, room: int) -> None:
        if room == 0:  # full: no sample (length >= 1) can go in
            return
        if room not in self._bins_by_room:
            insort(self._rooms, room)
            self._bins_by_room[room] = []
        self._bins_by_room[room].append(bin_id)

    def take_best_fit(self, length: int) -> tuple[int, int] | None:
        """Remove and return (bin_id, room) of the bin with the least room >= length, or None."""
        position = bisect_left(self._rooms, length)
        if position == len(self._rooms):
            return None
        room = self._rooms[position]
        stack = self._bins_by_room[room]
        bin_id = stack.pop()
        if not stack:
            del self._bins_by_room[room]
            self._rooms.pop(position)
        return bin_id, room


@dataclass(frozen=True)
class OverlongResult:
    """Which samples survive the overlong policy and the length each keeps."""

    keep: np.ndarray  # indices of kept samples
    lengths: np.ndarray  # their (possibly truncated) lengths
    truncated: int
    dropped: int


def apply_overlong(
    lengths: np.ndarray,
    trained_within: np.ndarray,
    max_length: int,
    policy: str,
    cuttable: np.ndarray | None = None,
) -> OverlongResult:
    """Drop or truncate samples longer than `max_length`.

    `trained_within[k]` says whether sample k has a trained label in its first max_length tokens: a
    truncated sample without one would be pure cost, so it is dropped (counted as dropped).
    `cuttable[k]` (default: all True) says whether sample k may be cut at max_length at all: a cut
    through or before an image / video would leave visual tokens without their pixels, so such a
    sample is dropped instead (counted as dropped).
    """
    if cuttable is not None:
        trained_within = trained_within & cuttable
    if policy not in OVERLONG_POLICIES:
        raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {policy!r}")
    lengths = np.asarray(lengths, dtype=np.int64)
    overlong = lengths > max_length
    if policy == "drop":
        keep = np.flatnonzero(~overlong)
        return OverlongResult(keep=keep, lengths=lengths[keep], truncated=0, dropped=int(overlong.sum()))
    useless = overlong & ~trained_within
    keep = np.flatnonzero(~useless)
    return OverlongResult(
        keep=keep,
        lengths=np.minimum(lengths[keep], max_length),
        truncated=int((overlong & trained_within).sum()),
        dropped=int(useless.sum()),
    )
