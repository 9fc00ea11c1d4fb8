"""The tiny Qwen2-Audio preset: build, processor placeholder expansion, packed rmpad forward equal to
transformers' own padded forward, the dummy encoder call, save / load round trip, audio FLOPs,
kernel patcher and Liger registry."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
from transformers.models.qwen2_audio.modeling_qwen2_audio import Qwen2AudioEncoderLayer

from lmms_engine.kernels import attention
from lmms_engine.kernels.patcher import KernelPatcher
from lmms_engine.models.base import ModelBundle
from lmms_engine.models.qwen2_audio.encoder import CONV_CONTEXT_FRAMES
from lmms_engine.models.qwen2_audio.flops import (
    audio_encoder_forward_flops,
    audio_projector_forward_flops,
    audio_train_flops,
)
from lmms_engine.models.flops import train_flops
from lmms_engine.models.qwen2_audio import (
    audio_hidden_states,
    build_qwen2_audio,
    placeholder_count,
)

PRESETS = Path(__file__).resolve().parents[2] / "conf" / "model"
SAMPLING_RATE = 16000
HOP = 160  # samples per mel frame: 100 frames/s


def _preset(name: str) -> dict:
    values = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
    values.pop("_target_")
    return values


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    torch.manual_seed(0)
    built = build_qwen2_audio(**_preset("tiny_qwen2_audio"))
    built.model.eval()
    for encoder in built.encoders:  # the rmpad encoder's varlen attention (KernelPatcher.apply does this in a run)
        encoder.patch_kernels(built.model, torch.device("cpu"))
    return built


@pytest.fixture(scope="module")
def audible_model(bundle):
    """The tiny model with the audio encoder and projector weights far above the 0.02 init, so the
    audio path shapes the logits well above round-off (a wrong boundary would show)."""
    model = copy.deepcopy(bundle.model)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1 and (".audio_tower." in name or ".multi_modal_projector." in name):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model


def _clip(seconds: float, seed: int) -> np.ndarray:
    samples = int(seconds * SAMPLING_RATE)
    return (0.1 * np.random.default_rng(seed).standard_normal(samples)).astype(np.float32)


def _conversation(question: str, answer: str, clips: int = 1) -> list[dict]:
    audio = [{"type": "audio_url", "audio_url": {"url": f"clip{i}.wav"}} for i in range(clips)]
    return [
        {"role": "user", "content": [*audio, {"type": "text", "text": question}]},
        {"role": "assistant", "content": answer},
    ]


def _encode(bundle: ModelBundle, messages: list[dict], clips: list[np.ndarray]) -> dict:
    text = bundle.processor.apply_chat_template(messages, tokenize=False)
    return bundle.processor(text=[text], audio=clips, sampling_rate=SAMPLING_RATE, return_tensors="pt")


def _packed_audio(samples: list[dict]) -> dict:
    """The data side's batch contract: each clip cut to min(L + 2, 3000) frames, concatenated."""
    features, frames, lengths = [], [], []
    for sample in samples:
        for clip, valid in zip(sample["input_features"], sample["feature_attention_mask"].sum(-1).tolist()):
            keep = min(valid + CONV_CONTEXT_FRAMES, clip.shape[-1])
            features.append(clip[:, :keep])
            frames.append(keep)
            lengths.append(valid)
    return {
        "audio_features": torch.cat(features, dim=1),
        "audio_frames": torch.tensor(frames),
        "audio_lengths": torch.tensor(lengths),
    }


def _stock_logits(model, sample: dict) -> torch.Tensor:
    keys = ("input_ids", "attention_mask", "input_features", "feature_attention_mask")
    return model(**{key: sample[key] for key in keys}).logits[0]


def _packed_row(bundle: ModelBundle, samples: list[dict]) -> dict:
    lengths = [s["input_ids"].shape[1] for s in samples]
    cu_seqlens = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32)
    return {
        "input_ids": torch.cat([s["input_ids"] for s in samples], dim=1),
        "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
        **_packed_audio(samples),
        **attention.varlen_kwargs(cu_seqlens, max(lengths), "sdpa"),
    }


# ---------------------------------------------------------------- build


