"""Plain data types shared by the data pipeline: parsed records and tokenized samples."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

ROLES = ("system", "user", "assistant")
MEDIA_TYPES = ("image_url", "video_url", "audio_url")


@dataclass(frozen=True)
class Provenance:
    """Where a record came from. Exactly one of `line` (jsonl, 1-based) and `index` (json, arrow,
    parquet; 0-based) is set. `data_folder` is where relative media paths of the record resolve."""

    source: str
    line: int | None
    index: int | None
    data_folder: str | None

    def __post_init__(self):
        assert (self.line is None) != (self.index is None), "set exactly one of line / index"

    @property
    def where(self) -> str:
        """`file:17` for a jsonl line, `file#17` for a record index (used in errors and ids)."""
        return format_location(self.source, self.line is not None, self.location)

    @property
    def location(self) -> int:
        return self.line if self.line is not None else self.index


def format_location(source: str, is_line: bool, location: int) -> str:
    return f"{source}:{location}" if is_line else f"{source}#{location}"


@dataclass(frozen=True)
class ContentPart:
    """One part of a message's content: `type` is `text` or one of MEDIA_TYPES; `value` is the
    text itself or the media url / path (relative paths resolve under the record's data_folder)."""

    type: str
    value: str


@dataclass(frozen=True)
class Message:
    role: str
    content: str | tuple[ContentPart, ...]

    @property
    def has_media(self) -> bool:
        return not isinstance(self.content, str) and any(p.type != "text" for p in self.content)

    @property
    def text(self) -> str:
        """The text of the message (text parts joined); media parts are not part of it."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.value for p in self.content if p.type == "text")


@dataclass(frozen=True)
class Record:
    """One validated conversation (one training sample) and where it came from."""

    messages: tuple[Message, ...]
    provenance: Provenance

    @property
    def has_media(self) -> bool:
        return any(m.has_media for m in self.messages)


@dataclass(frozen=True)
class Sample:
    """A tokenized sample. `labels` are NOT shifted: labels[t] is input_ids[t] where that token is
    trained and -100 elsewhere. Collation shifts them per sample."""

    input_ids: np.ndarray
    labels: np.ndarray
    sample_id: str

    def __post_init__(self):
        assert self.input_ids.shape == self.labels.shape, "input_ids / labels length mismatch"

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class TokenizedFile:
    """All samples of one source file, flat: sample k is input_ids[offsets[k]:offsets[k+1]]."""

    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32, unshifted, -100 where not trained
    offsets: np.ndarray  # int64, (n + 1,)
    locations: np.ndarray  # int64, (n,): 1-based line (jsonl) or 0-based record index
    records: int  # records read (valid + skipped)
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    skip_examples: list[str] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return len(self.locations)
