"""Which media kinds a dataset takes, and how each one is measured and expanded at prepare time.

The processor decides: its `image_processor` (with its `video_processor`) enables images and
video (media.py), its `feature_extractor` enables audio (media_audio.py). A Qwen2.5-VL processor
gives the first, a Qwen2-Audio processor the second, an omni processor both. A media part of a
kind the processor cannot make is a DataError `media_unsupported` of its record.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from .chat import MediaRendering, audio_part_text
from .media import MediaSettings, frame_indices, measure_image, measure_video, media_settings, resolve_media_path
from .media_audio import AudioSettings, audio_rules, audio_settings, audio_token_count, measure_audio
from .media_source import EmbeddedMedia, MediaFile
from .types import MediaItem, Record

PART_KINDS = {"image_url": "image", "video_url": "video", "audio_url": "audio"}


@dataclass(frozen=True)
class MediaSupport:
    """The settings of every media kind the dataset takes (None = that kind is refused).
    Picklable: prepare workers measure media without the processor. All of it is cache key."""

    vision: MediaSettings | None = None
    audio: AudioSettings | None = None
    # Relative media paths may leave their source's data_folder (media.resolve_media_path).
    allow_path_escape: bool = False

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset((("image", "video") if self.vision else ()) + (("audio",) if self.audio else ()))

    @property
    def rendering(self) -> MediaRendering:
        return MediaRendering(kinds=self.kinds, audio_text=self.audio.audio_text if self.audio else None)

    def placeholder_ids(self) -> dict[str, int]:
        """kind -> the token id its placeholder runs are made of."""
        ids = {}
        if self.vision:
            ids.update(image=self.vision.image_token_id, video=self.vision.video_token_id)
        if self.audio:
            ids.update(audio=self.audio.audio_token_id)
        return ids

    def num_tokens(self, item: MediaItem) -> int:
        """Placeholder tokens of one item (its visual tokens, or its audio clips' tokens)."""
        if item.kind == "audio":
            return audio_token_count(item, self.audio)
        return item.num_tokens(self.vision.merge_size)

    def placeholder_run(self, item: MediaItem, tokenizer: PreTrainedTokenizerBase) -> int | np.ndarray:
        """What the item's one rendered placeholder token becomes: that many copies of it, or the
        token sequence the video rules write (a Qwen3-VL video: per-patch timestamps and vision
        start / end)."""
        if item.kind == "video":
            frames = frame_indices(item.total_frames, item.num_frames)
            return self.vision.video_rules.placeholder_run(item, self.vision, tokenizer, frames)
        return self.num_tokens(item)

    def cache_key(self) -> dict:
        return {
            "vision": self.vision.cache_key() if self.vision else None,
            "audio": self.audio.cache_key() if self.audio else None,
            "allow_path_escape": self.allow_path_escape,
        }


@dataclass(frozen=True)
class MediaOptions:
    """The data config's media keys (build_sft_dataset's arguments of the same names and defaults)."""

    image_min_pixels: int | None = None  # None: the processor's bounds
    image_max_pixels: int | None = None
    video_fps: float = 2.0
    video_min_frames: int = 4
    video_max_frames: int = 16
    video_max_pixels: int | None = None  # None: the processor's
    audio_max_seconds: float = 30.0
    allow_path_escape: bool = False


def media_support(processor, tokenizer: PreTrainedTokenizerBase, options: MediaOptions = MediaOptions()) -> MediaSupport:
    """Settings of each kind the processor has a piece for (see the module docstring)."""
    has_vision, has_audio = hasattr(processor, "image_processor"), hasattr(processor, "feature_extractor")
    if not (has_vision or has_audio):
        raise ValueError(
            f"the processor ({type(processor).__name__}) has neither an image_processor (images, video) nor a "
            "feature_extractor (audio); pass the model's processor, or none for text-only data"
        )
    vision = None
    if has_vision:
        vision = media_settings(
            processor,
            tokenizer,
            options.image_min_pixels,
            options.image_max_pixels,
            options.video_fps,
            options.video_min_frames,
            options.video_max_frames,
            options.video_max_pixels,
        )
    audio = None
    if has_audio:
        token, bos, eos = _audio_tokens(processor)
        # None if the chat template renders audio parts itself, else the placeholder text they become.
        audio_text = audio_part_text(tokenizer, token, bos, eos)
        audio = audio_settings(processor, tokenizer, options.audio_max_seconds, token, audio_text)
    return MediaSupport(vision=vision, audio=audio, allow_path_escape=options.allow_path_escape)


def _audio_tokens(processor) -> tuple[str, str, str]:
    """(placeholder, begin, end) tokens: the processor's (Qwen2-Audio / Omni processors name them),
    else its family's audio rules'."""
    names = ("audio_token", "audio_bos_token", "audio_eos_token")
    return tuple(getattr(processor, name, default) for name, default in zip(names, audio_rules(processor).tokens))


def measure_record_media(record: Record, support: MediaSupport) -> tuple[MediaItem, ...]:
    """Every image / video / audio of the record, in the order of their placeholders, measured.
    (Kinds the dataset does not take were rejected when the record was rendered.)"""
    where = record.provenance.where
    items = []
    for message in record.messages:
        if isinstance(message.content, str):
            continue
        for part in message.content:
            kind = PART_KINDS.get(part.type)
            if kind is None:
                continue
            file = _media_file(part.value, record, support)
            if kind == "audio":
                items.append(measure_audio(file, where, support.audio))
            else:
                measure = measure_image if kind == "image" else measure_video
                items.append(measure(file, where, support.vision))
    return tuple(items)


def _media_file(value, record: Record, support: MediaSupport) -> MediaFile:
    """An embedded item's bytes, or the file a part's path names (resolved and checked)."""
    if isinstance(value, EmbeddedMedia):
        return MediaFile.embedded(value)
    where, folder = record.provenance.where, record.provenance.data_folder
    return MediaFile(str(resolve_media_path(value, folder, where, support.allow_path_escape)))
