"""The omni model's processor: Qwen2.5-VL's (images, videos) with Qwen2-Audio's audio handling, and
the built-in download-free one (byte-level tokenizer with the vision and audio specials)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerBase, Qwen2_5_VLProcessor, Qwen2AudioProcessor
from transformers.processing_utils import ProcessorMixin

from lmms_engine import compat
from lmms_engine.models import qwen2_5_vl as vl
from lmms_engine.models import qwen2_audio as audio
from lmms_engine.models.builder_utils import plain
from lmms_engine.models.tokenizer import build_byte_tokenizer

OMNI_PLACEHOLDERS = {
    "image": vl.VISION_START + vl.IMAGE_PAD + vl.VISION_END,
    "video": vl.VISION_START + vl.VIDEO_PAD + vl.VISION_END,
    **audio.AUDIO_PLACEHOLDERS,
}
OMNI_CHAT_TEMPLATE = audio.chatml_media_template(OMNI_PLACEHOLDERS)


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

    _process_audio = compat.qwen2_audio_process_audio()
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


def builtin_processor(config: Mapping[str, Any] | None) -> LmmsOmniProcessor:
    """The built-in processor of a preset's `config` (its vision tower's geometry, its encoder's mel bins)."""
    values = plain(config or {})
    audio_config = values.get("audio_config") or {}
    return build_builtin_omni_processor((values.get("vl_config") or {}).get("vision_config"),
                                        int(audio_config.get("num_mel_bins", 128)))


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


