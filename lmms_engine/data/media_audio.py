"""Audio of audio-language samples (Whisper-style features): decoding, clips, placeholder counts, log-mel.

Two moments, as for images and video (media.py):
  * prepare time (cached): `measure_audio` decodes the whole file (so a corrupt file is a DataError
    of its record that follows `on_error`, not a crash mid-training) and records its length in
    samples; the record's placeholder is expanded to the audio's token count.
  * collate time: `audio_inputs` decodes the files again, runs the processor's feature extractor
    and cuts each clip to the frames the rmpad encoder needs (the batch contract below).

Decoding: PyAV (`av`, the library media.py uses for video: one decoder for wav / flac / mp3 /
anything FFmpeg reads), resampled to the feature extractor's sampling rate by `av.AudioResampler`
(libswresample), float32, downmixed to mono as the mean of the channels. Paths resolve as for
images (media.py).

Long audio: a file longer than `audio_max_seconds` (default and maximum: the extractor's 30 s
window) is split into consecutive clips of that length, the last one shorter. Each clip is encoded
on its own and its tokens follow the previous clip's, all inside the one `<|audio_bos|> ...
<|audio_eos|>` of the part: what the original engine does. A tail clip too short to give one
encoder output (under 3 mel frames, ~20 ms) is dropped; a whole file that short is unreadable.

The encoder's side of the arithmetic is the processor's model family's (its entry's audio rules,
models/family.py `MediaRules.audio`, kept in `AudioSettings.rules`; Qwen2-Audio's for Qwen2-Audio
and omni processors). Per clip of n samples (Whisper's extractor, hop 160 at 16 kHz = 100 frames/s,
3000-frame window):
  L = min(ceil(n / hop_length), nb_max_frames)   valid mel frames = the extractor's
                                                 attention_mask.sum() with padding="max_length"
  P = rules.placeholder_count(L)                 audio placeholder tokens (the encoder's outputs)
  T = min(L + rules.context_frames, nb_max_frames) frames the clip carries in the batch

Batch contract (the model side, the family's audio encoder, reads exactly this; keys absent when a
micro-batch has no audio):
  audio_features  float32 (n_mels, sum T_i): each clip's log-mel from the extractor run with
                  padding="max_length" (frames past L are the extractor's own silence padding, the
                  conv context of the last valid frames), its first T_i frames, clips concatenated
                  in placeholder order
  audio_frames    int64 (clips,): T_i
  audio_lengths   int64 (clips,): L_i
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmms_engine.models.registry import media_rules

from .errors import DataError
from .media import import_av
from .media_source import MediaFile
from .types import MediaItem

@dataclass(frozen=True)
class AudioSettings:
    """Everything that decides an audio item's clips and placeholders. Picklable (prepare workers)
    and part of the cache key."""

    audio_token_id: int  # the tokenizer's <|AUDIO|>
    # Text an audio part is rendered as when the chat template does not render audio parts itself
    # (None: it does; see chat.audio_part_text).
    audio_text: str | None
    sampling_rate: int
    hop_length: int
    max_frames: int  # the extractor's window in mel frames (nb_max_frames, 3000)
    n_mels: int
    chunk_samples: int  # the longest clip: audio_max_seconds * sampling_rate
    # The encoder's arithmetic: placeholder_count(L), context_frames (the family's audio rules).
    rules: Any = None

    def cache_key(self) -> dict:
        return asdict(self)  # the rules as their fields


def audio_settings(
    processor, tokenizer, audio_max_seconds: float, audio_token: str, audio_text: str | None
) -> AudioSettings:
    """Settings from the processor's feature extractor and family, the tokenizer's id of
    `audio_token` and the data config. The extractor must be Whisper-like: fixed window, hop_length,
    padding="max_length"."""
    extractor = processor.feature_extractor
    rate, window = int(extractor.sampling_rate), int(extractor.n_samples)
    if not 0 < audio_max_seconds <= window / rate:
        raise ValueError(
            f"audio_max_seconds must be in (0, {window / rate:g}] (the feature extractor's window), "
            f"got {audio_max_seconds}"
        )
    token_id = tokenizer.convert_tokens_to_ids(audio_token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {audio_token} token; use the processor's own tokenizer")
    return AudioSettings(
        audio_token_id=int(token_id),
        audio_text=audio_text,
        sampling_rate=rate,
        hop_length=int(extractor.hop_length),
        max_frames=int(extractor.nb_max_frames),
        n_mels=int(extractor.feature_size),
        chunk_samples=min(window, round(audio_max_seconds * rate)),
        rules=audio_rules(processor),
    )


def audio_rules(processor):
    """The audio rules of the processor's model family (models/family.py, MediaRules.audio)."""
    rules = media_rules(processor)
    if rules is None or rules.audio is None:
        raise ValueError(
            f"the processor ({type(processor).__name__}) has a feature_extractor, but no registered model family "
            "names its audio rules (models/family.py, MediaRules.audio): pass the model's own processor"
        )
    return rules.audio


# ---------------------------------------------------------------- clip arithmetic


def mel_frames(num_samples: int, settings: AudioSettings) -> int:
    """L: valid mel frames of a clip of num_samples samples. The extractor's attention mask is the
    sample mask taken every hop_length samples, so it counts the frames starting before the end."""
    return min(math.ceil(num_samples / settings.hop_length), settings.max_frames)


