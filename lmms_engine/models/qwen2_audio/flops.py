"""FLOPs of Qwen2-Audio's audio encoder and projector, per clip, for MFU.

A clip of L valid mel frames (`audio_lengths`) becomes M = (L - 1) // 2 + 1 encoder tokens (conv2,
stride 2) and P = (M - 2) // 2 + 1 features (avg pool), one per `<|AUDIO|>` placeholder
(models/qwen2_audio/encoder.py). Counted like models/flops.py (2 FLOPs per multiply-add of a matmul or
convolution; norms, activations, positional embedding, softmax and pooling are left out), forward
pass, with d = d_model, F = encoder_ffn_dim, n = num_mel_bins, h = the decoder's hidden size:

  conv1        2 * L * (n * 3 * d)          kernel 3, stride 1: one output frame per mel frame
  conv2        2 * M * (d * 3 * d)          kernel 3, stride 2
  per layer    2 * M * (4 d^2 + 2 d F)      q, k, v, out projections + fc1, fc2
               + 4 * d * M^2                Q @ K^T and P @ V, bidirectional, within the clip
  projector    2 * P * d * h                one linear layer (multi_modal_projector.linear)

Only valid frames count: the rmpad encoder (audio_features_varlen) never computes the 30 s of
padding the stock processor adds; its few extra frames (conv context, zero gaps) are overhead.

Training: backward costs twice the forward, so a trained part costs 3x its forward and a frozen
one 1x (mel features never need a gradient). The projector's backward is split: its input gradient
is computed only for a trained encoder, its weight gradient only for a trained projector.
"""

from __future__ import annotations

from collections.abc import Iterable

from lmms_engine.models.qwen2_audio.encoder import feat_extract_output_lengths


def audio_encoder_forward_flops(audio_config, mel_length: int) -> float:
    """Forward FLOPs of the audio encoder on one clip of `mel_length` valid mel frames."""
    length = _check_length(mel_length)
    conv_tokens, _ = feat_extract_output_lengths(length)
    d, ffn, mels = audio_config.d_model, audio_config.encoder_ffn_dim, audio_config.num_mel_bins
    conv = 2.0 * length * mels * 3 * d + 2.0 * conv_tokens * d * 3 * d
    layer = 2.0 * conv_tokens * (4 * d * d + 2 * d * ffn) + 4.0 * d * conv_tokens**2
    return conv + audio_config.encoder_layers * layer


def audio_projector_forward_flops(audio_config, text_hidden_size: int, mel_length: int) -> float:
    """Forward FLOPs of the projector on one clip's P output features."""
    _, features = feat_extract_output_lengths(_check_length(mel_length))
    return 2.0 * features * audio_config.d_model * text_hidden_size


def audio_train_flops(
    audio_config,
    text_hidden_size: int,
    mel_lengths: Iterable[int],
    encoder_trainable: bool = True,
    projector_trainable: bool = True,
) -> float:
    """FLOPs of one step's audio work (encoder + projector) over clips of the given valid lengths."""
    lengths = [int(n) for n in mel_lengths]
    encoder = sum(audio_encoder_forward_flops(audio_config, n) for n in lengths)
    projector = sum(audio_projector_forward_flops(audio_config, text_hidden_size, n) for n in lengths)
    projector_factor = 1 + int(projector_trainable) + int(encoder_trainable)
    return (3.0 if encoder_trainable else 1.0) * encoder + projector_factor * projector


def _check_length(mel_length: int) -> int:
    length = int(mel_length)
    if length < 1:
        raise ValueError(f"an audio clip has {length} valid mel frames; it needs at least 1")
    return length
