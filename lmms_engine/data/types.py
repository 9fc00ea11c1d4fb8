"""Plain data types shared by the data pipeline: parsed records and tokenized samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    text itself or the media url / path (relative paths resolve under the record's data_folder),
    or a `media_source.EmbeddedMedia` (an item embedded in a parquet / arrow row)."""

    type: str
    value: Any  # str, or EmbeddedMedia for an embedded media part


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


MEDIA_KINDS = ("image", "video", "audio")


@dataclass(frozen=True)
class MediaItem:
    """One image, video or audio file of a sample, as measured at prepare time.

    Images / videos: grid_thw is the patch grid (before the spatial merge) the processor will
    produce; the sample's input_ids hold grid_t * grid_h * grid_w // merge_size**2 placeholder
    tokens for it. Videos also: second_per_grid_t (seconds of video per temporal grid step), and
    total_frames / num_frames, from which `media.frame_indices` re-derives the sampled frames at
    collate time.
    Audio: audio_samples decoded mono samples at sampling_rate (so its duration), split into clips
    of at most chunk_samples (`media_audio.clip_sample_counts`); grid_thw is (0, 0, 0).
    """

    kind: str  # "image" | "video" | "audio"
    path: str  # resolved, absolute: the media file, or the parquet / arrow source it is embedded in
    grid_thw: tuple[int, int, int] = (0, 0, 0)
    second_per_grid_t: float = 0.0
    total_frames: int = 0
    num_frames: int = 0
    audio_samples: int = 0
    sampling_rate: int = 0
    chunk_samples: int = 0
    # Last, so positional (kind, path, grid_thw, ...) construction stays as it was.
    member: str = ""  # embedded items: `row:column:index` in that source (media_source.py); "" for a file
    fps: float = 0.0  # a video's own frame rate (Qwen3-VL's timestamps follow it); 0 for others

    def __post_init__(self):
        assert self.kind in MEDIA_KINDS, self.kind

    def num_tokens(self, merge_size: int) -> int:
        """Visual tokens of an image / video (audio: see `media_audio.audio_token_count`)."""
        assert self.kind != "audio", "audio tokens depend on the feature extractor"
        t, h, w = self.grid_thw
        return t * h * w // merge_size**2

    @property
    def seconds(self) -> float:
        """Duration of an audio item (0 for images and videos)."""
        return self.audio_samples / self.sampling_rate if self.sampling_rate else 0.0


@dataclass(frozen=True)
class Sample:
    """A tokenized sample. `labels` are NOT shifted: labels[t] is input_ids[t] where that token is
    trained and -100 elsewhere. Collation shifts them per sample. `media` lists the sample's images,
    videos and audio in the order of their placeholders (empty for text)."""

    input_ids: np.ndarray
    labels: np.ndarray
    sample_id: str
    media: tuple[MediaItem, ...] = ()

    def __post_init__(self):
        assert self.input_ids.shape == self.labels.shape, "input_ids / labels length mismatch"

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class MediaTable:
    """The media of many samples as flat arrays (what the npz cache stores): sample k's items are
    rows offsets[k]:offsets[k+1], in placeholder order."""

    offsets: np.ndarray  # int64, (n + 1,)
    kinds: np.ndarray  # str, (m,)
    paths: np.ndarray  # str, (m,)
    members: np.ndarray  # str, (m,): where an embedded item is inside its source ("" for files)
    grids: np.ndarray  # int64, (m, 3)
    seconds: np.ndarray  # float64, (m,): second_per_grid_t (0 for images)
    frames: np.ndarray  # int64, (m, 2): (total_frames, num_frames) of videos, 0 for images
    audio: np.ndarray  # int64, (m, 3): (audio_samples, sampling_rate, chunk_samples) of audio, 0 else
    rates: np.ndarray  # float64, (m,): a video's frame rate (MediaItem.fps), 0 else

    ARRAYS = ("offsets", "kinds", "paths", "members", "grids", "seconds", "frames", "audio", "rates")

    @classmethod
    def from_items(cls, per_sample: list[tuple[MediaItem, ...]]) -> MediaTable:
        items = [item for sample in per_sample for item in sample]
        offsets = np.zeros(len(per_sample) + 1, dtype=np.int64)
        np.cumsum([len(sample) for sample in per_sample], out=offsets[1:])
        return cls(
            offsets=offsets,
            kinds=np.asarray([i.kind for i in items], dtype=np.str_),
            paths=np.asarray([i.path for i in items], dtype=np.str_),
            members=np.asarray([i.member for i in items], dtype=np.str_),
            grids=np.asarray([i.grid_thw for i in items], dtype=np.int64).reshape(-1, 3),
            seconds=np.asarray([i.second_per_grid_t for i in items], dtype=np.float64),
            frames=np.asarray([(i.total_frames, i.num_frames) for i in items], dtype=np.int64).reshape(-1, 2),
            audio=np.asarray(
                [(i.audio_samples, i.sampling_rate, i.chunk_samples) for i in items], dtype=np.int64
            ).reshape(-1, 3),
            rates=np.asarray([i.fps for i in items], dtype=np.float64),
        )

    @classmethod
    def concat(cls, tables: list[MediaTable]) -> MediaTable:
        if not tables:
            return cls.from_items([])
        bases = np.cumsum([0] + [len(t.kinds) for t in tables])[:-1]
        offsets = [tables[0].offsets[:1]] + [
            t.offsets[1:] + base for t, base in zip(tables, bases, strict=True)
        ]
        return cls(
            offsets=np.concatenate(offsets),
            kinds=np.concatenate([t.kinds for t in tables]).astype(np.str_),
            paths=np.concatenate([t.paths for t in tables]).astype(np.str_),
            members=np.concatenate([t.members for t in tables]).astype(np.str_),
            grids=np.concatenate([t.grids for t in tables]).reshape(-1, 3),
            seconds=np.concatenate([t.seconds for t in tables]),
            frames=np.concatenate([t.frames for t in tables]).reshape(-1, 2),
            audio=np.concatenate([t.audio for t in tables]).reshape(-1, 3),
            rates=np.concatenate([t.rates for t in tables]),
        )

    def items_of(self, k: int) -> tuple[MediaItem, ...]:
        return tuple(self.item(row) for row in range(self.offsets[k], self.offsets[k + 1]))

    def item(self, row: int) -> MediaItem:
        total, num = (int(v) for v in self.frames[row])
        samples, rate, chunk = (int(v) for v in self.audio[row])
        return MediaItem(
            kind=str(self.kinds[row]),
            path=str(self.paths[row]),
            member=str(self.members[row]),
            grid_thw=tuple(int(v) for v in self.grids[row]),
            second_per_grid_t=float(self.seconds[row]),
            total_frames=total,
            num_frames=num,
            audio_samples=samples,
            sampling_rate=rate,
            chunk_samples=chunk,
            fps=float(self.rates[row]),
        )


@dataclass
class TokenizedFile:
    """All samples of one source file, flat: sample k is input_ids[offsets[k]:offsets[k+1]]."""

    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32, unshifted, -100 where not trained
    offsets: np.ndarray  # int64, (n + 1,)
    locations: np.ndarray  # int64, (n,): 1-based line (jsonl) or 0-based record index
    records: int  # records read (valid + skipped)
    media: MediaTable  # images / videos / audio of every sample (none for text data)
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    # records per detected format (formats.py: "openai", "sharegpt", ...), for `lmms-data check`
    formats: dict[str, int] = field(default_factory=dict)
    skip_examples: list[str] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return len(self.locations)
