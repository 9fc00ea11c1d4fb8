"""An omni model: Qwen2.5-VL (vision tower + merger + Qwen2.5 decoder with mrope) plus Qwen2-Audio's
Whisper-style audio encoder and a linear audio projector, one model type ("lmms_omni") that
transformers' Auto classes load once this module is imported.

Parameter layout (the Qwen2.5-VL one, with the audio parts beside it):

  model.visual.*            Qwen2.5-VL vision tower and merger
  model.language_model.*    Qwen2.5-VL text decoder (3-D mrope positions)
  model.audio_tower.*       Qwen2AudioEncoder
  model.audio_projector.*   Linear(audio d_model -> decoder hidden), as Qwen2-Audio's projector
  lm_head.*                 tied to the embedding when the VL config ties them

so a Qwen2.5-VL checkpoint's state dict and a Qwen2-Audio checkpoint's `model.audio_tower.*` load by
name (`build_omni(vision_lm=..., audio_encoder=...)`). Audio placeholders are text-like for mrope:
the data side gives them consecutive positions on all three axes.

The training forward reuses the two families' helpers on *views* of this model (`vl_view`,
`audio_view`: the attributes those helpers read, pointing at the omni model's modules), so the one
vision-tower call and the one audio-encoder call per micro-batch (dummy inputs when a micro-batch
has none) behave exactly as in models/qwen2_5_vl.py and models/qwen2_audio.py.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import AddedToken
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2AudioEncoderConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VisionTransformerPretrainedModel,
    Qwen2_5_VLDecoderLayer,
    Qwen2_5_VLTextModel,
    Qwen2_5_VLVisionBlock,
)
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder, Qwen2AudioEncoderLayer
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.processing_utils import ProcessorMixin

from lmms_engine.models import qwen2_5_vl as vl
from lmms_engine.models import qwen2_audio as audio
from lmms_engine.models.audio_encoder import CONV_CONTEXT_FRAMES
from lmms_engine.models.audio_flops import audio_train_flops
from lmms_engine.models.base import ModelBundle
from lmms_engine.models.builder_utils import check_model_type, check_text_vocab_fits, plain
from lmms_engine.models.mrope import MropeSample, MropeSpec, mrope_position_ids
from lmms_engine.models.random_init import build_random
from lmms_engine.models.tokenizer import build_byte_tokenizer

log = logging.getLogger(__name__)

MODEL_TYPE = "lmms_omni"
OMNI_INPUT_KEYS = ("input_ids", "position_ids", "attention_mask", *vl.MEDIA_INPUT_KEYS, *audio.AUDIO_INPUT_KEYS)
OMNI_PLACEHOLDERS = {
    "image": vl.VISION_START + vl.IMAGE_PAD + vl.VISION_END,
    "video": vl.VISION_START + vl.VIDEO_PAD + vl.VISION_END,
    **audio.AUDIO_PLACEHOLDERS,
}
OMNI_CHAT_TEMPLATE = audio.chatml_media_template(OMNI_PLACEHOLDERS)


# ---------------------------------------------------------------- config and model


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
        self.visual = Qwen2_5_VisionTransformerPretrainedModel._from_config(config.vl_config.vision_config)
        self.language_model = Qwen2_5_VLTextModel._from_config(text)
        self.audio_tower = Qwen2AudioEncoder._from_config(config.audio_config)
        self.audio_projector = nn.Linear(config.audio_config.d_model, text.hidden_size, bias=True)
        self.post_init()

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
            self, input_ids, position_ids, attention_mask=attention_mask, pixel_values=pixel_values,
            image_grid_thw=image_grid_thw, pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw,
            **audio_inputs, **kwargs,
        )
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:  # next-token cross-entropy, mean over labels != -100
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)


def _packed_audio(features: torch.Tensor | None, mask: torch.Tensor | None) -> dict:
    """The processor's padded clips in the batch contract of models/qwen2_audio.py: each clip cut
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


# ---------------------------------------------------------------- views for the family helpers


