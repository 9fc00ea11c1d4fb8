"""The Qwen2-Audio encoder without padding (rmpad): each clip costs its real mel frames, not 30 s.

The stock processor pads every clip to 3000 mel frames (30 s at 100 frames/s) and the stock encoder
refuses anything else, so a 3 s clip costs as much as a 30 s one. `audio_features_varlen` packs the
clips of a batch into one stream and runs the same modules on it:

  conv1 + conv2 (one call each over the stream; clips separated by zero gaps, see `_conv_stream`)
  -> positional embedding by per-clip position (restarting at 0 for every clip)
  -> every encoder layer, attention restricted to each clip (one bidirectional varlen kernel call)
  -> avg pool (stride 2, within each clip) -> final layer norm.

Length arithmetic, for a clip of L valid mel frames (`feature_attention_mask.sum(-1)`):

  conv1 (kernel 3, stride 1, padding 1):  L
  conv2 (kernel 3, stride 2, padding 1):  M = (L - 1) // 2 + 1      encoder-layer tokens (ceil(L/2))
  avg pool (kernel 2, stride 2):          P = (M - 2) // 2 + 1      output features (floor(M/2))

  e.g. 3000 -> 1500 -> 750, 451 -> 226 -> 113, 100 -> 50 -> 25, 37 -> 19 -> 9.
  P is transformers' `Qwen2AudioEncoder._get_feat_extract_output_lengths` and the number of
  `<|AUDIO|>` placeholders `Qwen2AudioProcessor` writes: (((L - 1) // 2 + 1) - 2) // 2 + 1.

Reference matched (to fp32 round-off): the stock encoder as `Qwen2AudioModel.forward` runs it in
training, on the processor's 3000-frame padded batch WITH its attention mask (built from M with
`create_bidirectional_mask`: no valid frame attends to a padding position), on each clip's first P
outputs. Without that mask (the encoder's own docstring says the mask is unused) valid frames attend
to the padding and the outputs differ. One more subtlety: the stock convs run over the padded
frames, so the last valid conv2 output reads mel frames up to index 2M (<= L + 1), i.e. up to
`CONV_CONTEXT_FRAMES` = 2 of the processor's padding frames (log-mel of silence, not zeros). Frames a
clip carries past its valid length are used as that context (and never attended to); give them
(slice `L + CONV_CONTEXT_FRAMES` frames, capped at 3000, from the processor's output) to match the
stock encoder exactly. A clip given as exactly its L frames is read with zeros after its end, as
if it were the whole input (exact for 3000-frame clips; for shorter ones a small difference that
starts at the last conv frame).
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lmms_engine.kernels import attention
from lmms_engine.kernels.encoder_attention import encoder_varlen_backend

# Mel frames past a clip's valid length that reach its valid outputs through conv1 + conv2.
CONV_CONTEXT_FRAMES = 2
# Keyword arguments the encoder layers pass on to the patched attention (see `patch_audio_attention`).
_CU_SEQLENS_KEY, _MAX_LEN_KEY, _BACKEND_KEY = "lmms_audio_cu_seqlens", "lmms_audio_max_len", "lmms_audio_backend"


class AudioVarlenOutput(NamedTuple):
    """Packed encoder outputs: features (sum of output_lengths, d_model), clip after clip."""

    features: torch.Tensor
    output_lengths: torch.Tensor  # (clips,) long: P per clip = its <|AUDIO|> placeholder count


def feat_extract_output_lengths(mel_lengths):
    """(M, P) for L valid mel frames (ints or tensors): encoder-layer tokens and output features.
    The same arithmetic as transformers' `Qwen2AudioEncoder._get_feat_extract_output_lengths`."""
    conv_lengths = (mel_lengths - 1) // 2 + 1
    return conv_lengths, (conv_lengths - 2) // 2 + 1


def max_mel_frames(encoder: nn.Module) -> int:
    """The longest clip the encoder takes: one position embedding per conv2 output (3000 for 1500)."""
    return encoder.config.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]


