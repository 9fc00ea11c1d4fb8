"""Qwen3-VL's video rules, as transformers' `Qwen3VLVideoProcessor` and `Qwen3VLProcessor` apply them:
the family's `MediaRules.video`, which the data side (data/media.py, data/modalities.py) asks for
the videos of a Qwen3-VL processor.

They differ from the default rules (Qwen2.5-VL's reference code, data/media.py) in four ways:
  * frame count: `int(frames / fps * video_fps)` (truncated, not rounded to a multiple of
    temporal_patch_size), within [video_min_frames, video_max_frames] and at most the clip's own
    frame count; an odd count gets its last frame repeated to fill the last temporal patch;
  * resize: the pixel bounds apply to the whole clip (frames x height x width), so a longer clip
    gets smaller frames (transformers' Qwen3-VL `smart_resize`);
  * timestamps: each temporal patch (2 frames) is preceded by the text `<{t:.1f} seconds>`, t the
    mean time of its first and last frame (indices padded as the pixels are);
  * placeholders: the template's `<|vision_start|><|video_pad|><|vision_end|>` keeps its outer pair,
    and its `<|video_pad|>` becomes, per temporal patch, `<t seconds><|vision_start|>` + pads +
    `<|vision_end|>` (transformers' `Qwen3VLProcessor.replace_video_token`). The timestamps sit
    between special tokens, so tokenizing each one alone gives the tokens the processor's text gives.
The frame indices themselves are the default rules' evenly spread ones (the data side passes them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize as clip_smart_resize


@dataclass(frozen=True)
class Qwen3VideoRules:
    """The data side's video interface (models/family.py, MediaRules.video) with Qwen3-VL's rules."""

    name: str = "qwen3_vl"

    def special_tokens(self, processor) -> dict[str, str]:
        """MediaSettings fields -> the processor's tokens whose ids they hold."""
        return {"vision_start_token_id": processor.vision_start_token, "vision_end_token_id": processor.vision_end_token}

    def measure(self, total_frames: int, fps: float, height: int, width: int, settings) -> dict:
        """A video's MediaItem fields (grid, sampling); ValueError naming what makes it unusable."""
        num = frame_count(total_frames, fps, settings)
        tp = settings.temporal_patch_size
        if num < tp:
            raise ValueError(f"has {total_frames} frame(s); Qwen3-VL needs at least {tp}")
        resized = _clip_resized(num, height, width, settings)
        if resized is None:
            raise ValueError(f"({width}x{height}) has an aspect ratio over 200")
        grid = (math.ceil(num / tp), resized[0] // settings.patch_size, resized[1] // settings.patch_size)
        return {"grid_thw": grid, "second_per_grid_t": tp * total_frames / (num * fps),  # seconds per temporal patch
                "total_frames": total_frames, "num_frames": num, "fps": fps}

    def placeholder_run(self, item, settings, tokenizer, frames: np.ndarray) -> np.ndarray:
        """The tokens one video's `<|video_pad|>` becomes: per temporal patch, its timestamp text,
        `<|vision_start|>`, the patch's visual tokens and `<|vision_end|>`. frames: the sampled
        frame indices."""
        _, h, w = item.grid_thw
        per_patch = h * w // settings.merge_size**2
        texts = [f"<{t:.1f} seconds>" for t in frame_timestamps(frames, item.fps, settings.temporal_patch_size)]
        encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
        pads = [settings.vision_start_token_id] + [settings.video_token_id] * per_patch + [settings.vision_end_token_id]
        return np.asarray([i for e in encodings for i in (*e.ids, *pads)], dtype=np.int32)


def frame_count(total_frames: int, fps: float, settings) -> int:
    """`Qwen3VLVideoProcessor.sample_frames`' count: video_fps frames per second, truncated, within
    [video_min_frames, video_max_frames] and at most the clip's frames."""
    wanted = int(total_frames / fps * settings.video_fps)
    return min(max(wanted, settings.video_min_frames), settings.video_max_frames, total_frames)


def _clip_resized(num_frames: int, height: int, width: int, s) -> tuple[int, int] | None:
    if max(height, width) / max(1, min(height, width)) > 200:
        return None  # smart_resize refuses these
    return clip_smart_resize(
        num_frames, height, width, temporal_factor=s.temporal_patch_size, factor=s.factor,
        min_pixels=s.video_min_pixels, max_pixels=s.video_max_pixels,
    )


def frame_timestamps(frames: np.ndarray, fps: float, temporal_patch_size: int) -> list[float]:
    """Seconds of each temporal patch: the mean time of its first and last sampled frame (the last
    patch padded with the last frame), as `Qwen3VLProcessor` computes them."""
    indices = frames.tolist()
    indices += [indices[-1]] * (-len(indices) % temporal_patch_size)
    seconds = [index / fps for index in indices]
    return [
        (seconds[i] + seconds[i + temporal_patch_size - 1]) / 2 for i in range(0, len(seconds), temporal_patch_size)
    ]
