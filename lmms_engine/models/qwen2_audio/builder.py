"""Qwen2-Audio (Whisper-style audio encoder + linear projector + Qwen2 decoder): from a hub id or
local path, or randomly initialised from a preset's config (conf/model/*qwen2_audio*.yaml).

Random init builds its processor in code (no download): the byte-level ChatML tokenizer of
models/tokenizer.py plus Qwen's audio specials, Whisper's log-mel feature extractor with the
encoder's mel bins, and a chat template that renders every audio part as
`<|audio_bos|><|AUDIO|><|audio_eos|>`, which the processor expands to one `<|AUDIO|>` per encoder
output feature, as the real Qwen2-Audio processor does.

Training forward (`audio_hidden_states`): the clips of a micro-batch arrive packed, each cut to its
valid frames plus conv context (the batch contract below), and run through the rmpad encoder
(models/qwen2_audio/encoder.py) in one call: a 3 s clip costs 3 s, not the 30 s the stock processor pads
it to. The projected features replace the `<|AUDIO|>` embeddings, then the decoder runs with the
batch's attention kwargs (packed `cu_seq_lens_*` or a padding mask), which never reach the encoder.

Batch contract (data/collate.py makes these keys; absent when a micro-batch has no audio):
  audio_features  float (n_mels, sum T_i): the clips' log-mel frames, concatenated
  audio_frames    long (clips,): T_i = min(L_i + CONV_CONTEXT_FRAMES, 3000) frames each clip carries
  audio_lengths   long (clips,): L_i valid frames (the processor's feature_attention_mask sum)
with, in input_ids, P_i = feat_extract_output_lengths(L_i)[1] `<|AUDIO|>` tokens per clip, in order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from tokenizers import AddedToken
from transformers import (
    AutoProcessor,
    PreTrainedTokenizerBase,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    WhisperFeatureExtractor,
)
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer

from lmms_engine.models.base import ModelBundle
from lmms_engine.models.builder_utils import (
    FamilyParts,
    build_family_bundle,
    checkpoint_config,
    plain,
    preset_token_id,
    require_weights_or_config,
    with_tokenizer_ids,
)
from lmms_engine.models.encoders import family_hidden_states
from lmms_engine.models.qwen2_audio.media import AUDIO_BOS, AUDIO_EOS, AUDIO_PAD, QwenAudioRules
from lmms_engine.models.qwen2_audio.modality import QwenAudioEncoder, qwen_audio_encoder
from lmms_engine.models.tokenizer import build_byte_tokenizer

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("qwen2_audio",)

AUDIO_SPECIALS = (AUDIO_BOS, AUDIO_PAD, AUDIO_EOS)

# How each media part type is rendered; an omni model's template adds the vision ones
# (`chatml_media_template({**AUDIO_PLACEHOLDERS, **vision placeholders})`).
AUDIO_PLACEHOLDERS = {"audio": AUDIO_BOS + AUDIO_PAD + AUDIO_EOS}


def chatml_media_template(placeholders: Mapping[str, str]) -> str:
    """ChatML (no default system prompt) in which a content part of type `kind` or `kind_url`
    renders as `placeholders[kind]`, one placeholder per part, expanded later by the processor.
    Unknown part types render as nothing (the data side rejects media a model cannot take)."""
    parts = "".join(
        f"{{% elif part['type'] in ('{kind}', '{kind}_url') %}}{{{{ '{text}' }}}}"
        for kind, text in placeholders.items()
    )
    return (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'text' %}{{ part['text'] }}"
        f"{parts}"
        "{% endif %}{% endfor %}{% endif %}"
        "{{ '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


AUDIO_CHAT_TEMPLATE = chatml_media_template(AUDIO_PLACEHOLDERS)


def qwen2_audio_encoders(config: Qwen2AudioConfig) -> tuple[QwenAudioEncoder, ...]:
    """The family's encoders: the audio encoder with its projector."""
    return (qwen_audio_encoder("model.audio_tower", "model.multi_modal_projector", config.audio_token_index),)


def build_qwen2_audio(
    name: str,
    pretrained: str | None = None,
    processor: str | None = None,
    config: Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
    structure_only: bool = False,
) -> ModelBundle:
    """Build a Qwen2-Audio model and its processor.

    pretrained: hub id or local path; None = random init from `config` (a Qwen2AudioConfig dict
      with `audio_config` and `text_config`; its audio token id is taken from the processor).
    processor: hub id or local path; None = the pretrained model's processor, or the built-in
      byte-level processor when initialising randomly.
    structure_only: build the module tree from the config without reading any weights (ranks that
      receive weights from rank 0; build under the meta device to skip initialisation too).
    """
    require_weights_or_config(name, pretrained, config)
    audio_processor = load_audio_processor(processor or pretrained, trust_remote_code, config)
    hf_config = _hf_config(pretrained, config, trust_remote_code, audio_processor.tokenizer, name)
    parts = FamilyParts(Qwen2AudioForConditionalGeneration, SUPPORTED_MODEL_TYPES, (Qwen2DecoderLayer,),
                        _check_audio_config, qwen2_audio_encoders)
    return build_family_bundle(parts, name, audio_processor, hf_config, pretrained, trust_remote_code, structure_only)