def audio_features_varlen(
    encoder: nn.Module,
    features: torch.Tensor | Sequence[torch.Tensor],
    lengths: torch.Tensor | Sequence[int] | None = None,
    *,
    backend: str | None = None,
) -> AudioVarlenOutput:
    """Encode clips on their valid mel frames only (see the module docstring for the reference).

    encoder: a transformers `Qwen2AudioEncoder` whose attention modules `patch_audio_attention` has
      bound once (the KernelPatcher does it through the family's audio encoder; patched modules keep
      their stock behaviour when called the stock way).
    features: the processor's padded batch (clips, n_mels, T); a list of (n_mels, T_i) clips; or a
      packed (n_mels, sum L) stream split by `lengths`. Frames past a clip's valid length are conv
      context only (up to `CONV_CONTEXT_FRAMES` are read).
    lengths: valid mel frames per clip (`feature_attention_mask.sum(-1)`); None = every frame given.
    backend: a varlen kernel of kernels/attention.py ("flash_attn", "torch_varlen", "sdpa");
      None = the fastest bidirectional one on the encoder's device ("sdpa" on CPU).
    """
    clips, mel_lengths = _split_clips(features, lengths)
    _check_clips(encoder, clips, mel_lengths)
    device = encoder.conv1.weight.device
    head_dim = encoder.config.d_model // encoder.config.encoder_attention_heads
    backend = backend or encoder_varlen_backend(device, head_dim) or "sdpa"
    _check_patched(encoder)
    conv_lengths = [feat_extract_output_lengths(n)[0] for n in mel_lengths]
    hidden = _conv_stream(encoder, clips, mel_lengths)
    hidden = hidden + encoder.embed_positions(_positions(conv_lengths, device))  # a module call: ZeRO-3 gathers it
    hidden = F.dropout(hidden, p=encoder.dropout, training=encoder.training)
    hidden = _run_layers(encoder, hidden, conv_lengths, backend)
    pooled, output_lengths = _avg_pool_per_clip(hidden, conv_lengths)
    return AudioVarlenOutput(encoder.layer_norm(pooled), torch.tensor(output_lengths, device=device))


def _split_clips(features, lengths) -> tuple[list[torch.Tensor], list[int]]:
    """Every input form -> a list of (n_mels, T_i) clips and their valid lengths (Python ints)."""
    if lengths is not None:
        lengths = [int(n) for n in (lengths.tolist() if torch.is_tensor(lengths) else lengths)]
    if torch.is_tensor(features) and features.dim() == 2:
        if lengths is None:
            raise ValueError("a packed (n_mels, frames) feature stream needs `lengths` to split it into clips")
        if sum(lengths) != features.shape[1]:
            raise ValueError(f"lengths sum to {sum(lengths)} mel frames but the packed stream has {features.shape[1]}")
        return list(features.split(lengths, dim=1)), lengths
    clips = list(features.unbind(0) if torch.is_tensor(features) else features)
    if lengths is None:
        lengths = [clip.shape[-1] for clip in clips]
    if len(lengths) != len(clips):
        raise ValueError(f"{len(lengths)} lengths for {len(clips)} audio clips")
    return clips, lengths


def _check_clips(encoder: nn.Module, clips: list[torch.Tensor], mel_lengths: list[int]) -> None:
    """Clear errors for user mistakes: empty or too-long clips, wrong mel bins, lengths past the data."""
    if not clips:
        raise ValueError("no audio clips to encode")
    limit = max_mel_frames(encoder)
    for i, (clip, n) in enumerate(zip(clips, mel_lengths)):
        if clip.dim() != 2 or clip.shape[0] != encoder.num_mel_bins:
            raise ValueError(
                f"audio clip {i}: expected ({encoder.num_mel_bins}, frames) mel features, got {tuple(clip.shape)}"
            )
        if not 1 <= n <= clip.shape[1]:
            raise ValueError(f"audio clip {i}: valid length {n} outside 1..{clip.shape[1]} (its frames)")
        if n > limit:
            raise ValueError(
                f"audio clip {i} has {n} mel frames; the Qwen2-Audio encoder takes at most {limit} "
                f"({limit // 100} s at 100 frames/s): split longer audio into chunks of at most {limit} frames"
            )


