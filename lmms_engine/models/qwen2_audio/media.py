"""Qwen2-Audio's audio rules for the data side (the family's `MediaRules.audio`; the omni model's
too): how many `<|AUDIO|>` tokens a clip becomes and how many mel frames past its end the encoder
reads (data/media_audio.py asks them for the processor it is given)."""

from __future__ import annotations

from dataclasses import dataclass

from lmms_engine.models.qwen2_audio.encoder import CONV_CONTEXT_FRAMES, feat_extract_output_lengths

AUDIO_BOS, AUDIO_PAD, AUDIO_EOS = "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"


@dataclass(frozen=True)
class QwenAudioRules:
    """name: the rules' name (part of the data cache key); context_frames: mel frames past a clip's
    valid length that reach its outputs through the encoder's convolutions; tokens: the placeholder,
    begin and end tokens of a processor that does not name its own."""

    name: str = "qwen2_audio"
    context_frames: int = CONV_CONTEXT_FRAMES
    tokens: tuple[str, str, str] = (AUDIO_PAD, AUDIO_BOS, AUDIO_EOS)

    def placeholder_count(self, mel_length: int) -> int:
        """P: `<|AUDIO|>` tokens of a clip of mel_length valid frames (the encoder's output length)."""
        return int(feat_extract_output_lengths(mel_length)[1])
