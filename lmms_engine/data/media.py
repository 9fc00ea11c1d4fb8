"""Images and videos of vision-language samples: where they are, how big they become, their pixels.

Two moments:
  * prepare time (tokenizer workers, cached): `modalities.measure_record_media` resolves every
    image / video path of a record and measures it, giving a `MediaItem` with the patch grid the
    processor will produce, so the sample's token count (and so packing) is known before training. Images are
    fully decoded here (`img.load()`), videos decoded frame by frame, so corrupt files are caught
    as DataErrors that follow `on_error`, not mid-training.
  * collate time: `media_pixels.pixel_inputs` loads the files again and runs the processor's image / video
    processor, and checks the grids it returns against the cached ones (a file changed since it
    was cached is a ValueError naming it).

Paths: `image_url` / `video_url` / `audio_url` values are relative paths (under the source's `data_folder`, or
the working directory when it has none), absolute paths, or `file://` URLs. Nothing is downloaded:
http(s) and other URL schemes are refused (`media_url_unsupported`). A relative path that climbs out
of its data_folder (`../../etc/passwd`) is refused (`media_path_escape`) unless `allow_path_escape`:
the check is lexical (`..` is collapsed without following symlinks), so a symlink inside the
data_folder that points elsewhere is still allowed, as are absolute paths and `file://` URLs.

Grids follow the processor's own resize rule: transformers' `smart_resize` with factor
patch_size * merge_size and the min / max pixel bounds (`image_*_pixels`, null = the processor's
`size`). An image is one temporal step (grid_t = 1).

Video is decoded with PyAV (`av`) and nothing else: it is a wheel with its own FFmpeg, so it needs
no system libraries, and it is what transformers' own `load_video` uses by default. We read frames
with PyAV directly rather than through `transformers.video_utils.load_video`, because that trusts
the container's frame count (`stream.frames`, 0 or wrong for some containers), while we count the
decoded frames. Frames are sampled as Qwen2.5-VL's reference code does: `video_fps` frames per
second of video, bounded to [video_min_frames, video_max_frames] and rounded to a multiple of
temporal_patch_size, spread evenly over the whole clip (`frame_indices`; a clip shorter than
video_min_frames repeats frames). Frames are resized within [the processor's min pixels,
video_max_pixels]. second_per_grid_t = temporal_patch_size / sampled fps, the seconds of video
per temporal grid step that mrope's temporal positions follow. These are the default video rules
(`DefaultVideoRules`); a model family whose processor samples, resizes or expands videos differently
names its own in its entry (models/family.py, `MediaRules.video`), found for the processor given
(models/registry.py, `media_rules`) and kept in `MediaSettings.video_rules`.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from lmms_engine.models.registry import media_rules

from .errors import DataError, shorten
from .media_source import MediaFile
from .types import MediaItem


@dataclass(frozen=True)
class MediaSettings:
    """Everything that decides a media item's grid and placeholders (and so its tokens). Picklable:
    prepare workers measure media without the processor. All of it is part of the cache key."""

    image_token_id: int  # the tokenizer's <|image_pad|> (the processor's image_token)
    video_token_id: int
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    image_min_pixels: int
    image_max_pixels: int
    video_min_pixels: int
    video_max_pixels: int
    video_fps: float
    video_min_frames: int
    video_max_frames: int
    # How videos are sampled, resized and expanded: the processor's family's rules (e.g. Qwen3-VL's:
    # frame count, whole-clip pixel bounds, per-patch `<t seconds>` timestamps), else the defaults.
    video_rules: Any = field(default_factory=lambda: DefaultVideoRules())
    vision_start_token_id: int = -1  # set by video rules that write per-patch start / end tokens
    vision_end_token_id: int = -1

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def cache_key(self) -> dict:
        return asdict(self)  # the video rules as their fields (their name)


def media_settings(
    processor,
    tokenizer,
    image_min_pixels: int | None,
    image_max_pixels: int | None,
    video_fps: float,
    video_min_frames: int,
    video_max_frames: int,
    video_max_pixels: int | None,
) -> MediaSettings:
    """Settings from the processor (patch geometry, default pixel bounds, placeholder tokens), the
    tokenizer that tokenizes the data (placeholder ids) and the data config."""
    images, videos = processor.image_processor, processor.video_processor
    geometry = {key: int(getattr(images, key)) for key in ("patch_size", "merge_size", "temporal_patch_size")}
    video_geometry = {key: int(getattr(videos, key)) for key in geometry}
    if geometry != video_geometry:
        raise ValueError(
            f"the processor's image processor uses {geometry} but its video processor {video_geometry}; "
            "both must match the vision tower"
        )
    video_min = int(videos.size["shortest_edge"])
    video_max = int(videos.size["longest_edge"] if video_max_pixels is None else video_max_pixels)
    settings = MediaSettings(
        image_token_id=_token_id(tokenizer, processor.image_token),
        video_token_id=_token_id(tokenizer, processor.video_token),
        **geometry,
        image_min_pixels=int(images.size["shortest_edge"] if image_min_pixels is None else image_min_pixels),
        image_max_pixels=int(images.size["longest_edge"] if image_max_pixels is None else image_max_pixels),
        # A max below the processor's min would be overruled by it: the max wins.
        video_min_pixels=min(video_min, video_max),
        video_max_pixels=video_max,
        video_fps=float(video_fps),
        video_min_frames=int(video_min_frames),
        video_max_frames=int(video_max_frames),
        **_video_rule_settings(processor, tokenizer),
    )
    _check_settings(settings)
    return settings


def _video_rule_settings(processor, tokenizer) -> dict:
    """The video rules of the processor's family (the defaults when it names none), with the ids of
    the tokens they write."""
    rules = media_rules(processor)
    video = rules.video if rules is not None and rules.video is not None else DefaultVideoRules()
    tokens = {field: _token_id(tokenizer, token) for field, token in video.special_tokens(processor).items()}
    return {"video_rules": video, **tokens}


def _token_id(tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {token} token; use the processor's own tokenizer")
    return int(token_id)


def _check_settings(s: MediaSettings) -> None:
    if not 0 < s.image_min_pixels <= s.image_max_pixels:
        raise ValueError(
            f"need 0 < image_min_pixels <= image_max_pixels, got {s.image_min_pixels} and {s.image_max_pixels}"
        )
    if s.video_max_pixels <= 0:
        raise ValueError(f"video_max_pixels must be positive, got {s.video_max_pixels}")
    if not s.video_fps > 0:
        raise ValueError(f"video_fps must be positive, got {s.video_fps}")
    if not 1 <= s.video_min_frames <= s.video_max_frames:
        raise ValueError(
            f"need 1 <= video_min_frames <= video_max_frames, got {s.video_min_frames} and {s.video_max_frames}"
        )


# ---------------------------------------------------------------- paths


def resolve_media_path(url: str, data_folder: str | None, where: str, allow_escape: bool = False) -> Path:
    """The local file a media part names; DataError if it is a remote URL, a relative path that
    leaves `data_folder` (unless `allow_escape`), or does not exist."""
    quoted = shorten(url)
    try:
        parsed = urlparse(url)
    except ValueError as error:  # e.g. "http://[::1" (an unclosed IPv6 host)
        raise DataError(
            where, "media_url_unsupported", f"media {quoted} is not a valid URL: {error}"
        ) from None
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        if parsed.netloc not in ("", "localhost") or not path.is_absolute():
            raise DataError(
                where,
                "media_url_unsupported",
                f"file URL {quoted} must name an absolute path on this host (file:///data/x.png)",
            )
    elif len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise DataError(
            where,
            "media_url_unsupported",
            f"media {quoted}: {parsed.scheme}:// URLs are not fetched (no network access during training); "
            "download the file and give a local path",
        )
    else:
        path = Path(url)
        if not path.is_absolute():
            path = _under_data_folder(path, data_folder, url, where, allow_escape)
    path = path.absolute()
    if not _is_file(path, url, data_folder, where):
        raise DataError(
            where,
            "media_missing",
            f"media file {shorten(str(path))} not found (part value {quoted}, data_folder {data_folder!r})",
        )
    return path


def _is_file(path: Path, url: str, data_folder: str | None, where: str) -> bool:
    """`path.is_file()`, with the OS errors it raises (a name too long, a folder without search
    permission) as a `media_missing` error of the record."""
    try:
        return path.is_file()
    except OSError as error:
        raise DataError(
            where,
            "media_missing",
            f"media file {shorten(str(path))} cannot be accessed: {error.strerror} (part value "
            f"{shorten(url)}, data_folder {data_folder!r})",
        ) from None


def _under_data_folder(
    path: Path, data_folder: str | None, url: str, where: str, allow_escape: bool
) -> Path:
    """`data_folder / path`, refused when its `..` parts climb out of data_folder (checked on the
    normalised text, no symlinks followed)."""
    root = os.path.normpath(Path(data_folder or ".").absolute())
    joined = os.path.normpath(os.path.join(root, path))
    if not allow_escape and os.path.commonpath([root, joined]) != root:
        folder = (
            f"data_folder {data_folder!r}" if data_folder else f"working directory {root!r} (no data_folder)"
        )
        raise DataError(
            where,
            "media_path_escape",
            f"media path {shorten(url)} leaves its {folder} (resolves to {shorten(joined)}); "
            "use a path inside data_folder, an absolute path, or set data.allow_path_escape=true",
        )
    return Path(joined)


# ---------------------------------------------------------------- prepare time


def measure_image(file: MediaFile, where: str, settings: MediaSettings) -> MediaItem:
    width, height = _decoded_image_size(file, where)
    resized = _resized(height, width, settings.factor, settings.image_min_pixels, settings.image_max_pixels)
    if resized is None:
        raise DataError(
            where, "media_unreadable", f"image {file.label!r} ({width}x{height}) has an aspect ratio over 200"
        )
    grid = (1, resized[0] // settings.patch_size, resized[1] // settings.patch_size)
    return MediaItem(kind="image", path=file.path, member=file.member, grid_thw=grid)


def _decoded_image_size(file: MediaFile, where: str) -> tuple[int, int]:
    try:
        with Image.open(file.open()) as image:
            image.load()  # decode every pixel now: a truncated or corrupt file fails here
            return image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(where, "media_unreadable", f"cannot decode image {file.label!r}: {error}") from error


def measure_video(file: MediaFile, where: str, settings: MediaSettings) -> MediaItem:
    """A video's grid and sampling by the settings' video rules (prepare time)."""
    total, fps, height, width = scan_video(file, where)
    try:
        fields = settings.video_rules.measure(total, fps, height, width, settings)
    except ValueError as error:
        raise DataError(where, "media_unreadable", f"video {file.label!r} {error}") from None
    return MediaItem(kind="video", path=file.path, member=file.member, **fields)


@dataclass(frozen=True)
class DefaultVideoRules:
    """The video rules of Qwen2.5-VL's reference code (this module's docstring), for every processor
    whose family names none; the interface a family's own rules implement (models/family.py)."""

    name: str = "default"

    def special_tokens(self, processor) -> dict[str, str]:
        return {}  # no MediaSettings token fields of its own

    def measure(self, total_frames: int, fps: float, height: int, width: int, settings: MediaSettings) -> dict:
        num = sampled_frame_count(total_frames, fps, settings)
        resized = _resized(height, width, settings.factor, settings.video_min_pixels, settings.video_max_pixels)
        if resized is None:
            raise ValueError(f"({width}x{height}) has an aspect ratio over 200")
        tp = settings.temporal_patch_size
        grid = (num // tp, resized[0] // settings.patch_size, resized[1] // settings.patch_size)
        sampled_fps = num * fps / total_frames  # frames taken per second of video
        return {"grid_thw": grid, "second_per_grid_t": tp / sampled_fps, "total_frames": total_frames,
                "num_frames": num}

    def placeholder_run(self, item: MediaItem, settings: MediaSettings, tokenizer, frames: np.ndarray) -> int:
        """One placeholder becomes the video's visual tokens."""
        return item.num_tokens(settings.merge_size)


def scan_video(file: MediaFile, where: str) -> tuple[int, float, int, int]:
    """(decoded frame count, frame rate, height, width); decoding every frame catches corruption."""
    av = import_av(where)

    total, rate, height, width = 0, None, 0, 0
    try:
        with av.open(file.open()) as container:
            if container.streams.video:
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                for frame in container.decode(stream):
                    total, height, width = total + 1, frame.height, frame.width
    except (av.FFmpegError, OSError, ValueError) as error:
        raise DataError(where, "media_unreadable", f"cannot decode video {file.label!r}: {error}") from error
    if total == 0 or not rate:
        problem = "has no decodable frames" if total == 0 else "has no frame rate"
        raise DataError(where, "media_unreadable", f"video {file.label!r} {problem}")
    return total, float(rate), height, width


def sampled_frame_count(total_frames: int, fps: float, settings: MediaSettings) -> int:
    """video_fps frames per second of video, within [min, max] frames, a multiple of temporal_patch_size."""
    tp = settings.temporal_patch_size
    low = math.ceil(settings.video_min_frames / tp) * tp
    high = max(low, settings.video_max_frames // tp * tp)
    wanted = total_frames / fps * settings.video_fps
    return min(max(round(wanted / tp) * tp, low), high)


def frame_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """Which decoded frames are taken: evenly spread from the first to the last one."""
    return np.linspace(0, total_frames - 1, num_frames).round().astype(np.int64)


def _resized(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int] | None:
    if max(height, width) / max(1, min(height, width)) > 200:
        return None  # smart_resize refuses these
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def import_av(where: str, what: str = "video"):
    """PyAV, which only video and audio data need (a dependency of lmms-engine, so missing = a
    broken env). `what` names the part kind in the error."""
    try:
        import av
    except ImportError:
        raise ValueError(
            f"{where}: {what} parts need PyAV (`av`), which is not installed in this environment; "
            "install the project's dependencies (uv sync) or `pip install av`"
        ) from None
    return av
