"""One micro-batch of model inputs, as collate makes it and the training step consumes it.

Two layouts: packed (one row of concatenated samples, `cu_seqlens` delimiting them: rmpad) and
padded (B rows, `attention_mask`). Labels are already shifted per sample (data/collate.py). Media
fields are None when the micro-batch has no such media (or the model none of that kind). A
benchmark's baseline with another input layout subclasses it with its own fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor  # (1, T) packed, (B, L) padded; int64
    labels: torch.Tensor  # as input_ids; -100 where not trained
    position_ids: torch.Tensor  # as input_ids, or (3, 1, T) / (3, B, L) mrope ids
    num_label_tokens: int  # labels != -100 (counted on the CPU, no device sync)
    sample_ids: list[str]  # "file:line" of each sample, for error messages
    doc_lengths: list[int]  # real (unpadded) tokens of each sample, for token counts and FLOPs
    attention_mask: torch.Tensor | None = None  # padded only: 1 on tokens, 0 on pads
    cu_seqlens: torch.Tensor | None = None  # packed only: int32 sample boundaries, from 0
    max_seqlen: int | None = None  # packed only: the longest sample
    # Images / videos (Qwen2.5-VL processor outputs; data/media.py).
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    second_per_grid_ts: torch.Tensor | None = None
    # Audio clips (log-mel features; data/media_audio.py).
    audio_features: torch.Tensor | None = None
    audio_frames: torch.Tensor | None = None
    audio_lengths: torch.Tensor | None = None

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    def model_inputs(self, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The model's keyword inputs: each of `keys` this batch has (None fields left out)."""
        unknown = [key for key in keys if key not in self.__dataclass_fields__]
        assert not unknown, f"a model asks for batch fields {unknown} that Batch does not have"
        return {key: value for key in keys if (value := getattr(self, key)) is not None}

    def to(self, device: torch.device) -> Batch:
        """Tensors moved to `device` (asynchronously from pinned memory); the rest as it is."""
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True) on what a worker collated."""
        return self._map(torch.Tensor.pin_memory)

    def unpadded(self) -> Batch:
        """A padded batch as one packed row (rmpad on unpacked data); a packed one as it is."""
        if self.attention_mask is None:
            return self
        mask = self.attention_mask.bool()
        lengths = mask.sum(dim=1)
        cu_seqlens = torch.zeros(len(lengths) + 1, dtype=torch.int32)
        cu_seqlens[1:] = torch.cumsum(lengths, dim=0)
        rows = {key: getattr(self, key)[mask].unsqueeze(0) for key in ("input_ids", "labels")}
        # mrope ids (3, B, L) -> (3, 1, T); 1-D ids (B, L) -> (1, T)
        positions = self.position_ids
        rows["position_ids"] = positions[:, mask].unsqueeze(1) if positions.dim() == 3 else positions[mask].unsqueeze(0)
        return dataclasses.replace(self, **rows, attention_mask=None, cu_seqlens=cu_seqlens,
                                   max_seqlen=int(lengths.max()))

    def padded_to_multiple(self, multiple: int) -> Batch:
        """A packed row padded to a multiple of `multiple` tokens with one more, untrained document
        (labels -100, positions from 0): sequence parallelism splits the row into equal shards. The
        real-token counts (doc_lengths, num_label_tokens) do not change."""
        total = self.input_ids.shape[1]
        pad = -total % multiple
        if pad == 0:
            return self
        assert self.packed, "only packed rows are split into sequence shards"
        positions = torch.arange(pad, dtype=self.position_ids.dtype)
        if self.position_ids.dim() == 3:  # mrope (3, 1, T): every axis counts from 0
            positions = positions.expand(self.position_ids.shape[0], 1, pad)
        else:
            positions = positions.unsqueeze(0)
        cu_seqlens = torch.cat([self.cu_seqlens, torch.tensor([total + pad], dtype=self.cu_seqlens.dtype)])
        return dataclasses.replace(
            self,
            input_ids=torch.cat([self.input_ids, self.input_ids.new_zeros(1, pad)], dim=1),
            labels=torch.cat([self.labels, self.labels.new_full((1, pad), -100)], dim=1),
            position_ids=torch.cat([self.position_ids, positions.to(self.position_ids.device)], dim=-1),
            cu_seqlens=cu_seqlens.to(self.cu_seqlens.device),
            max_seqlen=max(self.max_seqlen, pad),
        )

    def fields(self) -> dict:
        """The fields that are set (not None), by name, in declaration order."""
        return {name: value for name in self.__dataclass_fields__ if (value := getattr(self, name)) is not None}

    def with_fields(self, **values) -> Batch:
        """A copy with `values` set (collate adds mrope ids and media this way)."""
        return dataclasses.replace(self, **values)

    def _map(self, fn) -> Batch:
        moved = {name: fn(v) for name in self.__dataclass_fields__ if isinstance(v := getattr(self, name), torch.Tensor)}
        return dataclasses.replace(self, **moved)

    # Read access by field name, for the model families' step_flops (ModalityEncoder.flops) and the
    # patcher's attention_kwargs, which read a mapping (`key in batch` / `get`: the field is set);
    # new code reads the attributes.
    def __getitem__(self, key: str):
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default=None):
        value = getattr(self, key, None) if key in self.__dataclass_fields__ else None
        return default if value is None else value

    __iter__ = None  # not a mapping to iterate (fields() is): iter(batch) is a TypeError

    def __contains__(self, key: object) -> bool:
        return key in self.__dataclass_fields__ and getattr(self, key) is not None
