"""Qwen2.5-VL's vision tower (and merger) as a ModalityEncoder: images and videos of a micro-batch
in one tower call (each attending within itself, never causally), features scattered at the
image / video placeholders. Used by the Qwen2.5-VL family and the omni model."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionBlock, apply_rotary_pos_emb_vision

from lmms_engine.kernels.encoder_attention import Rotary, encoder_varlen_backend, patch_vision_attention
from lmms_engine.models.encoders import ModalityEncoder, scatter_features
from lmms_engine.models.qwen2_5_vl.flops import vision_train_flops
from lmms_engine.models.qwen2_5_vl.kernels import VISION_ATTENTION, VISION_MLPS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VisionInputs:
    """A micro-batch's images and videos as the vision encoder takes them (its batch fields, which
    data/collate.py makes; None for a kind the micro-batch has none of)."""

    pixel_values: torch.Tensor | None = None  # (image patches, C x temporal x patch x patch)
    image_grid_thw: torch.Tensor | None = None  # (images, 3)
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    second_per_grid_ts: torch.Tensor | None = None  # only shapes the mrope positions (the data side's)

    @property
    def present(self) -> bool:
        return self.pixel_values is not None or self.pixel_values_videos is not None

    def items(self, image_id: int, video_id: int) -> list[tuple[torch.Tensor, torch.Tensor, int, str]]:
        """(pixels, grids, placeholder id, label) of each kind present: images, then videos (the
        tower's input order)."""
        kinds = [(self.pixel_values, self.image_grid_thw, image_id, "image"),
                 (self.pixel_values_videos, self.video_grid_thw, video_id, "video")]
        return [kind for kind in kinds if kind[0] is not None]

    @staticmethod
    def grids(batch: Mapping) -> list[list[int]]:
        """Every image and video grid of a micro-batch (a Batch, or a mapping of its fields)."""
        return [grid for key in ("image_grid_thw", "video_grid_thw") if batch.get(key) is not None
                for grid in batch[key].tolist()]


@dataclass(frozen=True)
class QwenVisionEncoder(ModalityEncoder):
    """placeholder_ids = (image token id, video token id); attention_classes / rotary: the tower's
    attention modules and rotary function, bound to one varlen kernel call (patch_kernels)."""

    attention_classes: tuple[type, ...] = VISION_ATTENTION
    rotary: Rotary = apply_rotary_pos_emb_vision

    def embed(self, model, input_ids, embeds, inputs: VisionInputs) -> torch.Tensor:
        media = inputs.items(*self.placeholder_ids)
        features = self._run(model, torch.cat([m[0] for m in media]), torch.cat([m[1] for m in media]))
        return scatter_features(embeds, input_ids, [(m[2], m[3]) for m in media], features, "vision tower")

    def dummy(self, model) -> torch.Tensor:
        return self._run(model, *self.dummy_input(model))

    def dummy_input(self, model) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixels, grid): one merged token's worth of zero pixels (grid 1 x m x m)."""
        config = self.module(model).config
        merge = config.spatial_merge_size
        width = config.in_channels * config.temporal_patch_size * config.patch_size**2
        device = self.module(model).patch_embed.proj.weight.device
        return torch.zeros(merge * merge, width, device=device), torch.tensor([[1, merge, merge]], device=device)

    def trainable(self, model) -> bool:
        # The merger is a component of its own: the tower's cost follows its blocks.
        return any(p.requires_grad for p in self.module(model).blocks.parameters())

    def flops(self, model, batch: Mapping, trainable: bool) -> float:
        grids = VisionInputs.grids(batch)
        return vision_train_flops(self.module(model).config, grids, trainable=trainable) if grids else 0.0

    def patch_kernels(self, model, device) -> list[str]:
        """Bidirectional sdpa from transformers, and on CUDA one varlen kernel call over all images."""
        tower = self.module(model)
        tower.set_attn_implementation("sdpa")
        backend = encoder_varlen_backend(device, head_dim=tower.config.hidden_size // tower.config.num_heads)
        if backend and patch_vision_attention(tower, backend, self.attention_classes, self.rotary):
            return [f"{self.name}: {backend} varlen attention (bidirectional)"]
        return [f"{self.name}: sdpa attention"]

    def _run(self, model, pixels: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        # The tower returns merged features as pooler_output (transformers 5.x), one row per token.
        tower = self.module(model)
        return tower(pixels.to(tower.patch_embed.proj.weight.dtype), grid_thw=grid_thw).pooler_output


def qwen_vision_encoder(module_path: str, image_token_id: int, video_token_id: int) -> QwenVisionEncoder:
    """The Qwen2.5-VL vision encoder of a model whose tower sits at `module_path` (its merger at `.merger`)."""
    return QwenVisionEncoder(
        name="vision",
        module_path=module_path,
        components={"vision": f"{module_path}.", "merger": f"{module_path}.merger."},
        placeholder_ids=(image_token_id, video_token_id),
        inputs_type=VisionInputs,
        unit_classes=(Qwen2_5_VLVisionBlock,),
        padded_mlps=VISION_MLPS,
    )
