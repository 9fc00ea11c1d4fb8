"""Collation of samples into model inputs: packed (one row, rmpad) or padded (B rows).

Labels come out ALREADY SHIFTED, per sample: labels[t] is the sample's label at t + 1 and the last
token of every sample gets -100. So the loss is a plain token-wise cross-entropy on (logits,
labels), and no label ever crosses from one sample into the next one in a pack.

Vision-language samples get 3-D mrope position ids instead of 1-D ones, each sample's computed on
its own (`mrope_position_ids_packed` / `_padded`), so they restart in every sample of a pack; text
samples get three equal rows. Audio-only models keep the 1-D ids (plain RoPE). Pixels and audio
features are added by the dataset (media_pixels.pixel_inputs, media_audio.audio_inputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from lmms_engine.models.mrope import MropeSample, MropeSpec, mrope_position_ids, packed_mrope_position_ids

from .batch import Batch
from .chat import IGNORE_INDEX
from .types import Sample


def shift_labels(labels: np.ndarray) -> np.ndarray:
    """labels[1:] followed by IGNORE_INDEX: position t is trained to predict token t + 1."""
    shifted = np.empty_like(labels)
    shifted[:-1] = labels[1:]
    shifted[-1:] = IGNORE_INDEX
    return shifted


def collate_packed(samples: Sequence[Sample]) -> Batch:
    """Concatenate samples into one row with per-sample position ids and cu_seqlens.

    `cu_seqlens` (int32, starting at 0) and `max_seqlen` are what varlen attention kernels need
    to keep attention inside each sample.
    """
    _check_non_empty(samples)
    lengths = np.asarray([len(s) for s in samples], dtype=np.int64)
    input_ids = np.concatenate([s.input_ids for s in samples])
    labels = np.concatenate([shift_labels(s.labels) for s in samples])
    position_ids = np.concatenate([np.arange(n) for n in lengths])
    cu_seqlens = np.zeros(len(samples) + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu_seqlens[1:])
    return Batch(
        input_ids=torch.from_numpy(input_ids).long().unsqueeze(0),
        position_ids=torch.from_numpy(position_ids).long().unsqueeze(0),
        labels=torch.from_numpy(labels).long().unsqueeze(0),
        cu_seqlens=torch.from_numpy(cu_seqlens),
        max_seqlen=int(lengths.max()),
        num_label_tokens=int((labels != IGNORE_INDEX).sum()),
        sample_ids=[s.sample_id for s in samples],
        doc_lengths=lengths.tolist(),
    )


def collate_padded(samples: Sequence[Sample], pad_token_id: int) -> Batch:
    """Right-pad samples to the longest one; pads get attention 0, position 0 and label -100."""
    _check_non_empty(samples)
    width = max(len(s) for s in samples)
    input_ids = np.full((len(samples), width), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(samples), width), dtype=np.int64)
    position_ids = np.zeros((len(samples), width), dtype=np.int64)
    labels = np.full((len(samples), width), IGNORE_INDEX, dtype=np.int64)
    for row, sample in enumerate(samples):
        n = len(sample)
        input_ids[row, :n] = sample.input_ids
        attention_mask[row, :n] = 1
        position_ids[row, :n] = np.arange(n)
        labels[row, :n] = shift_labels(sample.labels)
    return Batch(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(attention_mask),
        position_ids=torch.from_numpy(position_ids),
        labels=torch.from_numpy(labels),
        num_label_tokens=int((labels != IGNORE_INDEX).sum()),
        sample_ids=[s.sample_id for s in samples],
        doc_lengths=[len(s) for s in samples],
    )


def mrope_position_ids_packed(samples: Sequence[Sample], spec: MropeSpec) -> torch.Tensor:
    """(3, 1, total_len) int64: every sample's own mrope ids, side by side."""
    _check_non_empty(samples)
    return packed_mrope_position_ids([mrope_sample(s) for s in samples], spec)


def mrope_position_ids_padded(samples: Sequence[Sample], spec: MropeSpec) -> torch.Tensor:
    """(3, B, width) int64: row b holds sample b's mrope ids, then 0 on the pads."""
    _check_non_empty(samples)
    width = max(len(s) for s in samples)
    positions = np.zeros((3, len(samples), width), dtype=np.int64)
    for row, sample in enumerate(samples):
        positions[:, row, : len(sample)] = mrope_position_ids(mrope_sample(sample), spec)[0]
    return torch.from_numpy(positions)


def mrope_sample(sample: Sample) -> MropeSample:
    """What mrope needs of a sample: its tokens and its media grids, in placeholder order."""
    images = [m for m in sample.media if m.kind == "image"]
    videos = [m for m in sample.media if m.kind == "video"]
    return MropeSample(
        input_ids=sample.input_ids,
        image_grid_thw=np.asarray([m.grid_thw for m in images], dtype=np.int64) if images else None,
        video_grid_thw=np.asarray([m.grid_thw for m in videos], dtype=np.int64) if videos else None,
        second_per_grid_ts=np.asarray([m.second_per_grid_t for m in videos], dtype=np.float32)
        if videos
        else None,
    )


def _check_non_empty(samples: Sequence[Sample]) -> None:
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    assert all(len(s) > 0 for s in samples), "empty sample"
