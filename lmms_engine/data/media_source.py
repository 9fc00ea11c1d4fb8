"""Where a media item's bytes are: a file on disk, or embedded in a parquet / arrow source.

Hugging Face datasets store an `Image`, `Audio` or `Video` feature as a struct `{bytes, path}`
(a list of them for a list column). Such an item is referred to by its place in the source,
`(source file, row, column, index in the list)`, never by its decoded pixels or samples:

  * prepare time: the record's row is in memory, so the adapter (formats/) hands the bytes over
    with the reference (`EmbeddedMedia`); measuring decodes them once and keeps only the reference
    (a `MediaItem` whose `path` is the source and `member` is `row:column:index`, what the cache's
    media table stores), so a data set's images are never held in memory.
  * collate time: `MediaFile.open()` reads the bytes back from the source (`read_member`): a
    parquet file by row group (the last one read is kept, per process), an arrow file or
    `save_to_disk` folder through its memory map.
"""

from __future__ import annotations

import bisect
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sources import load_arrow
from .types import MediaItem


@dataclass(frozen=True)
class EmbeddedMedia:
    """An embedded media item of a record, with its bytes while the record is being prepared."""

    source: str  # absolute path of the parquet file, or of the arrow file / save_to_disk folder
    row: int  # 0-based row of the source
    column: str
    index: int | None  # position in a list column; None for a column of single structs
    data: bytes = field(repr=False, compare=False)

    @property
    def member(self) -> str:
        return format_member(self.row, self.column, self.index)

    def __str__(self) -> str:
        return member_label(self.source, self.member)


def format_member(row: int, column: str, index: int | None) -> str:
    return f"{row}:{column}:{'' if index is None else index}"


def parse_member(member: str) -> tuple[int, str, int | None]:
    row, rest = member.split(":", 1)
    column, index = rest.rsplit(":", 1)  # a column name may hold ':'; row and index cannot
    return int(row), column, (int(index) if index else None)


def member_label(source: str, member: str) -> str:
    """`images[1] of data.parquet#12`: the embedded item named for error messages."""
    row, column, index = parse_member(member)
    return f"{column}{'' if index is None else f'[{index}]'} of {source}#{row}"


@dataclass(frozen=True)
class MediaFile:
    """A media item to decode: `path` alone is a file; with `member` the item is embedded in the
    source `path`, and `data` holds its bytes when they are already in memory."""

    path: str
    member: str = ""
    data: bytes | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, item: MediaItem) -> MediaFile:
        return cls(item.path, item.member)

    @classmethod
    def embedded(cls, media: EmbeddedMedia) -> MediaFile:
        return cls(media.source, media.member, media.data)

    @property
    def label(self) -> str:
        return member_label(self.path, self.member) if self.member else self.path

    def open(self) -> str | io.BytesIO:
        """What PIL and PyAV open: the file's path, or the embedded item's bytes."""
        if not self.member:
            return self.path
        return io.BytesIO(self.data if self.data is not None else read_member(self.path, self.member))


# ---------------------------------------------------------------- reading back at collate time


def read_member(source: str, member: str) -> bytes:
    """The bytes of the embedded item `member` of `source`; ValueError if they are gone (the
    source changed since the data was prepared)."""
    row, column, index = parse_member(member)
    value = _row_value(source, row, column)
    if index is not None:
        value = value[index] if isinstance(value, list) and index < len(value) else None
    data = value.get("bytes") if isinstance(value, dict) else None
    if not isinstance(data, bytes) or not data:
        raise ValueError(
            f"{member_label(source, member)} holds no media bytes any more; the source changed since "
            "the data was prepared: clear the data cache"
        )
    return data


# Per process (DataLoader workers fork): the open parquet files / arrow sets and the last parquet
# row group column read, so the items of one row group cost one read.
_OPEN: dict[tuple[int, str], Any] = {}
_LAST_GROUP: dict[int, tuple[tuple[str, int, str], Any]] = {}


def _row_value(source: str, row: int, column: str) -> Any:
    if Path(source).suffix == ".parquet":
        return _parquet_value(source, row, column)
    table = _opened(source, lambda: load_arrow(Path(source)).with_format("arrow"))
    return table[row : row + 1].column(column)[0].as_py()


def _opened(source: str, open_it):
    """The opened source, per process and file version (a file rewritten since is opened again)."""
    stat = os.stat(source)
    key = (os.getpid(), source, stat.st_mtime_ns, stat.st_size)
    if key not in _OPEN:
        _OPEN[key] = open_it()
    return _OPEN[key]


def _parquet_value(source: str, row: int, column: str) -> Any:
    import pyarrow.parquet as pq

    parquet = _opened(source, lambda: _ParquetRows(pq.ParquetFile(source)))
    group, offset = parquet.locate(row, source)
    key, pid = (id(parquet), group, column), os.getpid()
    cached = _LAST_GROUP.get(pid)
    if cached is None or cached[0] != key:
        cached = (key, parquet.file.read_row_group(group, columns=[column]).column(0))
        _LAST_GROUP[pid] = cached
    return cached[1][offset].as_py()


class _ParquetRows:
    """A parquet file and where each of its row groups starts."""

    def __init__(self, file):
        self.file = file
        metadata = file.metadata
        self.starts = [0]
        for g in range(metadata.num_row_groups):
            self.starts.append(self.starts[-1] + metadata.row_group(g).num_rows)

    def locate(self, row: int, source: str) -> tuple[int, int]:
        if not 0 <= row < self.starts[-1]:
            raise ValueError(f"{source}: row {row} is past the end of a {self.starts[-1]}-row parquet file; it changed "
                             "since the data was prepared: clear the data cache")
        group = bisect.bisect_right(self.starts, row) - 1
        return group, row - self.starts[group]
