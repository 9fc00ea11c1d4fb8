"""The data config group as one value: `DataSettings`, the `_target_` of conf/data/*.yaml.

Hydra builds it from the group's flat keys (`data.packing_length=...` on the command line sets a
field), it checks them, and the entry point hands it to `build_sft_dataset` with what comes from the
model (tokenizer, processor, mrope spec) and the run's seed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .holdout import check_eval_split
from .modalities import MediaOptions
from .packing import OVERLONG_POLICIES
from .prepare import ON_ERROR_POLICIES


@dataclass(frozen=True)
class DataSettings:
    """What data to read and how to batch it (docs/train.md `data/`; data_prep.md for the media keys).

    packing_length is the token budget of a pack, and the maximum sample length either way;
    longer samples are dropped or truncated (`overlong`; visual and audio tokens count, and a sample
    whose cut would fall inside or before a media item is dropped, not truncated). micro_batch_size
    only applies without packing (with packing, one pack is one micro-batch).

    image_min/max_pixels (None = the processor's bounds), video_fps / video_min_frames /
    video_max_frames (frame sampling) and video_max_pixels (None = the processor's) decide how many
    visual tokens each item costs (data/media.py); audio_max_seconds: longer audio is split into clips
    of this length (at most the feature extractor's 30 s window; data/media_audio.py).
    allow_path_escape: let a relative media path climb out of its source's data_folder (`..`);
    refused by default as a `media_path_escape` record error (follows on_error). Absolute paths and
    file:// URLs are always allowed.

    streaming: read the sources lazily and pack online, window by window (`stream_window` records),
    each rank its own shard, in bounded memory (data/streaming.py). eval_path (a file or dataset yaml
    read with the same settings, never streamed) or eval_fraction (that fraction of the training
    records held out, data/holdout.py) gives the dataset its `eval_data`.
    """

    dataset_path: str | Path  # dataset yaml, or one jsonl / json / arrow / parquet file or folder
    packing: bool = True
    packing_length: int = 2048
    micro_batch_size: int = 4
    on_error: str = "raise"  # raise | skip
    overlong: str = "drop"  # drop | truncate
    num_proc: int | None = None  # tokenization processes (None: min(8, cpus))
    cache_dir: str | Path | None = None  # tokenized cache (None: $LMMS_ENGINE_CACHE or ~/.cache/lmms_engine)
    image_min_pixels: int | None = None
    image_max_pixels: int | None = None
    video_fps: float = 2.0
    video_min_frames: int = 4
    video_max_frames: int = 16
    video_max_pixels: int | None = None
    audio_max_seconds: float = 30.0
    allow_path_escape: bool = False
    streaming: bool = False
    stream_window: int = 2048
    eval_path: str | Path | None = None
    eval_fraction: float = 0.0

    def __post_init__(self) -> None:
        _check_settings(self)
        check_eval_split(self.eval_path, self.eval_fraction, self.streaming)

    def media_options(self) -> MediaOptions:
        """The media keys, as media_support takes them."""
        return MediaOptions(**{option.name: getattr(self, option.name) for option in dataclasses.fields(MediaOptions)})

    def for_eval(self) -> DataSettings:
        """The settings of the eval_path data: the same batching and media rules, read indexed."""
        return dataclasses.replace(self, dataset_path=self.eval_path, streaming=False, eval_path=None, eval_fraction=0.0)


def _check_settings(settings: DataSettings) -> None:
    if settings.packing_length <= 0:
        raise ValueError(f"packing_length must be a positive number of tokens, got {settings.packing_length}")
    if settings.micro_batch_size <= 0:
        raise ValueError(f"micro_batch_size must be positive, got {settings.micro_batch_size}")
    if settings.on_error not in ON_ERROR_POLICIES:
        raise ValueError(f"on_error must be one of {ON_ERROR_POLICIES}, got {settings.on_error!r}")
    if settings.overlong not in OVERLONG_POLICIES:
        raise ValueError(f"overlong must be one of {OVERLONG_POLICIES}, got {settings.overlong!r}")
    if settings.num_proc is not None and settings.num_proc <= 0:
        raise ValueError(f"num_proc must be positive (or null for min(8, cpu_count)), got {settings.num_proc}")
    if settings.streaming and settings.stream_window <= 0:
        raise ValueError(f"data.stream_window must be a positive number of records, got {settings.stream_window}")
