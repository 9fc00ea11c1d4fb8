"""Collate time: the pixels of a micro-batch's images and videos, made by the processor's own image /
video processors from the files measured at prepare time (media.py), with their grids checked
against the cached ones (a file or processor changed since caching is a ValueError naming it)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .media import MediaSettings, frame_indices, import_av
from .media_source import MediaFile
from .types import MediaItem


def load_image(item: MediaItem) -> Image.Image:
    """The image's pixels (a file read again, or an embedded item's bytes read back from its source)."""
    with Image.open(MediaFile.of(item).open()) as image:
        return image.convert("RGB")


def read_video_frames(item: MediaItem) -> np.ndarray:
    """The sampled frames (num_frames, H, W, 3) uint8 of a video measured at prepare time."""
    av = import_av(item.path)

    indices = frame_indices(item.total_frames, item.num_frames)
    wanted, last = set(indices.tolist()), int(indices[-1])
    frames = {}
    with av.open(MediaFile.of(item).open()) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    if len(frames) != len(wanted):
        raise ValueError(
            f"video {MediaFile.of(item).label!r} has fewer frames than when it was cached; clear the data cache"
        )
    return np.stack([frames[i] for i in indices.tolist()])


def pixel_inputs(media: Sequence[MediaItem], processor, settings: MediaSettings) -> dict:
    """Model inputs for the images and videos of a micro-batch (in placeholder order); keys of a
    kind are absent when there is none of it."""
    images = [m for m in media if m.kind == "image"]
    videos = [m for m in media if m.kind == "video"]
    inputs = {}
    if images:
        out = processor.image_processor(
            images=[load_image(m) for m in images],
            size={"shortest_edge": settings.image_min_pixels, "longest_edge": settings.image_max_pixels},
            return_tensors="pt",
        )
        inputs["pixel_values"] = out["pixel_values"].float()
        inputs["image_grid_thw"] = _checked_grids(out["image_grid_thw"], images)
    if videos:
        out = processor.video_processor(
            videos=[read_video_frames(m) for m in videos],
            size={"shortest_edge": settings.video_min_pixels, "longest_edge": settings.video_max_pixels},
            do_sample_frames=False,  # frames were sampled by `frame_indices`
            cap_pixels_per_frame=False,  # the plain smart_resize rule the grids were measured with
            return_tensors="pt",
        )
        inputs["pixel_values_videos"] = out["pixel_values_videos"].float()
        inputs["video_grid_thw"] = _checked_grids(out["video_grid_thw"], videos)
        inputs["second_per_grid_ts"] = torch.tensor(
            [m.second_per_grid_t for m in videos], dtype=torch.float32
        )
    return inputs


def _checked_grids(produced: torch.Tensor, items: Sequence[MediaItem]) -> torch.Tensor:
    produced = produced.long()
    for grid, item in zip(produced.tolist(), items, strict=True):
        if tuple(grid) != item.grid_thw:
            raise ValueError(
                f"{item.kind} {MediaFile.of(item).label!r} now gives grid {tuple(grid)} but {item.grid_thw} was cached (its "
                "placeholder count); the file or the processor changed since caching: clear the data cache"
            )
    return produced
