"""Qwen2-Audio's Whisper-style encoder plus its linear projector as a ModalityEncoder: all clips of a
micro-batch through the rmpad encoder (models/qwen2_audio/encoder.py) in one call, projected, and
scattered at the `<|AUDIO|>` placeholders. Used by the Qwen2-Audio family and the omni model.

Batch contract (data/collate.py makes these keys; absent when a micro-batch has no audio):
  audio_features  float (n_mels, sum T_i): the clips' log-mel frames, concatenated
  audio_frames    long (clips,): T_i = min(L_i + CONV_CONTEXT_FRAMES, 3000) frames each clip carries
  audio_lengths   long (clips,): L_i valid frames (the processor's feature_attention_mask sum)
with, in input_ids, P_i = feat_extract_output_lengths(L_i)[1] `<|AUDIO|>` tokens per clip, in order.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoderLayer

from lmms_engine.models.encoders import ModalityEncoder, scatter_features
from lmms_engine.models.qwen2_audio.encoder import audio_features_varlen, max_mel_frames, patch_audio_attention
from lmms_engine.models.qwen2_audio.flops import audio_train_flops
from lmms_engine.models.qwen2_audio.media import AUDIO_PAD


@dataclass(frozen=True)
class AudioInputs:
    """A micro-batch's audio clips as the audio encoder takes them (the batch contract above)."""

    audio_features: torch.Tensor | None = None
    audio_frames: torch.Tensor | None = None
    audio_lengths: torch.Tensor | None = None

    @property
    def present(self) -> bool:
        return self.audio_features is not None


# The smallest clip with one output feature (L = 3 -> M = 2 -> P = 1): the encoder's dummy input.
DUMMY_MEL_FRAMES = 3


@dataclass(frozen=True)
class QwenAudioEncoder(ModalityEncoder):
    """module_path: the encoder; projector_path: the linear projector into the decoder's width."""

    projector_path: str = ""

    def projector(self, model):
        return operator.attrgetter(self.projector_path)(model)

    def embed(self, model, input_ids, embeds, inputs: AudioInputs) -> torch.Tensor:
        features, frames, lengths = inputs.audio_features, inputs.audio_frames, inputs.audio_lengths
        if features.dim() != 2:
            raise ValueError(f"audio_features must be packed (n_mels, frames); got shape {tuple(features.shape)}")
        if lengths is None:
            raise ValueError("audio_features need audio_lengths (valid mel frames per clip)")
        # Split on the frames each clip carries; the encoder reads frames past L_i as conv context only.
        clips = features if frames is None else list(features.split(frames.tolist(), dim=1))
        projected = self._project(model, clips, lengths)
        def detail() -> str:
            return f" from {len(lengths)} clips (valid mel frames {[int(n) for n in lengths.tolist()]})"

        return scatter_features(embeds, input_ids, [(self.placeholder_ids[0], AUDIO_PAD)], projected,
                                "audio encoder", detail)

    def dummy(self, model) -> torch.Tensor:
        """Encoder + projector on DUMMY_MEL_FRAMES frames of zeros (one output feature)."""
        encoder = self.module(model)
        clip = torch.zeros(encoder.num_mel_bins, DUMMY_MEL_FRAMES, device=encoder.conv1.weight.device)
        return self._project(model, [clip], [DUMMY_MEL_FRAMES])

    def trainable(self, model) -> tuple[bool, bool]:
        """(encoder layers train, projector trains): each costs its own backward."""
        layers = any(p.requires_grad for p in self.module(model).layers.parameters())
        return layers, any(p.requires_grad for p in self.projector(model).parameters())

    def flops(self, model, batch: Mapping, trainable: tuple[bool, bool]) -> float:
        """Encoder and projector on every clip's valid frames; the dummy clip is not counted."""
        if "audio_lengths" not in batch:
            return 0.0
        text_hidden = model.config.get_text_config().hidden_size
        return audio_train_flops(self.module(model).config, text_hidden, batch["audio_lengths"].tolist(),
                                 encoder_trainable=trainable[0], projector_trainable=trainable[1])

    def patch_kernels(self, model, device) -> list[str]:
        """The rmpad path's varlen attention forward, bound once (the stock forward stays for stock calls)."""
        encoder = self.module(model)
        encoder.set_attn_implementation("sdpa")
        return [f"{self.name}: {patch_audio_attention(encoder)} attention modules on the varlen forward"]

    def encode(self, model, clips, lengths) -> torch.Tensor:
        """The encoder alone (rmpad) on the clips -> (sum P, d_model), clip after clip."""
        return audio_features_varlen(self.module(model), clips, lengths).features

    def max_frames(self, model) -> int:
        """The longest clip the encoder takes, in mel frames (its 30 s window)."""
        return max_mel_frames(self.module(model))

    def _project(self, model, clips, lengths) -> torch.Tensor:
        """Encoder (rmpad) + projector -> (sum P, text hidden), clip after clip."""
        return self.projector(model)(self.encode(model, clips, lengths))


def qwen_audio_encoder(module_path: str, projector_path: str, audio_token_id: int) -> QwenAudioEncoder:
    return QwenAudioEncoder(
        name="audio",
        module_path=module_path,
        components={"audio": f"{module_path}.", "projector": f"{projector_path}."},
        placeholder_ids=(audio_token_id,),
        inputs_type=AudioInputs,
        unit_classes=(Qwen2AudioEncoderLayer,),
        projector_path=projector_path,
    )