def test_tiny_preset_builds_a_small_audio_model(bundle):
    config, tokenizer = bundle.model.config, bundle.tokenizer
    assert isinstance(bundle, ModelBundle) and [e.name for e in bundle.encoders] == ["audio"]
    assert bundle.shard_units == (Qwen2DecoderLayer, Qwen2AudioEncoderLayer)
    assert bundle.encoder_units == (Qwen2AudioEncoderLayer,)
    assert bundle.processor.tokenizer is tokenizer
    assert bundle.data_inputs() == {"processor": bundle.processor}
    assert bundle.artifacts() is bundle.processor
    assert {"audio_features", "audio_frames", "audio_lengths"} < set(bundle.input_keys)
    assert 1e6 < sum(p.numel() for p in bundle.model.parameters()) < 10e6
    assert config.audio_token_index == tokenizer.convert_tokens_to_ids("<|AUDIO|>") == bundle.processor.audio_token_id
    assert len(tokenizer) <= config.text_config.vocab_size
    assert config.text_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert bundle.processor.feature_extractor.feature_size == config.audio_config.num_mel_bins
    assert bundle.model.lm_head.weight.shape == (config.text_config.vocab_size, config.text_config.hidden_size)


def test_components_name_the_models_parameters(bundle):
    names = [name for name, _ in bundle.model.named_parameters()]
    for component, prefixes in bundle.components().items():
        assert any(name.startswith(prefixes) for name in names), component
    assert any(name.startswith("model.language_model.") for name in names)


def test_preset_audio_token_id_that_disagrees_with_the_tokenizer_is_rejected():
    values = _preset("tiny_qwen2_audio")
    values["config"]["audio_token_index"] = 5
    with pytest.raises(ValueError, match="audio_token_index=5"):
        build_qwen2_audio(**values)


def test_vocab_smaller_than_the_tokenizer_is_rejected():
    values = _preset("tiny_qwen2_audio")
    values["config"]["text_config"]["vocab_size"] = 200
    with pytest.raises(ValueError, match="vocab_size is 200"):
        build_qwen2_audio(**values)


def test_tied_embeddings_are_rejected():
    values = _preset("tiny_qwen2_audio")
    values["config"]["text_config"]["tie_word_embeddings"] = True
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        build_qwen2_audio(**values)


def test_missing_config_and_checkpoint_is_rejected():
    with pytest.raises(ValueError, match="model.pretrained"):
        build_qwen2_audio(name="x")


def test_published_shape_builds_on_the_meta_device():
    with torch.device("meta"):
        built = build_qwen2_audio(**_preset("qwen2_audio_7b"), structure_only=True)
    billions = sum(p.numel() for p in built.model.parameters()) / 1e9
    assert billions == pytest.approx(8.40, abs=0.01)


# ---------------------------------------------------------------- processor


def test_processor_expands_a_3s_clip_to_the_formulas_placeholders(bundle):
    inputs = _encode(bundle, _conversation("What is this?", "A sound."), [_clip(3.0, 0)])
    valid = int(inputs["feature_attention_mask"].sum())
    assert valid == 3 * SAMPLING_RATE // HOP == 300
    assert tuple(inputs["input_features"].shape) == (1, 128, 3000)
    count = int((inputs["input_ids"] == bundle.model.config.audio_token_index).sum())
    assert count == placeholder_count(valid) == 75  # 300 -> 150 (conv2) -> 75 (avg pool)
    text = bundle.tokenizer.decode(inputs["input_ids"][0])
    assert "<|audio_bos|>" + "<|AUDIO|>" * 75 + "<|audio_eos|>What is this?" in text


def test_chat_template_renders_audio_aliases_and_plain_text(bundle):
    part = {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "hi"}]}
    text = bundle.processor.apply_chat_template([part, {"role": "assistant", "content": "ok"}], tokenize=False)
    assert text == "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>hi<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
    assert bundle.tokenizer.chat_template == bundle.processor.chat_template


# ---------------------------------------------------------------- forward