def _conv_stream(encoder: nn.Module, clips: list[torch.Tensor], mel_lengths: list[int]) -> torch.Tensor:
    """conv1 + conv2 over all clips in one call each -> (sum M, d_model), clip after clip.

    Each clip (its valid frames plus up to CONV_CONTEXT_FRAMES context) starts at an even offset,
    so conv2's stride-2 grid is the clip's own, and is followed by at least one zero frame: conv1
    never reads a neighbour. conv1's outputs outside the clips are zeroed, so conv2 reads zeros there,
    as the per-clip conv2 reads its own zero padding.
    """
    dtype, device = encoder.conv1.weight.dtype, encoder.conv1.weight.device
    pieces, keep, starts, offset = [], [], [], 0
    for clip, n in zip(clips, mel_lengths):
        span = min(n + CONV_CONTEXT_FRAMES, clip.shape[1])
        gap = 1 + (span + 1) % 2  # at least one zero frame; the next clip starts at an even offset
        pieces.append(clip[:, :span].to(dtype=dtype, device=device))
        pieces.append(torch.zeros(clip.shape[0], gap, dtype=dtype, device=device))
        keep += [torch.ones(span, dtype=dtype), torch.zeros(gap, dtype=dtype)]
        starts.append(offset)
        offset += span + gap
    stream = torch.cat(pieces, dim=1).unsqueeze(0)  # (1, n_mels, frames)
    hidden = F.gelu(encoder.conv1(stream)) * _on(torch.cat(keep), device)
    hidden = F.gelu(encoder.conv2(hidden))[0].transpose(0, 1)  # (frames / 2, d_model)
    conv_lengths = [feat_extract_output_lengths(n)[0] for n in mel_lengths]
    rows = torch.cat([torch.arange(s // 2, s // 2 + m) for s, m in zip(starts, conv_lengths)])
    return hidden[_on(rows, device)]


def _positions(conv_lengths: list[int], device: torch.device) -> torch.Tensor:
    """Position ids restarting at 0 for every clip."""
    return _on(torch.cat([torch.arange(m) for m in conv_lengths]), device)


def _run_layers(encoder: nn.Module, hidden: torch.Tensor, conv_lengths: list[int], backend: str) -> torch.Tensor:
    """Every encoder layer (with the stock LayerDrop) on the packed (tokens, d_model) stream."""
    bounds = [0]
    for m in conv_lengths:
        bounds.append(bounds[-1] + m)
    varlen = {
        _CU_SEQLENS_KEY: torch.tensor(bounds, dtype=torch.int32, device=hidden.device),
        _MAX_LEN_KEY: max(conv_lengths),
        _BACKEND_KEY: backend,
    }
    hidden = hidden.unsqueeze(0)  # the layers take (batch, tokens, d_model): one packed row
    for layer in encoder.layers:
        if encoder.training and encoder.layerdrop > 0.0 and torch.rand([]) < encoder.layerdrop:
            continue
        # Called as a module (hidden states positional): FSDP2 hooks and gradient checkpointing apply.
        hidden = layer(hidden, None, **varlen)
    return hidden[0]


def _avg_pool_per_clip(hidden: torch.Tensor, conv_lengths: list[int]) -> tuple[torch.Tensor, list[int]]:
    """nn.AvgPool1d(2, stride=2) within each clip: pairs (0,1), (2,3), ...; an odd last token is dropped."""
    output_lengths = [(m - 2) // 2 + 1 for m in conv_lengths]
    starts = [0]
    for m in conv_lengths[:-1]:
        starts.append(starts[-1] + m)
    firsts = _on(torch.cat([torch.arange(s, s + 2 * p, 2) for s, p in zip(starts, output_lengths)]), hidden.device)
    return (hidden[firsts] + hidden[firsts + 1]) / 2, output_lengths


def _on(index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Index tensors are built on the CPU (Python-int layout) and copied once, not made per clip on the GPU."""
    return index.to(device, non_blocking=True)


# ---------------------------------------------------------------- attention


def patch_audio_attention(encoder: nn.Module) -> int:
    """Bind the varlen-capable forward to every Qwen2-Audio attention module (idempotent); returns
    how many. Called without the varlen keyword arguments, a patched module runs the stock forward."""
    from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioAttention

    modules = [m for m in encoder.modules() if isinstance(m, Qwen2AudioAttention)]
    for module in modules:
        if "forward" not in vars(module):
            module.forward = types.MethodType(_audio_attention_forward, module)
    encoder._lmms_varlen_attention = True
    return len(modules)


def _check_patched(encoder: nn.Module) -> None:
    if not getattr(encoder, "_lmms_varlen_attention", False):
        raise ValueError("the audio encoder's attention is not on the varlen forward: call "
                         "patch_audio_attention(encoder) once first (KernelPatcher.apply does it for a model family)")


def _audio_attention_forward(self, hidden_states, attention_mask=None, output_attentions=False, **kwargs):
    """(1, tokens, d_model) packed clips -> (1, tokens, d_model), None: attention within each clip."""
    if _CU_SEQLENS_KEY not in kwargs:
        return type(self).forward(self, hidden_states, attention_mask, output_attentions, **kwargs)
    if self.dropout and self.training:
        raise ValueError("audio attention_dropout is not supported by the varlen attention kernels; set it to 0")
    tokens = hidden_states.shape[1]
    # The stock order: queries scaled before the product, the kernel then scales by 1.
    q = (self.q_proj(hidden_states) * self.scaling).view(tokens, self.num_heads, self.head_dim)
    k = self.k_proj(hidden_states).view(tokens, self.num_heads, self.head_dim)
    v = self.v_proj(hidden_states).view(tokens, self.num_heads, self.head_dim)
    q, k, v = attention.to_compute_dtype(q, k, v)
    out = attention.varlen_attention(q, k, v, kwargs[_CU_SEQLENS_KEY], kwargs[_MAX_LEN_KEY], 1.0,
                                     causal=False, backend=kwargs[_BACKEND_KEY])
    return self.out_proj(out.reshape(1, tokens, -1)), None
