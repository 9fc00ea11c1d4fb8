"""3-D multimodal RoPE (mrope) position ids of Qwen2.5-VL, computed per sample for packed batches.

Qwen2.5-VL rotates every token by three positions (temporal, height, width):
  - a text token has the same position p on all three axes, one more than the token before it;
  - a visual block (the merged patch grid of one image or video, `t x h x w` tokens) that starts at
    position s gets, for grid cell (i, j, k): (s + floor(i * interval), s + j, s + k), where the
    interval is 1 for an image and `tokens_per_second * second_per_grid_t` for a video (seconds of
    video per temporal grid step, so temporal ids follow absolute time);
  - the text after a visual block resumes at s + max(h, w) (transformers >= 5.3, the default here),
    or at the block's largest position + 1 (Qwen's original code and transformers <= 5.2). The two
    agree for images; they differ for a video whose temporal ids outrun its spatial extent.

transformers computes this in `Qwen2_5_VLModel.get_rope_index` for a padded batch; here it is done
for ONE sample in numpy (cheap enough for data loader workers), so a packed row is simply the
concatenation of its samples' ids: positions restart at 0 in every sample, as packing requires.

Qwen3-VL (`MropeSpec.for_qwen3_vl`) uses the same rule with every video frame as its own block: its
processor writes a `<t seconds>` timestamp before each temporal patch, so a (t, h, w) video grid is
t grids (1, h, w), as its `get_rope_index` splits them.

Two deliberate departures from transformers, both on inputs that it mishandles:
  - visual tokens are split into blocks by the grid sizes, not by runs of the placeholder id, so two
    images whose placeholders touch (no `<|vision_end|>` between them) still get one block each;
  - a mismatch between placeholders and grids raises ValueError instead of producing wrong ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

# Token types, as transformers' `mm_token_type_ids` numbers them.
TEXT, IMAGE, VIDEO = 0, 1, 2
RESUME_MODES = ("transformers", "qwen_reference")


@dataclass(frozen=True)
class MropeSpec:
    """The model facts that positions depend on (picklable: data workers carry it)."""

    image_token_id: int
    video_token_id: int
    spatial_merge_size: int
    tokens_per_second: float
    # Where text resumes after a visual block; see the module docstring.
    resume_text: str = "transformers"
    # Qwen3-VL: every video frame (temporal grid step) is its own visual block, its `<t seconds>`
    # timestamp text between frames, so a (t, h, w) video grid counts as t grids (1, h, w).
    video_frames_apart: bool = False

    def __post_init__(self):
        if self.resume_text not in RESUME_MODES:
            raise ValueError(f"resume_text={self.resume_text!r}; choose one of {RESUME_MODES}")
        if self.spatial_merge_size < 1:
            raise ValueError(f"spatial_merge_size must be >= 1, got {self.spatial_merge_size}")

    @classmethod
    def from_config(cls, config, resume_text: str = "transformers") -> MropeSpec:
        """From a Qwen2_5_VLConfig (the model's `config`)."""
        vision = config.vision_config
        return cls(
            image_token_id=config.image_token_id,
            video_token_id=config.video_token_id,
            spatial_merge_size=vision.spatial_merge_size,
            tokens_per_second=vision.tokens_per_second,
            resume_text=resume_text,
        )

    @classmethod
    def for_qwen3_vl(cls, config) -> MropeSpec:
        """From a Qwen3VLConfig: frames apart; time is in the timestamp text, not the temporal ids."""
        return cls(
            image_token_id=config.image_token_id,
            video_token_id=config.video_token_id,
            spatial_merge_size=config.vision_config.spatial_merge_size,
            tokens_per_second=1.0,  # unused: a one-frame block has a single temporal id
            video_frames_apart=True,
        )


@dataclass(frozen=True)
class MropeSample:
    """What one sample's positions are computed from.

    image_grid_thw / video_grid_thw: (n, 3) patch grids (before the spatial merge), in the order the
    images / videos appear in input_ids, as the processor returns them. second_per_grid_ts: seconds
    per temporal grid step of each video (None = 1.0 each, as transformers assumes).
    """

    input_ids: np.ndarray
    image_grid_thw: np.ndarray | None = None
    video_grid_thw: np.ndarray | None = None
    second_per_grid_ts: np.ndarray | None = None


@dataclass(frozen=True)
class _VisualBlock:
    start: int  # index of the block's first token in input_ids
    grid: tuple[int, int, int]  # (t, h, w) after the spatial merge
    interval: float | int  # temporal position step per grid step


def mm_token_type_ids(input_ids, spec: MropeSpec) -> np.ndarray:
    """0 for text, 1 for image and 2 for video placeholder tokens (what transformers >= 5.3 needs
    to compute positions itself)."""
    ids = _as_1d_int_array(input_ids)
    types = np.zeros(ids.shape, dtype=np.int64)
    types[ids == spec.image_token_id] = IMAGE
    types[ids == spec.video_token_id] = VIDEO
    return types


def mrope_position_ids(sample: MropeSample, spec: MropeSpec) -> tuple[np.ndarray, int]:
    """(3, len) int64 mrope positions of one sample, and its rope delta.

    The delta (max position + 1 - len) is what generation adds to 1-D positions after the prompt;
    training does not need it, but it lets a caller check against transformers.
    """
    ids = _as_1d_int_array(sample.input_ids)
    if ids.size == 0:
        raise ValueError("cannot compute mrope positions of an empty sample")
    blocks = _visual_blocks(ids, sample, spec)
    positions = _positions(len(ids), blocks, spec)
    return positions, int(positions.max()) + 1 - len(ids)


def packed_mrope_position_ids(samples: Sequence[MropeSample], spec: MropeSpec) -> torch.Tensor:
    """(3, 1, total_len) positions of a packed row: each sample's own positions, side by side."""
    if not samples:
        raise ValueError("cannot pack an empty list of samples")
    per_sample = [mrope_position_ids(sample, spec)[0] for sample in samples]
    return torch.from_numpy(np.concatenate(per_sample, axis=1)).unsqueeze(1)


# ---------------------------------------------------------------- visual blocks


def _visual_blocks(ids: np.ndarray, sample: MropeSample, spec: MropeSpec) -> list[_VisualBlock]:
    """Every image / video block of the sample, in token order, each matched to its grid."""
    types = mm_token_type_ids(ids, spec)
    queues = {
        IMAGE: _GridQueue("image", sample.image_grid_thw, None, spec),
        VIDEO: _video_queue(sample, spec),
    }
    blocks = []
    for start, end in _runs(types):
        blocks.extend(queues[int(types[start])].split_run(start, end))
    for queue in queues.values():
        queue.check_all_used()
    return blocks


def _runs(types: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every maximal run of one non-text token type."""
    change = np.flatnonzero(np.diff(types)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(types)]])
    return [(int(s), int(e)) for s, e in zip(starts, ends) if types[s] != TEXT]


def _video_queue(sample: MropeSample, spec: MropeSpec) -> _GridQueue:
    if not spec.video_frames_apart or sample.video_grid_thw is None:
        return _GridQueue("video", sample.video_grid_thw, sample.second_per_grid_ts, spec)
    grids = _as_grid_array(sample.video_grid_thw, "video")
    frames = np.repeat(grids, grids[:, 0], axis=0)
    frames[:, 0] = 1
    return _GridQueue("video frame", frames, None, spec)


class _GridQueue:
    """The grids of one modality, consumed in order by the placeholder runs of that modality."""

    def __init__(self, kind: str, grid_thw, second_per_grid_ts, spec: MropeSpec):
        self.kind = kind
        self.grids = _as_grid_array(grid_thw, kind)
        self.seconds = _seconds_per_grid(second_per_grid_ts, len(self.grids), kind)
        self.merge = spec.spatial_merge_size
        self.tokens_per_second = spec.tokens_per_second
        self.used = 0

    def split_run(self, start: int, end: int) -> list[_VisualBlock]:
        """The blocks of one run of placeholders: as many grids as the run holds tokens for."""
        blocks = []
        position = start
        while position < end:
            grid = self._next_grid(position)
            size = grid[0] * grid[1] * grid[2]
            if position + size > end:
                raise ValueError(
                    f"{self.kind} {self.used - 1} needs {size} placeholder tokens (grid {self._raw(self.used - 1)}, "
                    f"merge {self.merge}) but only {end - position} follow at token {position}; were the "
                    "placeholders expanded by the same processor settings?"
                )
            blocks.append(_VisualBlock(position, grid, self._interval(self.used - 1)))
            position += size
        return blocks

    def check_all_used(self) -> None:
        if self.used != len(self.grids):
            raise ValueError(
                f"{len(self.grids)} {self.kind} grids given but the sample's placeholders cover only "
                f"{self.used}; every {self.kind} needs its expanded placeholder tokens in input_ids"
            )

    def _next_grid(self, position: int) -> tuple[int, int, int]:
        if self.used == len(self.grids):
            raise ValueError(
                f"{self.kind} placeholder tokens at token {position} have no grid left: "
                f"{len(self.grids)} {self.kind} grids given for more {self.kind}s in input_ids"
            )
        t, h, w = self._raw(self.used)
        if h % self.merge or w % self.merge:
            raise ValueError(f"{self.kind} grid {(t, h, w)} is not divisible by spatial_merge_size={self.merge}")
        self.used += 1
        return t, h // self.merge, w // self.merge

    def _raw(self, index: int) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.grids[index])

    def _interval(self, index: int) -> float | int:
        if self.kind == "image":
            return 1  # a still image has no time axis to space out
        # float32 as transformers computes it (tokens_per_second * a float32 tensor element), so
        # flooring lands on the same integers.
        return np.float32(self.tokens_per_second) * np.float32(self.seconds[index])


def _seconds_per_grid(second_per_grid_ts, count: int, kind: str) -> np.ndarray:
    if second_per_grid_ts is None:
        return np.ones(count, dtype=np.float32)
    seconds = np.asarray(_to_numpy(second_per_grid_ts), dtype=np.float32).reshape(-1)
    if len(seconds) != count:
        raise ValueError(f"second_per_grid_ts has {len(seconds)} values for {count} {kind}s; give one per video")
    if (seconds < 0).any():
        raise ValueError(f"second_per_grid_ts must be >= 0, got {seconds.tolist()}")
    return seconds


# ---------------------------------------------------------------- positions


def _positions(length: int, blocks: list[_VisualBlock], spec: MropeSpec) -> np.ndarray:
    """Text runs get consecutive positions; each visual block its grid positions."""
    chunks = []
    cursor = 0  # next token index to place
    next_position = 0  # position of the next text token
    for block in blocks:
        chunks.append(_text_positions(next_position, block.start - cursor))
        next_position += block.start - cursor
        grid_positions = _grid_positions(next_position, block)
        chunks.append(grid_positions)
        next_position = _resume_after(next_position, block, grid_positions, spec)
        cursor = block.start + grid_positions.shape[1]
    chunks.append(_text_positions(next_position, length - cursor))
    return np.concatenate(chunks, axis=1)


def _text_positions(start: int, count: int) -> np.ndarray:
    return np.broadcast_to(np.arange(start, start + count, dtype=np.int64), (3, count))


def _grid_positions(start: int, block: _VisualBlock) -> np.ndarray:
    """(3, t*h*w) positions of a block, t-major then h then w (the merger's token order)."""
    t, h, w = block.grid
    steps = np.arange(t, dtype=np.float32) * block.interval
    temporal = np.floor(steps).astype(np.int64) + start  # ids are integers: floor, like .long()
    rows = np.arange(h, dtype=np.int64) + start
    cols = np.arange(w, dtype=np.int64) + start
    grid_t, grid_h, grid_w = np.meshgrid(temporal, rows, cols, indexing="ij")
    return np.stack([grid_t.reshape(-1), grid_h.reshape(-1), grid_w.reshape(-1)])


def _resume_after(start: int, block: _VisualBlock, grid_positions: np.ndarray, spec: MropeSpec) -> int:
    if spec.resume_text == "qwen_reference":
        return int(grid_positions.max()) + 1
    _, h, w = block.grid
    return start + max(h, w)


# ---------------------------------------------------------------- input coercion


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _as_1d_int_array(input_ids) -> np.ndarray:
    ids = _to_numpy(input_ids)
    if ids.ndim == 2 and ids.shape[0] == 1:  # a (1, len) row, as tokenizers return it
        ids = ids[0]
    if ids.ndim != 1:
        raise ValueError(f"input_ids of one sample must be 1-D (or (1, len)), got shape {ids.shape}")
    return ids.astype(np.int64, copy=False)


def _as_grid_array(grid_thw, kind: str) -> np.ndarray:
    if grid_thw is None:
        return np.zeros((0, 3), dtype=np.int64)
    grids = _to_numpy(grid_thw).astype(np.int64)
    if grids.ndim != 2 or grids.shape[1] != 3:
        raise ValueError(f"{kind}_grid_thw must have shape (n, 3), got {grids.shape}")
    if (grids <= 0).any():
        raise ValueError(f"{kind}_grid_thw entries must be positive, got {grids.tolist()}")
    return grids
