"""Qwen2-Audio encoder without padding: equal to the stock padded encoder (run with its attention
mask, as Qwen2AudioModel.forward runs it) on every clip's valid outputs, at a fraction of the cost."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import Qwen2AudioConfig, Qwen2AudioEncoderConfig
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoder

from lmms_engine.models.qwen2_audio.encoder import (
    CONV_CONTEXT_FRAMES,
    audio_features_varlen,
    patch_audio_attention,
    feat_extract_output_lengths,
    max_mel_frames,
)

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
MEL_LENGTHS = (37, 100, 3000, 451)
FULL = 3000
# Log-mel of silence after Whisper's (x + 4) / 4 scaling: the processor's padding frames are not zeros.
SILENCE = -0.6


def _preset(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))["config"]


def _encoder(attn_implementation: str = "sdpa") -> Qwen2AudioEncoder:
    torch.manual_seed(0)
    config = Qwen2AudioEncoderConfig(**_preset("tiny_qwen2_audio")["audio_config"])
    config._attn_implementation = attn_implementation
    encoder = Qwen2AudioEncoder(config).eval()
    patch_audio_attention(encoder)
    with torch.no_grad():  # larger than the 0.02 init, so boundary mistakes are far above round-off
        for param in encoder.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
    return encoder


def _padded_batch(lengths=MEL_LENGTHS) -> tuple[torch.Tensor, torch.Tensor]:
    """Random mel features padded to 3000 frames the processor's way, and feature_attention_mask."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(len(lengths), 128, FULL, generator=generator)
    mask = torch.arange(FULL)[None, :] < torch.tensor(lengths)[:, None]
    padding = SILENCE + 0.05 * torch.randn(features.shape, generator=generator)
    return torch.where(mask[:, None, :], features, padding), mask.long()


def _masked_reference(encoder: Qwen2AudioEncoder, features: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """The stock encoder as Qwen2AudioModel.forward calls it (same mask construction), per clip."""
    conv_lengths, output_lengths = encoder._get_feat_extract_output_lengths(mask.sum(-1))
    max_seq_len = (features.shape[-1] - 2) // 2 + 1
    mask_2d = (torch.arange(max_seq_len)[None, :] < conv_lengths[:, None]).long()
    dummy = torch.zeros(features.shape[0], max_seq_len, 1)
    attention_mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=dummy, attention_mask=mask_2d)
    out = encoder(features, attention_mask=attention_mask).last_hidden_state
    return [out[i, :p] for i, p in enumerate(output_lengths.tolist())]