def clip_sample_counts(item: MediaItem, settings: AudioSettings) -> list[int]:
    """Samples per clip: consecutive chunk_samples-long clips, the last one shorter. A tail clip
    with no encoder output (P = 0) is dropped: it would add no token and no feature."""
    # Long audio becomes several clips, each encoded on its own (the encoder's window is 30 s) and
    # their tokens concatenated inside the part's <|audio_bos|> ... <|audio_eos|>, as the original
    # engine does.
    full, rest = divmod(item.audio_samples, item.chunk_samples)
    counts = [item.chunk_samples] * full
    if rest and (not counts or settings.rules.placeholder_count(mel_frames(rest, settings)) > 0):
        counts.append(rest)
    return counts


def clip_mel_lengths(item: MediaItem, settings: AudioSettings) -> list[int]:
    return [mel_frames(n, settings) for n in clip_sample_counts(item, settings)]


def audio_token_count(item: MediaItem, settings: AudioSettings) -> int:
    """The `<|AUDIO|>` tokens of an audio item: the sum over its clips."""
    return sum(settings.rules.placeholder_count(length) for length in clip_mel_lengths(item, settings))


# ---------------------------------------------------------------- prepare time


def measure_audio(file: MediaFile, where: str, settings: AudioSettings) -> MediaItem:
    samples = decode_audio(file, settings.sampling_rate, where)
    item = MediaItem(
        kind="audio",
        path=file.path,
        member=file.member,
        audio_samples=len(samples),
        sampling_rate=settings.sampling_rate,
        chunk_samples=settings.chunk_samples,
    )
    if audio_token_count(item, settings) == 0:
        raise DataError(
            where,
            "media_unreadable",
            f"audio {file.label!r} is {len(samples)} samples long: too short for one audio token",
        )
    return item


def decode_audio(file: MediaFile | Path | str, sampling_rate: int, where: str) -> np.ndarray:
    """The whole file (or embedded item) as float32 mono samples at sampling_rate; DataError if it
    cannot be decoded."""
    file = file if isinstance(file, MediaFile) else MediaFile(str(file))
    av = import_av(where, "audio")
    try:
        pieces = _decode_mono(av, file, sampling_rate)
    except (av.FFmpegError, OSError, ValueError) as error:
        raise DataError(where, "media_unreadable", f"cannot decode audio {file.label!r}: {error}") from error
    if pieces is None:
        raise DataError(where, "media_unreadable", f"{file.label!r} has no audio stream")
    samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    if len(samples) == 0:
        raise DataError(where, "media_unreadable", f"audio {file.label!r} has no decodable samples")
    return samples


def _decode_mono(av, file: MediaFile, sampling_rate: int) -> list[np.ndarray] | None:
    """Decoded, resampled and downmixed pieces; None when the file has no audio stream."""
    with av.open(file.open()) as container:
        if not container.streams.audio:
            return None
        # Planar float at the target rate, channels kept: the downmix is their mean (as librosa's
        # `mono=True`, which Qwen2-Audio's reference code loads with), not libswresample's
        # 1/sqrt(2) per channel.
        resampler = av.AudioResampler(format="fltp", rate=sampling_rate)
        pieces = []
        for frame in container.decode(container.streams.audio[0]):
            pieces.extend(_mono(out) for out in resampler.resample(frame))
        pieces.extend(_mono(out) for out in resampler.resample(None))  # flush
        return pieces


def _mono(frame) -> np.ndarray:
    return frame.to_ndarray().mean(axis=0, dtype=np.float32)  # (channels, samples) -> (samples,)


# ---------------------------------------------------------------- collate time


def audio_clips(item: MediaItem, settings: AudioSettings) -> list[np.ndarray]:
    """The item's clips (float32 samples), decoded again; ValueError if the file changed."""
    file = MediaFile.of(item)
    samples = decode_audio(file, settings.sampling_rate, file.label)
    if len(samples) != item.audio_samples:
        raise ValueError(
            f"audio {file.label!r} now decodes to {len(samples)} samples but {item.audio_samples} were "
            "cached; the file changed since caching: clear the data cache"
        )
    bounds = np.cumsum([0, *clip_sample_counts(item, settings)])
    return [samples[start:stop] for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]


def audio_inputs(items: Sequence[MediaItem], processor, settings: AudioSettings) -> dict:
    """The batch contract's audio keys for a micro-batch's audio items (in placeholder order);
    empty when there is none."""
    clips = [clip for item in items if item.kind == "audio" for clip in audio_clips(item, settings)]
    if not clips:
        return {}
    out = processor.feature_extractor(
        clips,
        sampling_rate=settings.sampling_rate,
        padding="max_length",  # every clip in the 30 s window: frames past L are its silence padding
        return_attention_mask=True,
        return_tensors="pt",
    )
    lengths = [mel_frames(len(clip), settings) for clip in clips]
    assert out["attention_mask"].sum(-1).tolist() == lengths, "mel_frames disagrees with the extractor"
    frames = [min(length + settings.rules.context_frames, settings.max_frames) for length in lengths]
    features = out["input_features"]
    return {
        "audio_features": torch.cat([features[i, :, :t] for i, t in enumerate(frames)], dim=1).float(),
        "audio_frames": torch.tensor(frames, dtype=torch.long),
        "audio_lengths": torch.tensor(lengths, dtype=torch.long),
    }
