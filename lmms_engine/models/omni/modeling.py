"""The omni model's config and modules: Qwen2.5-VL (vision tower + merger + Qwen2.5 decoder with mrope)
plus Qwen2-Audio's Whisper-style audio encoder and a linear audio projector, one model type
("lmms_omni") that transformers' Auto classes load once lmms_engine.models.omni is imported.

Parameter layout (the Qwen2.5-VL one, with the audio parts beside it):

  model.visual.*            Qwen2.5-VL vision tower and merger
  model.language_model.*    Qwen2.5-VL text decoder (3-D mrope positions)
  model.audio_tower.*       Qwen2AudioEncoder
  model.audio_projector.*   Linear(audio d_model -> decoder hidden), as Qwen2-Audio's projector
  lm_head.*                 tied to the embedding when the VL config ties them

The forward is the generic family forward (models/encoders.py) with two encoders: the vision
encoder (models/qwen2_5_vl/vision.py) and the audio encoder (models/qwen2_audio/modality.py), each run once
per micro-batch (on a dummy input when the micro-batch has none of its media).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel, Qwen2_5_VLConfig, Qwen2AudioEncoderConfig
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
    Qwen2_5_VLTextModel,
)
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from lmms_engine.compat import submodule_from_config
from lmms_engine.models.encoders import family_hidden_states
from lmms_engine.models.mrope import MropeSample, MropeSpec, mrope_position_ids
from lmms_engine.models.qwen2_5_vl.vision import QwenVisionEncoder, qwen_vision_encoder
from lmms_engine.models.qwen2_audio.encoder import CONV_CONTEXT_FRAMES, patch_audio_attention
from lmms_engine.models.qwen2_audio.modality import QwenAudioEncoder, qwen_audio_encoder

MODEL_TYPE = "lmms_omni"
DECODER_PATH = "model.language_model"


class LmmsOmniConfig(PreTrainedConfig):
    """vl_config: the Qwen2.5-VL part (decoder, vision tower, vision token ids); audio_config: the
    audio encoder; audio_token_id: the `<|AUDIO|>` placeholder the projected features replace."""

    model_type = MODEL_TYPE
    sub_configs_defaults = {"vl_config": Qwen2_5_VLConfig, "audio_config": Qwen2AudioEncoderConfig}

    vl_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    audio_token_id: int = 151646
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # transformers before `sub_configs_defaults` (5.17 on the GPU image) leaves None / dicts here,
        # e.g. in the default instance save_pretrained builds to diff against: make the sub-configs.
        for key, config_class in self.sub_configs_defaults.items():
            value = getattr(self, key)
            if not isinstance(value, PreTrainedConfig):
                setattr(self, key, config_class(**(value or {})))
        # lm_head shares the embedding exactly when the VL model's config says so.
        self.tie_word_embeddings = bool(self.vl_config.tie_word_embeddings)

    def get_text_config(self, decoder=None, encoder=None) -> PreTrainedConfig:
        """The decoder's config (generation, initializer range, vocab size)."""
        return self.vl_config.text_config


class LmmsOmniPreTrainedModel(PreTrainedModel):
    config: LmmsOmniConfig
    config_class = LmmsOmniConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock", "Qwen2AudioEncoderLayer"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True


class LmmsOmniModel(LmmsOmniPreTrainedModel):
    """The towers, the audio projector and the decoder (no head)."""

    def __init__(self, config: LmmsOmniConfig):
        super().__init__(config)
        text = config.vl_config.text_config
        self.visual = submodule_from_config(Qwen2_5_VisionTransformerPretrainedModel, config.vl_config.vision_config)
        self.language_model = submodule_from_config(Qwen2_5_VLTextModel, text)
        self.audio_tower = submodule_from_config(Qwen2AudioEncoder, config.audio_config)
        self.audio_projector = nn.Linear(config.audio_config.d_model, text.hidden_size, bias=True)
        self.post_init()
        # The forward always runs the audio tower without padding (models/qwen2_audio/encoder.py); the bound
        # attention forward keeps the stock behaviour for stock calls.
        patch_audio_attention(self.audio_tower)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)