def _check_audio_config(config, processor, name: str) -> None:
    _check_audio_token_id(config, processor.tokenizer, name)
    check_feature_extractor(config.audio_config, processor, name)


# ---------------------------------------------------------------- processor


def build_builtin_audio_processor(num_mel_bins: int = 128) -> Qwen2AudioProcessor:
    """The download-free processor: byte-level tokenizer + audio specials, Whisper's 16 kHz log-mel
    feature extractor with `num_mel_bins` bins (the encoder's), padding clips to 30 s."""
    return Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=num_mel_bins),
        tokenizer=build_audio_tokenizer(),
        chat_template=AUDIO_CHAT_TEMPLATE,
    )


def build_audio_tokenizer() -> PreTrainedTokenizerBase:
    """The built-in byte-level ChatML tokenizer with Qwen's audio specials and audio chat template."""
    tokenizer = build_byte_tokenizer()
    specials = [AddedToken(token, special=True, normalized=False) for token in AUDIO_SPECIALS]
    tokenizer.add_tokens(specials, special_tokens=True)
    tokenizer.chat_template = AUDIO_CHAT_TEMPLATE
    return tokenizer


def builtin_processor(config: Mapping[str, Any] | None) -> Qwen2AudioProcessor:
    """The built-in processor of a preset's `config` (its encoder's mel bins)."""
    audio_config = plain(config or {}).get("audio_config") or {}
    return build_builtin_audio_processor(int(audio_config.get("num_mel_bins", 128)))


def load_audio_processor(path: str | None, trust_remote_code: bool, config: Mapping[str, Any] | None):
    if path is None:
        return builtin_processor(config)
    loaded = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not hasattr(loaded, "feature_extractor") or not hasattr(loaded, "tokenizer"):
        raise ValueError(
            f"model.processor={path!r} loaded a {type(loaded).__name__}, not an audio-language processor "
            "with a feature_extractor and a tokenizer; point it at a Qwen2-Audio checkpoint or processor folder"
        )
    return loaded


# ---------------------------------------------------------------- model and config


def _hf_config(
    pretrained: str | None,
    config: Mapping[str, Any] | None,
    trust_remote_code: bool,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
) -> Qwen2AudioConfig:
    if pretrained:
        return checkpoint_config(pretrained, trust_remote_code, SUPPORTED_MODEL_TYPES)
    values = plain(config)
    values["audio_token_index"] = preset_token_id(values, "audio_token_index", AUDIO_PAD, tokenizer, name,
                                                  "Qwen2-Audio")
    values["text_config"] = with_tokenizer_ids(values.get("text_config") or {}, tokenizer)
    if values["text_config"].get("tie_word_embeddings"):
        raise ValueError(
            f"model {name!r}: text_config.tie_word_embeddings=true, but Qwen2-Audio keeps its own lm_head "
            "(transformers never ties it to the embedding); set it to false"
        )
    return Qwen2AudioConfig(**values)


# ---------------------------------------------------------------- consistency checks


def _check_audio_token_id(config: Qwen2AudioConfig, tokenizer: PreTrainedTokenizerBase, name: str) -> None:
    """The model finds the audio placeholders by this id: it must be the tokenizer's."""
    expected = tokenizer.convert_tokens_to_ids(AUDIO_PAD)
    if config.audio_token_index != expected:
        raise ValueError(
            f"model {name!r}: config.audio_token_index={config.audio_token_index} but the processor's tokenizer "
            f"maps {AUDIO_PAD} to {expected}; load the processor that belongs to this checkpoint"
        )


def check_feature_extractor(audio_config, processor: Qwen2AudioProcessor, name: str) -> None:
    """The encoder's conv1 takes `num_mel_bins` channels and at most its 30 s of frames: the
    feature extractor must make exactly those, or features and placeholders stop matching."""
    extractor = processor.feature_extractor
    expected = {"mel bins": audio_config.num_mel_bins,
                "max frames": audio_config.max_source_positions * 2}  # conv2's stride
    actual = {"mel bins": extractor.feature_size, "max frames": extractor.nb_max_frames}
    if actual != expected:
        raise ValueError(
            f"model {name!r}: the feature extractor makes {actual} but the audio encoder expects {expected}; "
            "use the processor that belongs to this model (or match audio_config.num_mel_bins)"
        )


# ---------------------------------------------------------------- packed forward


def audio_hidden_states(model: Qwen2AudioForConditionalGeneration, **inputs) -> torch.Tensor:
    """Decoder output (B, T, hidden) of a packed row (B = 1) or a padded batch: the family's generic
    forward (models/encoders.py) on a Qwen2-Audio model, for callers holding the model alone."""
    return family_hidden_states(model, "model.language_model", qwen2_audio_encoders(model.config), **inputs)


def placeholder_count(mel_length: int) -> int:
    """`<|AUDIO|>` tokens for a clip of `mel_length` valid frames (the processor's expansion)."""
    return QwenAudioRules().placeholder_count(mel_length)

