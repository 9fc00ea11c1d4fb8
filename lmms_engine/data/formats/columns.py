"""A record's media columns: `images` / `image`, `videos` / `video`, `audios` / `audio`.

A column holds one item or a list of them; an item is a path (relative to the source's
data_folder, as a part value would be) or a `datasets` feature struct `{bytes, path}`: with bytes,
the item is embedded in the source (`media_source.EmbeddedMedia`, a reference plus the bytes
while the record is prepared); without bytes, its `path` is a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import DataError, shorten
from ..media_source import EmbeddedMedia

# kind -> the record keys it may be under, in order of preference
MEDIA_COLUMNS = {"image": ("images", "image"), "video": ("videos", "video"), "audio": ("audios", "audio")}

MediaValue = str | EmbeddedMedia


@dataclass
class RecordMedia:
    """The record's media per kind, in column order; `columns` names the key each came from."""

    items: dict[str, list[MediaValue]] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)


def record_media(raw: dict, source: str, row: int, tabular: bool, where: str) -> RecordMedia:
    """The media columns of `raw` (a kind is absent when the record has no non-null column of it).
    `tabular`: a parquet / arrow source, whose rows can embed bytes (referenced by source and row)."""
    media = RecordMedia()
    for kind, names in MEDIA_COLUMNS.items():
        name = next((n for n in names if raw.get(n) is not None), None)
        if name is None:
            continue
        value = raw[name]
        values = value if isinstance(value, list) else [value]
        indices = range(len(values)) if isinstance(value, list) else [None]
        media.items[kind] = [
            _media_value(v, source if tabular else None, row, name, i, where)
            for v, i in zip(values, indices, strict=True)
        ]
        media.columns[kind] = name
    return media


def _media_value(value: Any, source: str | None, row: int, column: str, index: int | None, where: str) -> MediaValue:
    at = column if index is None else f"{column}[{index}]"
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if isinstance(data, bytes) and data and source is not None:
            return EmbeddedMedia(source=source, row=row, column=column, index=index, data=data)
        if data is None and isinstance(path, str) and path:
            return path
    raise DataError(
        where,
        "bad_media",
        f"'{at}' must be a path or a {{bytes, path}} struct (a datasets Image / Audio / Video feature) "
        f"with bytes or a path, got {shorten(value)}",
    )