def vl_view(model: LmmsOmniForConditionalGeneration) -> SimpleNamespace:
    """What models/qwen2_5_vl.py's helpers (and the qwen2_5_vl Liger patch) read of a
    Qwen2.5-VL model: `.model.visual`, `.model.language_model`, `.model.get_input_embeddings()`
    and a Qwen2_5_VLConfig as `.config`."""
    return SimpleNamespace(model=model.model, config=model.config.vl_config)


def audio_view(model: LmmsOmniForConditionalGeneration) -> SimpleNamespace:
    """What models/qwen2_audio.py's helpers read of a Qwen2-Audio model."""
    inner = SimpleNamespace(audio_tower=model.model.audio_tower, multi_modal_projector=model.model.audio_projector)
    return SimpleNamespace(model=inner, config=SimpleNamespace(audio_token_index=model.config.audio_token_id))


def omni_hidden_states(
    model: LmmsOmniForConditionalGeneration,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
    pixel_values_videos: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    second_per_grid_ts: torch.Tensor | None = None,
    audio_features: torch.Tensor | None = None,
    audio_frames: torch.Tensor | None = None,
    audio_lengths: torch.Tensor | None = None,
    **text_kwargs,
) -> torch.Tensor:
    """Decoder output (B, T, hidden) of a packed row (cu_seq_lens_* in text_kwargs) or a padded
    batch (attention_mask), with mrope positions (3, B, T).

    The vision tower runs exactly once (images and videos together) and the audio encoder exactly
    once (all clips together) per call, each on a dummy input when the micro-batch has none of its
    media, so every rank runs every sharded block the same number of times (FSDP2 / ZeRO-3 gathers
    match); dummy features enter multiplied by zero (vl_hidden_states, audio_hidden_states)."""
    del second_per_grid_ts  # shapes the positions only, computed by the data
    vl_model, audio_model = vl_view(model), audio_view(model)
    embeds = model.model.get_input_embeddings()(input_ids)
    media = [(pixel_values, image_grid_thw, vl_model.config.image_token_id, "image"),
             (pixel_values_videos, video_grid_thw, vl_model.config.video_token_id, "video")]
    media = [item for item in media if item[0] is not None]
    if media:
        embeds = vl._scatter_visual(vl_model, input_ids, embeds, media)
    else:
        embeds = embeds + 0.0 * vl._dummy_visual_features(vl_model).sum().to(embeds.dtype)
    if audio_features is not None:
        embeds = audio._scatter_audio(audio_model, input_ids, embeds, audio_features, audio_frames, audio_lengths)
    else:
        embeds = embeds + 0.0 * audio._dummy_audio_features(audio_model).sum().to(embeds.dtype)
    outputs = model.model.language_model(
        inputs_embeds=embeds, position_ids=position_ids, attention_mask=attention_mask, use_cache=False, **text_kwargs
    )
    return outputs.last_hidden_state


def omni_step_flops(model: LmmsOmniForConditionalGeneration, batch) -> float:
    """Qwen2.5-VL's (decoder + vision tower, vl_step_flops) plus the audio encoder's and
    projector's on every clip (models/audio_flops.py); frozen parts count their forward only."""
    flops = vl.vl_step_flops(vl_view(model), batch)
    if "audio_lengths" not in batch:
        return flops
    return flops + audio_train_flops(
        model.config.audio_config,
        model.config.vl_config.text_config.hidden_size,
        batch["audio_lengths"].tolist(),
        encoder_trainable=any(p.requires_grad for p in model.model.audio_tower.layers.parameters()),
        projector_trainable=any(p.requires_grad for p in model.model.audio_projector.parameters()),
    )


# ---------------------------------------------------------------- processor


class LmmsOmniProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor (images, videos) with Qwen2-Audio's audio handling: a Whisper log-mel
    `feature_extractor`, one `<|AUDIO|>` per encoder output feature of each clip."""

    audio_kwargs = {"return_attention_mask": True}

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        video_processor=None,
        feature_extractor=None,
        chat_template=None,
        audio_token: str = audio.AUDIO_PAD,
        audio_bos_token: str = audio.AUDIO_BOS,
        audio_eos_token: str = audio.AUDIO_EOS,
        **kwargs,
    ):
        self.image_token, self.video_token = vl.IMAGE_PAD, vl.VIDEO_PAD
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        self.audio_token, self.audio_bos_token, self.audio_eos_token = audio_token, audio_bos_token, audio_eos_token
        self.audio_token_id = tokenizer.convert_tokens_to_ids(audio_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, video_processor, feature_extractor,
                                chat_template=chat_template)

    _process_audio = Qwen2AudioProcessor._process_audio
    replace_audio_token = Qwen2AudioProcessor.replace_audio_token

    @property
    def unused_input_names(self) -> list[str]:
        return ["num_audio_tokens"]

    @property
    def model_input_names(self) -> list[str]:
        names = super().model_input_names + self.feature_extractor.model_input_names + ["feature_attention_mask"]
        return list(dict.fromkeys(names))


def build_omni_tokenizer() -> PreTrainedTokenizerBase:
    """The built-in byte-level ChatML tokenizer with the vision and audio specials."""
    tokenizer = build_byte_tokenizer()
    specials = [AddedToken(token, special=True, normalized=False) for token in (*vl.VISION_SPECIALS, *audio.AUDIO_SPECIALS)]
    tokenizer.add_tokens(specials, special_tokens=True)
    tokenizer.chat_template = OMNI_CHAT_TEMPLATE
    return tokenizer


def build_builtin_omni_processor(vision_config: Mapping[str, Any] | None = None, num_mel_bins: int = 128) -> LmmsOmniProcessor:
    """The download-free processor: the built-in VL image / video processors (vision_config's patch
    geometry), Whisper's log-mel extractor with `num_mel_bins`, the omni tokenizer and template."""
    vision = vl.build_builtin_processor(vision_config)
    return LmmsOmniProcessor(
        image_processor=vision.image_processor,
        tokenizer=build_omni_tokenizer(),
        video_processor=vision.video_processor,
        feature_extractor=audio.build_builtin_audio_processor(num_mel_bins).feature_extractor,
        chat_template=OMNI_CHAT_TEMPLATE,
    )