def test_packed_clips_give_the_stock_padded_logits(bundle, audible_model):
    """Two samples (one clip, two clips; three lengths) packed in one row with the packed sdpa
    decoder and the rmpad encoder equal transformers' padded forward on each sample alone."""
    samples = [
        _encode(bundle, _conversation("What is this?", "A sound."), [_clip(3.0, 0)]),
        _encode(bundle, _conversation("And these?", "Two more.", clips=2), [_clip(1.37, 1), _clip(0.5, 2)]),
    ]
    with torch.no_grad():
        stock = torch.cat([_stock_logits(audible_model, s) for s in samples])
    model = copy.deepcopy(audible_model)
    KernelPatcher(use_rmpad=True, attn_backend="sdpa").apply(model, torch.device("cpu"), padding_free=True, encoders=bundle.encoders,
          decoder_path=bundle.decoder_path)
    row = _packed_row(bundle, samples)
    assert row["audio_lengths"].tolist() == [300, 137, 50]
    with torch.no_grad():
        packed = model.lm_head(audio_hidden_states(model, **row))[0]
        silent = model.lm_head(audio_hidden_states(model, **{**row, "audio_features": 0 * row["audio_features"]}))[0]
    torch.testing.assert_close(packed, stock, rtol=1e-5, atol=1e-5)
    assert (silent - stock).abs().max() > 1e-2  # the audio really shapes the logits


def test_padded_batch_with_attention_mask_gives_the_stock_logits(bundle, audible_model):
    """Unpacked rows (attention_mask, no cu_seqlens) through the same function."""
    sample = _encode(bundle, _conversation("What is this?", "A sound."), [_clip(1.37, 1)])
    with torch.no_grad():
        stock = _stock_logits(audible_model, sample)
        ours = audio_hidden_states(
            audible_model,
            input_ids=sample["input_ids"],
            position_ids=torch.arange(sample["input_ids"].shape[1])[None],
            attention_mask=sample["attention_mask"],
            **_packed_audio([sample]),
        )
    torch.testing.assert_close(audible_model.lm_head(ours)[0], stock, rtol=1e-5, atol=1e-5)


def test_features_that_do_not_fit_the_placeholders_are_rejected(bundle):
    sample = _encode(bundle, _conversation("What is this?", "A sound."), [_clip(3.0, 0)])
    audio = _packed_audio([sample])
    audio["audio_lengths"] = torch.tensor([200])  # 50 features for 75 placeholders
    with pytest.raises(ValueError, match="75 <\\|AUDIO\\|> placeholder tokens but the audio encoder made 50"):
        audio_hidden_states(
            bundle.model, input_ids=sample["input_ids"], position_ids=torch.arange(sample["input_ids"].shape[1])[None],
            **audio,
        )


def test_text_only_batch_runs_the_encoder_once_and_equals_the_language_model(bundle):
    model = copy.deepcopy(bundle.model)
    calls = []
    for layer in model.model.audio_tower.layers:
        layer.register_forward_hook(lambda *args: calls.append(1))
    ids = bundle.tokenizer("<|im_start|>user\nhello<|im_end|>\n", return_tensors="pt")["input_ids"]
    positions = torch.arange(ids.shape[1])[None]
    hidden = audio_hidden_states(model, input_ids=ids, position_ids=positions)
    assert len(calls) == len(model.model.audio_tower.layers)  # each layer once: one encoder call
    with torch.no_grad():
        text_only = model.model.language_model(input_ids=ids, position_ids=positions).last_hidden_state
    torch.testing.assert_close(hidden.detach(), text_only, rtol=0, atol=0)
    hidden.sum().backward()  # zero gradients reach the encoder and projector: no rank skips them
    for name in ("audio_tower.layers.0.fc1.weight", "multi_modal_projector.linear.weight"):
        grad = model.model.get_parameter(name).grad
        assert grad is not None and not grad.any(), name


# ---------------------------------------------------------------- save / load


def test_save_and_load_round_trip_model_and_processor(bundle, tmp_path):
    bundle.model.save_pretrained(tmp_path)
    bundle.processor.save_pretrained(tmp_path)
    loaded = build_qwen2_audio(name="reloaded", pretrained=str(tmp_path))
    loaded.model.eval()
    messages, clips = _conversation("What is this?", "A sound."), [_clip(1.37, 1)]
    before, after = _encode(bundle, messages, clips), _encode(loaded, messages, clips)
    assert type(loaded.processor) is type(bundle.processor)
    assert loaded.tokenizer.get_vocab() == bundle.tokenizer.get_vocab()
    assert loaded.processor.chat_template == bundle.processor.chat_template
    for key in ("input_ids", "input_features", "feature_attention_mask"):
        assert torch.equal(before[key], after[key]), key
    with torch.no_grad():
        assert torch.equal(_stock_logits(bundle.model, before), _stock_logits(loaded.model, after))


