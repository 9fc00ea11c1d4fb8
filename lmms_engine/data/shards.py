"""One rank's records of one dataset entry, for the stream (streaming.py): each rank reads its own
part of every source file (jsonl: a byte range, a line belonging to the range its first byte is in;
parquet / arrow: a row range) and nothing else, resumably, cycling at the end of its shard."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataSourceError
from .sources import DatasetEntry, SourceFile, arrow_rows, load_arrow

ROW_BLOCK = 1000  # rows read at once from parquet / arrow
LINE_COUNT_BLOCK = 1 << 24  # bytes per read when counting the lines before a shard


@dataclass
class ReaderPosition:
    """Where a reader continues: pass over its shard, file of the entry, and inside that file the
    byte offset and 1-based line number (jsonl) or the row index (parquet / arrow)."""

    passes: int = 0
    file: int = 0
    offset: int | None = None  # None: the start of this rank's shard of the file
    line: int = 0

    def state_dict(self) -> dict:
        return {"passes": self.passes, "file": self.file, "offset": self.offset, "line": self.line}


class ShardReader:
    """The records of one dataset entry that belong to `rank` of `world_size`, in file order,
    starting again at the shard's start when it is exhausted."""

    def __init__(self, entry: DatasetEntry, rank: int, world_size: int, position: dict | None = None):
        self.entry, self.rank, self.world_size = entry, rank, world_size
        self.position = ReaderPosition(**position) if position else ReaderPosition()
        self._records: Iterator[tuple[int, Any, int, int]] | None = None
        # Records read in this pass over the shard; None when it resumed mid-pass (not known).
        self._read_this_pass: int | None = None if position else 0
        # Per jsonl file: where this rank's shard starts (byte offset, line number), found once.
        self._shard_starts: dict[int, tuple[int, int]] = {}

    def take(self, count: int) -> list[tuple[SourceFile, int, Any]]:
        """The next `count` records as (source, location, payload)."""
        taken = []
        while len(taken) < count:
            record = self._next_record()
            if record is not None:
                taken.append(record)
        return taken

    def _next_record(self) -> tuple[SourceFile, int, Any] | None:
        """One record, or None when a file of the shard ended (the position moved on)."""
        if self._records is None:
            self._records = self._file_records(self.entry.files[self.position.file])
        item = next(self._records, None)
        if item is None:
            self._end_of_file()
            return None
        location, payload, offset, line = item
        self.position.offset, self.position.line = offset, line
        if self._read_this_pass is not None:
            self._read_this_pass += 1
        return self.entry.files[self.position.file], location, payload

    def _file_records(self, source: SourceFile):
        """(location, payload, position after it: offset, line) of this rank's part of `source`,
        from the reader's position."""
        if source.data_type != "jsonl":
            return _row_shard(source, self.rank, self.world_size, self.position)
        start = (self.position.offset, self.position.line)
        if self.position.offset is None:  # the shard's start: counting the lines before it reads the file
            if self.position.file not in self._shard_starts:
                self._shard_starts[self.position.file] = _jsonl_shard_start(source.path, self.rank, self.world_size)
            start = self._shard_starts[self.position.file]
        return _jsonl_shard(source.path, self.rank, self.world_size, *start)

    def _end_of_file(self) -> None:
        self._records = None
        next_file = self.position.file + 1
        if next_file < len(self.entry.files):
            self.position = ReaderPosition(self.position.passes, next_file)
            return
        if self._read_this_pass == 0:
            raise DataSourceError(
                self.entry.origin,
                f"rank {self.rank} of {self.world_size} has no records in its shard of this entry "
                "(too few records for the number of ranks); add data or use fewer ranks",
            )
        self.position = ReaderPosition(self.position.passes + 1, 0)
        self._read_this_pass = 0


def _shard_bounds(total: int, rank: int, world_size: int) -> tuple[int, int]:
    return total * rank // world_size, total * (rank + 1) // world_size


def _jsonl_shard_start(path: Path, rank: int, world_size: int) -> tuple[int, int]:
    """(byte offset, line number) of the first line of this rank's byte range."""
    low, _ = _shard_bounds(path.stat().st_size, rank, world_size)
    with path.open("rb") as handle:
        offset = _first_line_start(handle, low)
        return offset, _count_lines(handle, offset) + 1


def _jsonl_shard(path: Path, rank: int, world_size: int, offset: int, line: int):
    """Lines from `offset` (line number `line`) whose first byte is in this rank's byte range; blank
    lines are skipped, as in sources.py."""
    _, high = _shard_bounds(path.stat().st_size, rank, world_size)
    with path.open("rb") as handle:
        handle.seek(offset)
        while offset < high:
            raw = handle.readline()
            if not raw:
                return
            offset += len(raw)
            if raw.strip():
                yield line, raw, offset, line + 1
            line += 1


def _first_line_start(handle, low: int) -> int:
    """The offset of the first line starting at or after `low`."""
    if low == 0:
        return 0
    handle.seek(low - 1)
    return low - 1 + len(handle.readline())


def _count_lines(handle, end: int) -> int:
    """Newlines in the first `end` bytes (the line number of a shard's first line, minus one)."""
    handle.seek(0)
    count, left = 0, end
    while left > 0:
        block = handle.read(min(LINE_COUNT_BLOCK, left))
        if not block:
            break
        count += block.count(b"\n")
        left -= len(block)
    return count


def _row_shard(source: SourceFile, rank: int, world_size: int, position: ReaderPosition):
    """Rows of this rank's row range of a parquet file or arrow data set, in blocks."""
    table = _RowTable(source)
    low, high = _shard_bounds(table.num_rows, rank, world_size)
    row = low if position.offset is None else position.offset
    while row < high:
        stop = min(row + ROW_BLOCK, high)
        for index, record in enumerate(table.rows(row, stop), start=row):
            yield index, record, index + 1, 0
        row = stop


class _RowTable:
    """Random access to row blocks of a parquet file (by row group) or a memory-mapped arrow set."""

    def __init__(self, source: SourceFile):
        self.source = source
        if source.data_type == "parquet":
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetFile(source.path)
            metadata = self._parquet.metadata
            sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
            self._group_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            self.num_rows = int(self._group_starts[-1])
        else:
            self._arrow = load_arrow(source.path)
            self.num_rows = len(self._arrow)

    def rows(self, start: int, stop: int) -> list[dict]:
        if self.source.data_type != "parquet":
            return arrow_rows(self._arrow, start, stop)
        first = int(np.searchsorted(self._group_starts, start, side="right")) - 1
        last = int(np.searchsorted(self._group_starts, stop, side="left"))
        table = self._parquet.read_row_groups(list(range(first, last)))
        base = int(self._group_starts[first])
        return table.slice(start - base, stop - start).to_pylist()
