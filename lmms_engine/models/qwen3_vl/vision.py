"""Qwen3-VL's vision tower as a ModalityEncoder: images and videos of a micro-batch in one tower call
(each image / video frame attending within itself, never causally), the merged features scattered at
the image / video placeholders, and the DeepStack features handed to the decoder.

DeepStack: the tower also merges the hidden states of a few intermediate blocks
(`deepstack_visual_indexes`, one merger each); the decoder ADDS level i to its hidden states at the
visual positions after decoder layer i. transformers' `Qwen3VLTextModel` takes them as
`visual_pos_masks` (B, T) and `deepstack_visual_embeds` (one (n_visual, hidden) tensor per level, in
sequence order), which works unchanged on a packed row (B = 1), so this encoder returns them as
decoder kwargs (`embed_for_decoder`) and nothing family-specific reaches the shared forward.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionBlock, apply_rotary_pos_emb_vision

from lmms_engine.models.encoders import scatter_features
from lmms_engine.models.qwen2_5_vl.vision import QwenVisionEncoder, VisionInputs
from lmms_engine.models.qwen3_vl.flops import qwen3_vision_train_flops
from lmms_engine.models.qwen3_vl.kernels import VISION_ATTENTION, VISION_MLPS


@dataclass(frozen=True)
class Qwen3VisionEncoder(QwenVisionEncoder):
    """placeholder_ids = (image token id, video token id); the tower at module_path with its merger
    at `.merger` and DeepStack mergers at `.deepstack_merger_list`."""

    def embed_for_decoder(self, model, input_ids, embeds, inputs: VisionInputs | None) -> tuple[torch.Tensor, dict]:
        if inputs is None:
            return self.embed_or_dummy(model, input_ids, embeds, inputs), {}
        media = inputs.items(*self.placeholder_ids)
        output = self._tower(model, torch.cat([m[0] for m in media]), torch.cat([m[1] for m in media]))
        placeholders = [(m[2], m[3]) for m in media]
        embeds = scatter_features(embeds, input_ids, placeholders, output.pooler_output, "vision tower")
        return embeds, deepstack_inputs(input_ids, placeholders, output.deepstack_features)

    def embed(self, model, input_ids, embeds, inputs: VisionInputs) -> torch.Tensor:
        return self.embed_for_decoder(model, input_ids, embeds, inputs)[0]

    def dummy(self, model) -> torch.Tensor:
        """Merged and DeepStack features of one merged token's worth of zero pixels, concatenated
        (the caller sums them times zero: every merger gets its zero gradient)."""
        output = self._tower(model, *self.dummy_input(model))
        return torch.cat([output.pooler_output, *output.deepstack_features], dim=-1)

    def flops(self, model, batch: Mapping, trainable: bool) -> float:
        grids = VisionInputs.grids(batch)
        return qwen3_vision_train_flops(self.module(model).config, grids, trainable) if grids else 0.0

    def _tower(self, model, pixels: torch.Tensor, grid_thw: torch.Tensor):
        tower = self.module(model)
        return tower(pixels.to(tower.patch_embed.proj.weight.dtype), grid_thw=grid_thw)


def deepstack_inputs(input_ids: torch.Tensor, placeholders, levels) -> dict:
    """`visual_pos_masks` and the DeepStack levels in sequence order. Each level holds the features
    of all images, then all videos (the tower's input order); their placeholders may interleave in
    the sequence, so each kind is scattered at its own positions among the visual ones."""
    masks = [input_ids == token_id for token_id, _ in placeholders]
    visual = functools.reduce(operator.or_, masks)
    kind_masks = [mask[visual].unsqueeze(-1) for mask in masks]
    counts = [int(mask.sum()) for mask in masks]
    ordered = []
    for level in levels:
        joint = level.new_zeros(int(visual.sum()), level.shape[-1])
        for kind_mask, part in zip(kind_masks, level.split(counts)):
            joint = joint.masked_scatter(kind_mask, part)
        ordered.append(joint)
    return {"visual_pos_masks": visual, "deepstack_visual_embeds": ordered}


def qwen3_vision_encoder(module_path: str, image_token_id: int, video_token_id: int) -> Qwen3VisionEncoder:
    """The Qwen3-VL vision encoder of a model whose tower sits at `module_path`."""
    return Qwen3VisionEncoder(
        name="vision",
        module_path=module_path,
        components={"vision": f"{module_path}.", "merger": f"{module_path}.merger.",
                    "deepstack_merger": f"{module_path}.deepstack_merger_list."},
        placeholder_ids=(image_token_id, video_token_id),
        inputs_type=VisionInputs,
        unit_classes=(Qwen3VLVisionBlock,),
        padded_mlps=VISION_MLPS,
        attention_classes=VISION_ATTENTION,
        rotary=apply_rotary_pos_emb_vision,
    )