def omni_processor_from_parts(vl_processor, audio_processor) -> LmmsOmniProcessor:
    """The VL model's processor (tokenizer, image / video processors, chat template) with the audio
    model's feature extractor; the audio specials are added to the tokenizer where missing.

    The built-in VL template becomes the omni one (it renders audio parts too). A checkpoint's own
    template (Qwen's) is kept: it renders no audio part, so the data side writes audio placeholders
    itself (data/chat.py), and inference callers put `<|audio_bos|><|AUDIO|><|audio_eos|>` in the text."""
    tokenizer = vl_processor.tokenizer
    missing = [t for t in audio.AUDIO_SPECIALS if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    template = vl_processor.chat_template
    if template == vl.VL_CHAT_TEMPLATE:
        template = tokenizer.chat_template = OMNI_CHAT_TEMPLATE
    return LmmsOmniProcessor(
        image_processor=vl_processor.image_processor,
        tokenizer=tokenizer,
        video_processor=vl_processor.video_processor,
        feature_extractor=audio_processor.feature_extractor,
        chat_template=template,
    )


# ---------------------------------------------------------------- bundle and builder


@dataclass
class OmniModelBundle(ModelBundle):
    """A ModelBundle whose `tokenizer` is the processor's, plus the processor itself."""

    processor: LmmsOmniProcessor | None = None

    input_keys = OMNI_INPUT_KEYS

    def data_inputs(self) -> dict[str, Any]:
        return {"processor": self.processor, "mrope_spec": MropeSpec.from_config(self.model.config.vl_config)}

    def hidden_states(self, model, **inputs) -> torch.Tensor:
        return omni_hidden_states(model, **inputs)

    def step_flops(self, batch) -> float:
        return omni_step_flops(self.model, batch)

    def components(self) -> dict[str, tuple[str, ...]]:
        return {"vision": ("model.visual.",), "merger": ("model.visual.merger.",),
                "audio": ("model.audio_tower.",), "projector": ("model.audio_projector.",)}

    def artifacts(self):
        return self.processor


def build_omni(
    name: str,
    pretrained: str | None = None,
    vision_lm: str | None = None,
    audio_encoder: str | None = None,
    processor: str | None = None,
    config: Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
    structure_only: bool = False,
) -> OmniModelBundle:
    """Build an omni model and its processor, one of three ways:

    pretrained: a saved omni checkpoint (hub id or local path), with its processor;
    vision_lm + audio_encoder: a Qwen2.5-VL checkpoint (decoder, vision tower, processor) and a
      Qwen2-Audio checkpoint whose audio encoder and feature extractor are taken; the audio
      projector starts random;
    neither: random init from `config` ({vl_config: a Qwen2_5_VLConfig dict, audio_config: a
      Qwen2AudioEncoderConfig dict}) with the built-in byte-level processor; token ids from it.
    processor: hub id or local path overriding the processor these would give.
    structure_only: the module tree from the config, no weights read (ranks that receive them).
    """
    if pretrained and (vision_lm or audio_encoder):
        raise ValueError(f"model {name!r}: set model.pretrained (an omni checkpoint) or model.vision_lm + "
                         "model.audio_encoder (its parts), not both")
    if bool(vision_lm) != bool(audio_encoder):
        raise ValueError(f"model {name!r}: building from parts needs both model.vision_lm (a Qwen2.5-VL checkpoint) "
                         "and model.audio_encoder (a Qwen2-Audio checkpoint)")
    if not (pretrained or vision_lm or config):
        raise ValueError(f"model {name!r}: set model.pretrained, model.vision_lm + model.audio_encoder, "
                         "or give a preset config to initialise from")
    omni_processor = _load_processor(pretrained, vision_lm, audio_encoder, processor, config, trust_remote_code)
    hf_config = _hf_config(pretrained, vision_lm, audio_encoder, config, trust_remote_code, omni_processor.tokenizer, name)
    _check_config(hf_config, omni_processor, name)
    if structure_only:
        model = LmmsOmniForConditionalGeneration(hf_config)
    elif pretrained:
        model = LmmsOmniForConditionalGeneration.from_pretrained(pretrained, dtype=torch.float32,
                                                                 trust_remote_code=trust_remote_code)
    else:
        model = build_random(LmmsOmniForConditionalGeneration, hf_config)  # whole or ZeRO-3 partitioned
        if vision_lm:
            _load_parts(model, vision_lm, audio_encoder, trust_remote_code, name)
    return OmniModelBundle(
        model=model,
        tokenizer=omni_processor.tokenizer,
        name=name,
        shard_units=(Qwen2_5_VLDecoderLayer, Qwen2_5_VLVisionBlock, Qwen2AudioEncoderLayer),
        encoder_units=(Qwen2_5_VLVisionBlock, Qwen2AudioEncoderLayer),
        processor=omni_processor,
    )


def _load_processor(pretrained, vision_lm, audio_encoder, processor, config, trust_remote_code) -> LmmsOmniProcessor:
    if processor or pretrained:
        loaded = AutoProcessor.from_pretrained(processor or pretrained, trust_remote_code=trust_remote_code)
        if not all(hasattr(loaded, piece) for piece in ("image_processor", "feature_extractor", "tokenizer")):
            raise ValueError(
                f"model.processor={processor or pretrained!r} loaded a {type(loaded).__name__}, not an omni processor "
                "with an image_processor, a feature_extractor and a tokenizer"
            )
        return loaded
    if vision_lm:
        vl_processor = vl._load_processor(vision_lm, trust_remote_code, None)
        return omni_processor_from_parts(vl_processor, audio._load_processor(audio_encoder, trust_remote_code, None))
    values = plain(config)
    audio_config = values.get("audio_config") or {}
    return build_builtin_omni_processor((values.get("vl_config") or {}).get("vision_config"),
                                        int(audio_config.get("num_mel_bins", 128)))


def _hf_config(pretrained, vision_lm, audio_encoder, config, trust_remote_code, tokenizer, name) -> LmmsOmniConfig:
    if pretrained:
        hf_config = AutoConfig.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
        if hf_config.model_type != MODEL_TYPE:
            raise ValueError(f"model.pretrained={pretrained!r} is a {hf_config.model_type!r} model, not {MODEL_TYPE!r}; "
                             "for a Qwen2.5-VL + Qwen2-Audio pair use model.vision_lm and model.audio_encoder")
        return hf_config
    audio_id = _audio_token_id(tokenizer, name)
    if vision_lm:
        vl_config = vl._hf_config(vision_lm, None, trust_remote_code, tokenizer, name)
        audio_config = AutoConfig.from_pretrained(audio_encoder, trust_remote_code=trust_remote_code)
        check_model_type(audio_config.model_type, audio_encoder, audio.SUPPORTED_MODEL_TYPES)
        return LmmsOmniConfig(vl_config=vl_config, audio_config=audio_config.audio_config, audio_token_id=audio_id)
    values = plain(config)
    if "audio_token_id" in values and values["audio_token_id"] != audio_id:
        raise ValueError(f"model {name!r}: config.audio_token_id={values['audio_token_id']} but the tokenizer's "
                         f"{audio.AUDIO_PAD} is id {audio_id}; drop audio_token_id from the preset")
    vl_config = vl._hf_config(None, values.get("vl_config") or {}, trust_remote_code, tokenizer, name)
    audio_config = Qwen2AudioEncoderConfig(**(values.get("audio_config") or {}))
    return LmmsOmniConfig(vl_config=vl_config, audio_config=audio_config, audio_token_id=audio_id)


def _audio_token_id(tokenizer: PreTrainedTokenizerBase, name: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(audio.AUDIO_PAD)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"model {name!r}: the tokenizer has no {audio.AUDIO_PAD} token, which the omni model needs")
    return token_id


def _check_config(config: LmmsOmniConfig, processor: LmmsOmniProcessor, name: str) -> None:
    """Token ids, vocabulary and feature geometry agree with the processor (before any weights)."""
    check_text_vocab_fits(config.vl_config, processor.tokenizer, name)
    vl._check_special_token_ids(config.vl_config, processor.tokenizer, name)
    vl._check_patch_geometry(config.vl_config.vision_config, processor, name)
    audio._check_feature_extractor(config.audio_config, processor, name)
    if config.audio_token_id != _audio_token_id(processor.tokenizer, name):
        raise ValueError(f"model {name!r}: config.audio_token_id={config.audio_token_id} but the processor's tokenizer "
                         f"maps {audio.AUDIO_PAD} to {_audio_token_id(processor.tokenizer, name)}")


def _load_parts(model: LmmsOmniForConditionalGeneration, vision_lm: str, audio_encoder: str,
                trust_remote_code: bool, name: str) -> None:
    """Copy a Qwen2.5-VL checkpoint's weights (same names) and a Qwen2-Audio checkpoint's
    `model.audio_tower.*` into the randomly initialised model; only the projector stays random."""
    if is_deepspeed_zero3_enabled():
        raise ValueError(f"model {name!r}: building from parts under ZeRO-3 is not supported; build it once without "
                         "ZeRO-3, save it (save_pretrained) and set model.pretrained to that folder")
    vl_model = Qwen2_5_VLForConditionalGeneration.from_pretrained(vision_lm, dtype="auto", trust_remote_code=trust_remote_code)
    missing, unexpected = model.load_state_dict(vl_model.state_dict(), strict=False)
    del vl_model
    assert not unexpected, f"Qwen2.5-VL weights without a place in the omni model: {unexpected[:5]}"
    assert all(k.startswith(("model.audio_tower.", "model.audio_projector.")) for k in missing), missing[:5]
    audio_model = Qwen2AudioForConditionalGeneration.from_pretrained(audio_encoder, dtype="auto",
                                                                      trust_remote_code=trust_remote_code)
    model.model.audio_tower.load_state_dict(audio_model.model.audio_tower.state_dict())
    del audio_model
    model.float()
    if model.config.tie_word_embeddings:
        model.tie_weights()
    log.info("omni model %s: Qwen2.5-VL weights from %s, audio encoder from %s, projector random", name, vision_lm,
             audio_encoder)


# ---------------------------------------------------------------- registration

AutoConfig.register(MODEL_TYPE, LmmsOmniConfig, exist_ok=True)
AutoModel.register(LmmsOmniConfig, LmmsOmniModel, exist_ok=True)
AutoModelForCausalLM.register(LmmsOmniConfig, LmmsOmniForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(LmmsOmniConfig, LmmsOmniForConditionalGeneration, exist_ok=True)
AutoProcessor.register(LmmsOmniConfig, LmmsOmniProcessor, exist_ok=True)