def _per_clip(packed: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    return list(packed.split(lengths.tolist()))


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_varlen_equals_masked_padded_encoder(attn_implementation):
    encoder = _encoder(attn_implementation)
    features, mask = _padded_batch()
    with torch.no_grad():
        expected = _masked_reference(encoder, features, mask)
        out = audio_features_varlen(encoder, features, mask.sum(-1), backend="sdpa")
    for i, (got, want) in enumerate(zip(_per_clip(*out), expected)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"clip {i} ({MEL_LENGTHS[i]} frames)")


def test_clip_list_with_context_frames_equals_padded_batch():
    """Clips stored as their valid frames plus CONV_CONTEXT_FRAMES of padding give the same result."""
    encoder = _encoder()
    features, mask = _padded_batch()
    clips = [f[:, : min(n + CONV_CONTEXT_FRAMES, FULL)] for f, n in zip(features, MEL_LENGTHS)]
    with torch.no_grad():
        expected = _masked_reference(encoder, features, mask)
        out = audio_features_varlen(encoder, clips, list(MEL_LENGTHS))
    for got, want in zip(_per_clip(*out), expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_exact_frames_match_for_full_clips_and_differ_only_through_the_conv_context():
    """Without context frames a 3000-frame clip is still exact; a short clip is not (the test sees
    the difference, so it would catch convs reading the wrong neighbour)."""
    encoder = _encoder()
    features, mask = _padded_batch()
    packed = torch.cat([f[:, :n] for f, n in zip(features, MEL_LENGTHS)], dim=1)
    with torch.no_grad():
        expected = _masked_reference(encoder, features, mask)
        got = _per_clip(*audio_features_varlen(encoder, packed, list(MEL_LENGTHS)))
    torch.testing.assert_close(got[2], expected[2], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[0], expected[0], atol=1e-5, rtol=1e-5)


def test_unmasked_padded_encoder_is_not_the_reference():
    """The encoder called without its mask lets valid frames attend to padding: a different result."""
    encoder = _encoder()
    features, mask = _padded_batch()
    with torch.no_grad():
        unmasked = encoder(features).last_hidden_state
        features_out, lengths = audio_features_varlen(encoder, features, mask.sum(-1))
    short = _per_clip(features_out, lengths)[0]
    assert not torch.allclose(short, unmasked[0, : short.shape[0]], atol=1e-3)


def test_output_lengths_follow_the_stock_formula():
    encoder = _encoder()
    features, mask = _padded_batch()
    with torch.no_grad():
        out = audio_features_varlen(encoder, features, mask.sum(-1))
    _, stock = encoder._get_feat_extract_output_lengths(torch.tensor(MEL_LENGTHS))
    assert out.output_lengths.tolist() == stock.tolist() == [9, 25, 750, 113]
    assert out.features.shape == (sum(stock.tolist()), encoder.config.d_model)
    # The Qwen2-Audio processor's <|AUDIO|> placeholder count.
    assert [(((n - 1) // 2 + 1) - 2) // 2 + 1 for n in MEL_LENGTHS] == stock.tolist()
    assert feat_extract_output_lengths(3000) == (1500, 750)


def test_gradients_flow():
    encoder = _encoder().train()
    features, mask = _padded_batch((37, 451))
    features.requires_grad_(True)
    out = audio_features_varlen(encoder, features, mask.sum(-1))
    out.features.square().mean().backward()
    names = ("conv1.weight", "conv2.weight", "layers.0.self_attn.q_proj.weight", "layers.1.fc2.weight", "layer_norm.weight")
    for name in names:
        grad = encoder.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # Only the valid frames and the conv context reach the outputs.
    assert features.grad[0, :, 37 + CONV_CONTEXT_FRAMES :].abs().sum() == 0
    assert features.grad[0, :, :37].abs().sum() > 0


def test_clip_over_the_limit_raises():
    encoder = _encoder()
    assert max_mel_frames(encoder) == FULL
    with pytest.raises(ValueError, match="at most 3000"):
        audio_features_varlen(encoder, [torch.randn(128, 100), torch.randn(128, 3001)])


def test_cost_scales_with_real_frames():
    """The convs see each clip's frames (+ context and a separating gap), the layers its M tokens:
    the sum of per-clip lengths, not 3000 (1500) per clip."""
    encoder = _encoder()
    features, mask = _padded_batch()
    seen = {}
    encoder.conv1.register_forward_hook(lambda m, args, out: seen.__setitem__("conv", args[0].shape[-1]))
    encoder.layers[0].register_forward_hook(lambda m, args, out: seen.__setitem__("layer", args[0].shape))
    with torch.no_grad():
        audio_features_varlen(encoder, features, mask.sum(-1))
    conv_lengths, _ = feat_extract_output_lengths(torch.tensor(MEL_LENGTHS))
    assert seen["layer"] == (1, int(conv_lengths.sum()), encoder.config.d_model)
    assert sum(MEL_LENGTHS) <= seen["conv"] <= sum(MEL_LENGTHS) + 4 * len(MEL_LENGTHS)
    assert seen["conv"] < FULL * len(MEL_LENGTHS)


def test_patched_encoder_keeps_its_stock_forward():
    encoder = _encoder()
    features, mask = _padded_batch((100,))
    with torch.no_grad():
        before = _masked_reference(encoder, features, mask)
        audio_features_varlen(encoder, features, mask.sum(-1))
        after = _masked_reference(encoder, features, mask)
    torch.testing.assert_close(after[0], before[0], atol=0, rtol=0)


@pytest.mark.parametrize("preset", ["tiny_qwen2_audio", "qwen2_audio_7b"])
def test_presets_are_valid_qwen2_audio_configs(preset):
    raw = OmegaConf.load(CONF / f"{preset}.yaml")
    assert raw._target_ == "lmms_engine.models.qwen2_audio.build_qwen2_audio"
    config = Qwen2AudioConfig(**_preset(preset))
    audio = config.audio_config
    assert set(_preset(preset)["audio_config"]) <= set(audio.to_dict())
    assert audio.num_mel_bins == 128 and audio.max_source_positions == 1500
    if preset == "qwen2_audio_7b":
        assert (audio.d_model, audio.encoder_layers, audio.encoder_attention_heads) == (1280, 32, 20)
        assert (config.text_config.hidden_size, config.text_config.vocab_size) == (4096, 156032)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        encoder = _encoder().train()
        if checkpointing:
            encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert all(layer.gradient_checkpointing for layer in encoder.layers)
        features, mask = _padded_batch((37, 100))
        audio_features_varlen(encoder, features, mask.sum(-1)).features.square().mean().backward()
        grads.append(encoder.get_parameter("layers.0.fc1.weight").grad)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)