# ---------------------------------------------------------------- FLOPs


def test_audio_flops_formula_matches_counted_matmuls(bundle):
    """A 30 s clip through the stock encoder (every frame valid, eager attention: plain matmuls the
    counter sees) and the projector."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(bundle.model)
    encoder = model.model.audio_tower
    encoder.set_attn_implementation("eager")
    config = model.config
    features = torch.randn(1, config.audio_config.num_mel_bins, 3000)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.model.multi_modal_projector(encoder(features).last_hidden_state)
    expected = audio_encoder_forward_flops(config.audio_config, 3000) + audio_projector_forward_flops(
        config.audio_config, config.text_config.hidden_size, 3000
    )
    assert expected == counter.get_total_flops()


@pytest.mark.parametrize("valid", [137, 300])
def test_rmpad_encoder_costs_the_formula_plus_little_overhead(bundle, valid):
    """The rmpad encoder computes a clip's valid frames plus a few context / gap frames, not 30 s."""
    from torch.utils.flop_counter import FlopCounterMode

    from lmms_engine.models.qwen2_audio.encoder import audio_features_varlen

    encoder = bundle.model.model.audio_tower
    clip = torch.randn(encoder.num_mel_bins, valid + CONV_CONTEXT_FRAMES)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        audio_features_varlen(encoder, [clip], [valid], backend="sdpa")
    formula = audio_encoder_forward_flops(bundle.model.config.audio_config, valid)
    assert formula <= counter.get_total_flops() <= 1.01 * formula


def test_step_flops_add_the_audio_work_by_what_is_trained(bundle):
    model = copy.deepcopy(bundle.model)
    built = dataclasses.replace(bundle, model=model)
    audio, text_config = model.config.audio_config, model.config.text_config
    batch = {"doc_lengths": [120, 80], "audio_lengths": torch.tensor([300, 137])}
    decoder = train_flops(text_config, [120, 80])
    encoder = sum(audio_encoder_forward_flops(audio, n) for n in (300, 137))
    projector = sum(audio_projector_forward_flops(audio, text_config.hidden_size, n) for n in (300, 137))
    assert built.step_flops({"doc_lengths": [120, 80]}) == decoder
    assert built.step_flops(batch) == decoder + 3 * encoder + 3 * projector
    model.model.audio_tower.requires_grad_(False)
    assert built.step_flops(batch) == decoder + encoder + 2 * projector
    model.model.multi_modal_projector.requires_grad_(False)
    assert built.step_flops(batch) == decoder + encoder + projector
    assert audio_train_flops(audio, text_config.hidden_size, [300, 137]) == 3 * (encoder + projector)


# ---------------------------------------------------------------- kernels


def test_patcher_gives_the_decoder_the_packed_backend_and_leaves_the_encoder_bidirectional(bundle):
    model = copy.deepcopy(bundle.model)
    KernelPatcher(use_rmpad=True, attn_backend="sdpa").apply(model, torch.device("cpu"), padding_free=True, encoders=bundle.encoders,
          decoder_path=bundle.decoder_path)
    assert [e.module_path for e in bundle.encoders] == ["model.audio_tower"]
    assert model.model.language_model.config._attn_implementation == attention.register("sdpa")
    assert model.model.audio_tower.config._attn_implementation == "sdpa"


def test_liger_registry_patches_the_decoder_only(bundle, monkeypatch):
    pytest.importorskip("liger_kernel")
    from transformers.models.qwen2 import modeling_qwen2

    from lmms_engine.kernels.liger import LIGER_REGISTRY

    # The rope swap is module-level: restored after the test so later CPU tests run the stock one.
    monkeypatch.setattr(modeling_qwen2, "apply_rotary_pos_emb", modeling_qwen2.apply_rotary_pos_emb)
    model = copy.deepcopy(bundle.model)
    (summary,) = LIGER_REGISTRY["qwen2_audio"](model)
    layers = len(model.model.language_model.layers)
    assert f"{2 * layers + 1} RMSNorm, {layers} SwiGLU" in summary
    assert "forward" in vars(model.model.language_model.norm)
    assert modeling_qwen2.apply_rotary_pos_emb.__name__ == "liger_rotary_pos_emb"
    assert not any("forward" in vars(m) for m in model.model.audio_tower.modules() if isinstance(m, torch.nn.LayerNorm))