class LmmsOmniForConditionalGeneration(LmmsOmniPreTrainedModel, GenerationMixin):
    """The omni model with its LM head. `forward` takes the processor's outputs and returns logits
    (no KV cache: a scoring forward for checks and evaluation, not incremental decoding)."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: LmmsOmniConfig):
        super().__init__(config)
        text = config.vl_config.text_config
        self.model = LmmsOmniModel(config)
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """input_features / feature_attention_mask: the processor's padded log-mel batch (clips,
        n_mels, 3000) and its frame mask. position_ids: (3, B, T) mrope ids; None = computed from
        input_ids, the grids and the attention mask (padding on either side)."""
        kwargs.pop("mm_token_type_ids", None)
        if position_ids is None:
            grids = {"image_grid_thw": image_grid_thw, "video_grid_thw": video_grid_thw,
                     "second_per_grid_ts": second_per_grid_ts}
            spec = MropeSpec.from_config(self.config.vl_config)
            position_ids = batch_mrope_position_ids(input_ids, attention_mask, spec, **grids)
        audio_inputs = _packed_audio(input_features, feature_attention_mask)
        hidden = omni_hidden_states(
            self, input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, pixel_values=pixel_values,
            image_grid_thw=image_grid_thw, pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw,
            **audio_inputs, **kwargs,
        )
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:  # next-token cross-entropy, mean over labels != -100
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)


def omni_encoders(config: LmmsOmniConfig) -> tuple[QwenVisionEncoder, QwenAudioEncoder]:
    """The vision tower (with its merger) and the audio encoder (with its projector), in that order."""
    vl = config.vl_config
    return (qwen_vision_encoder("model.visual", vl.image_token_id, vl.video_token_id),
            qwen_audio_encoder("model.audio_tower", "model.audio_projector", config.audio_token_id))


def omni_hidden_states(model: LmmsOmniForConditionalGeneration, **inputs) -> torch.Tensor:
    """Decoder output (B, T, hidden): the generic family forward with the omni model's two encoders."""
    return family_hidden_states(model, DECODER_PATH, omni_encoders(model.config), **inputs)


def _packed_audio(features: torch.Tensor | None, mask: torch.Tensor | None) -> dict:
    """The processor's padded clips in the batch contract of models/qwen2_audio/modality.py: each clip cut
    to its valid frames plus conv context, concatenated."""
    if features is None:
        return {}
    lengths = mask.sum(-1) if mask is not None else torch.full((features.shape[0],), features.shape[-1])
    frames = [min(int(n) + CONV_CONTEXT_FRAMES, features.shape[-1]) for n in lengths.tolist()]
    clips = [clip[:, :width] for clip, width in zip(features, frames)]
    return {"audio_features": torch.cat(clips, dim=1), "audio_frames": torch.tensor(frames),
            "audio_lengths": lengths.long()}


def batch_mrope_position_ids(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    spec: MropeSpec,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | None = None,
) -> torch.Tensor:
    """(3, B, T) mrope ids of a padded batch: each row's real tokens (attention_mask) as one sample
    (models/mrope.py), taking the grids of its images / videos in order; padding gets 1."""
    mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    positions = torch.ones((3, *input_ids.shape), dtype=torch.long, device=input_ids.device)
    images = _GridRows(image_grid_thw, spec.spatial_merge_size)
    videos = _GridRows(video_grid_thw, spec.spatial_merge_size, second_per_grid_ts)
    for row in range(input_ids.shape[0]):
        ids = input_ids[row][mask[row]].cpu().numpy()
        video_grids, seconds = videos.take(int((ids == spec.video_token_id).sum()))
        sample = MropeSample(ids, images.take(int((ids == spec.image_token_id).sum()))[0], video_grids, seconds)
        row_positions, _ = mrope_position_ids(sample, spec)
        positions[:, row, mask[row]] = torch.from_numpy(row_positions).to(positions.device)
    return positions


class _GridRows:
    """Hands out a batch's grids (and seconds per grid) row after row, by placeholder count."""

    def __init__(self, grids: torch.Tensor | None, merge_size: int, seconds: torch.Tensor | None = None):
        self.grids = np.zeros((0, 3), dtype=np.int64) if grids is None else grids.cpu().numpy()
        self.seconds = None if seconds is None else torch.as_tensor(seconds).cpu().numpy()
        self.tokens = self.grids.prod(axis=1) // merge_size**2
        self.next = 0

    def take(self, placeholders: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        start = self.next
        while placeholders > 0 and self.next < len(self.grids):
            placeholders -= int(self.tokens[self.next])
            self.next += 1
        if start == self.next:
            return None, None
        seconds = None if self.seconds is None else self.seconds[start:self.next]
        return self.grids[start:self.next], seconds


