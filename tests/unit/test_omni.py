"""The omni model (Qwen2.5-VL + Qwen2-Audio encoder): tiny preset build, processor placeholder
expansion, one vision and one audio-encoder call per packed micro-batch, packed = padded loss, save /
load through transformers' Auto classes, building from saved Qwen2.5-VL and Qwen2-Audio parts,
FLOPs, kernel patcher and Liger registry."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("torchvision", reason="Qwen2.5-VL processors need torchvision")
Image = pytest.importorskip("PIL.Image", reason="images are PIL images")

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from lmms_engine.kernels import attention
from lmms_engine.kernels.loss import cross_entropy_sum
from lmms_engine.kernels.patcher import KernelPatcher
from lmms_engine.models.base import ModelBundle
from lmms_engine.models.qwen2_audio.flops import audio_train_flops
from lmms_engine.models.omni import LmmsOmniForConditionalGeneration, build_omni
from lmms_engine.models.qwen2_5_vl import build_qwen2_5_vl
from lmms_engine.models.qwen2_audio import build_qwen2_audio
from lmms_engine.models.qwen2_5_vl.flops import vision_train_flops
from lmms_engine.models.flops import train_flops
from lmms_engine.train.module import CausalLMWithLoss

PRESETS = Path(__file__).resolve().parents[2] / "conf" / "model"
SAMPLING_RATE = 16000


def _preset(name: str) -> dict:
    values = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
    values.pop("_target_")
    return values


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    torch.manual_seed(0)
    return build_omni(**_preset("tiny_omni"))


def _image() -> Image.Image:
    return Image.fromarray(np.full((56, 84, 3), 200, dtype=np.uint8))


def _tone(seconds: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * 440 * np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE).astype(np.float32)


def _processor_inputs(processor) -> dict:
    parts = [{"type": "image_url", "image_url": "x.png"}, {"type": "audio_url", "audio_url": "x.wav"}]
    messages = [{"role": "user", "content": [*parts, {"type": "text", "text": "What is it?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return processor(text=[text], images=[_image()], audio=[_tone()], sampling_rate=SAMPLING_RATE, return_tensors="pt")


def test_tiny_preset_builds_with_the_qwen2_5_vl_layout(bundle):
    model, config = bundle.model, bundle.model.config
    assert isinstance(model, LmmsOmniForConditionalGeneration) and config.model_type == "lmms_omni"
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied, as the VL preset
    assert len(bundle.tokenizer) <= config.vl_config.text_config.vocab_size
    assert config.audio_token_id == bundle.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert config.vl_config.image_token_id == bundle.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.model.audio_projector.weight.shape == (256, 64)
    names = {name.split(".")[1] for name, _ in model.named_parameters() if name.startswith("model.")}
    assert names == {"visual", "language_model", "audio_tower", "audio_projector"}


def test_processor_renders_and_expands_image_and_audio_placeholders(bundle):
    processor = bundle.processor
    inputs = _processor_inputs(processor)
    ids = inputs["input_ids"][0]
    grid = inputs["image_grid_thw"][0]
    assert int((ids == processor.image_token_id).sum()) == int(grid.prod()) // 4
    mel_length = int(inputs["feature_attention_mask"].sum())
    assert mel_length == 100  # 1 s at 100 frames/s
    assert int((ids == processor.audio_token_id).sum()) == ((mel_length - 1) // 2 + 1 - 2) // 2 + 1
    text = bundle.tokenizer.decode(ids)
    assert "<|vision_start|><|image_pad|>" in text and "<|audio_bos|><|AUDIO|>" in text


def _demo_datasets(bundle, cache_dir) -> dict:
    from lmms_engine.data.dataset import build_sft_dataset
    from lmms_engine.data.settings import DataSettings
    from lmms_engine.train.resolvers import demo_data

    return {
        packing: build_sft_dataset(bundle.tokenizer, DataSettings(demo_data("demo_omni.yaml"), packing=packing,
                                                              packing_length=2048, cache_dir=cache_dir, num_proc=1),
                                   **bundle.data_inputs())
        for packing in (True, False)
    }


def _mixed_pack(bundle, dataset) -> list[int]:
    """A pack with an image sample, an audio sample and a text-only sample."""
    image_id, audio_id = bundle.processor.image_token_id, bundle.processor.audio_token_id
    for pack in dataset.micro_batches(0):
        batch = dataset.collate(pack)
        if batch.pixel_values is None or batch.audio_features is None:
            continue
        bounds = batch.cu_seqlens.tolist()
        docs = [batch.input_ids[0, a:b] for a, b in zip(bounds, bounds[1:])]
        if any(not ((doc == image_id) | (doc == audio_id)).any() for doc in docs):
            return pack
    raise AssertionError("no demo pack mixes image, audio and text samples")


@pytest.fixture(scope="module")
def demo(bundle, tmp_path_factory):
    datasets = _demo_datasets(bundle, tmp_path_factory.mktemp("omni_cache"))
    return datasets, _mixed_pack(bundle, datasets[True])


def test_packed_mixed_micro_batch_calls_each_tower_once_and_trains(bundle, demo):
    datasets, pack = demo
    model = copy.deepcopy(bundle.model)
    patcher = KernelPatcher(use_rmpad=True, attn_backend="sdpa")
    patcher.apply(model, torch.device("cpu"), padding_free=True, encoders=bundle.encoders,
          decoder_path=bundle.decoder_path)
    # The rmpad audio encoder calls its modules, not itself: its conv1 runs once per encoder call.
    calls = {"visual": 0, "audio": 0}
    for name, part in (("visual", model.model.visual), ("audio", model.model.audio_tower.conv1)):
        part.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    module = CausalLMWithLoss(model, cross_entropy_sum, bundle.hidden_states)
    batch = datasets[True].collate(pack)
    inputs = batch.model_inputs(bundle.input_keys)
    inputs.update(patcher.attention_kwargs(batch))
    loss = module(labels=batch.labels, **inputs) / batch.num_label_tokens
    loss.backward()
    assert calls == {"visual": 1, "audio": 1}
    assert torch.isfinite(loss)
    for part in (model.model.visual, model.model.audio_tower, model.model.audio_projector):
        assert any(float(p.grad.abs().max()) > 0 for p in part.parameters())


def test_text_only_micro_batch_runs_both_dummies_once(bundle):
    model = copy.deepcopy(bundle.model)
    calls = []
    for part in (model.model.visual, model.model.audio_tower.conv1):  # conv1: once per rmpad encoder call
        part.register_forward_hook(lambda module, *_: calls.append(type(module).__name__))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    module = CausalLMWithLoss(model, cross_entropy_sum, bundle.hidden_states)
    loss = module(labels=torch.roll(ids, -1), input_ids=ids, position_ids=torch.arange(5).view(1, 1, 5).expand(3, 1, 5))
    loss.backward()
    assert sorted(calls) == ["Conv1d", "Qwen2_5_VisionTransformerPretrainedModel"]
    grads = [p.grad for p in (*model.model.visual.parameters(), *model.model.audio_projector.parameters())]
    assert all(g is not None and float(g.abs().max()) == 0.0 for g in grads)


def test_packed_and_padded_omni_batches_give_the_same_loss(bundle, demo):
    """The same image, audio and text samples packed (sdpa per document, mrope ids restarting per
    sample) and padded (attention mask): fp32, 1e-5."""
    datasets, pack = demo
    model = copy.deepcopy(bundle.model)
    losses = {}
    for packing, dataset in datasets.items():
        patcher = KernelPatcher(use_rmpad=True, attn_backend="sdpa") if packing else KernelPatcher()
        patcher.apply(model, torch.device("cpu"), padding_free=packing, encoders=bundle.encoders,
          decoder_path=bundle.decoder_path)
        module = CausalLMWithLoss(model, cross_entropy_sum, bundle.hidden_states)
        batch = dataset.collate(pack)
        inputs = batch.model_inputs(bundle.input_keys)
        inputs.update(patcher.attention_kwargs(batch))
        with torch.no_grad():
            losses[packing] = module(labels=batch.labels, **inputs) / batch.num_label_tokens
    assert batch.pixel_values is not None and batch.audio_features is not None
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-5, atol=1e-5)


def test_save_and_load_through_the_auto_classes(bundle, tmp_path):
    bundle.model.save_pretrained(tmp_path)
    bundle.processor.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "lmms_omni"
    processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(processor).__name__ == "LmmsOmniProcessor"
    inputs = _processor_inputs(processor)
    torch.testing.assert_close(inputs["input_ids"], _processor_inputs(bundle.processor)["input_ids"])
    with torch.no_grad():
        expected = bundle.model(**inputs).logits
        for auto_class in (AutoModelForCausalLM, AutoModelForImageTextToText):
            loaded = auto_class.from_pretrained(tmp_path)
            assert isinstance(loaded, LmmsOmniForConditionalGeneration)
            torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=0, atol=0)
    rebuilt = build_omni("again", pretrained=str(tmp_path))
    torch.testing.assert_close(rebuilt.model.lm_head.weight, bundle.model.lm_head.weight, rtol=0, atol=0)


def test_builds_from_saved_qwen2_5_vl_and_qwen2_audio_parts(tmp_path):
    torch.manual_seed(1)
    vl_part = build_qwen2_5_vl(**_preset("tiny_qwen2_5_vl"))
    audio_part = build_qwen2_audio(**_preset("tiny_qwen2_audio"))
    for part, folder in ((vl_part, tmp_path / "vl"), (audio_part, tmp_path / "audio")):
        part.model.save_pretrained(folder)
        part.processor.save_pretrained(folder)
    built = build_omni("parts", vision_lm=str(tmp_path / "vl"), audio_encoder=str(tmp_path / "audio"))
    model = built.model
    torch.testing.assert_close(model.model.visual.blocks[0].attn.qkv.weight,
                               vl_part.model.model.visual.blocks[0].attn.qkv.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.lm_head.weight, vl_part.model.lm_head.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.model.language_model.layers[1].mlp.up_proj.weight,
                               vl_part.model.model.language_model.layers[1].mlp.up_proj.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.model.audio_tower.layers[1].fc1.weight,
                               audio_part.model.model.audio_tower.layers[1].fc1.weight, rtol=0, atol=0)
    assert model.config.audio_token_id == built.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert model.config.vl_config.image_token_id == vl_part.model.config.image_token_id
    inputs = _processor_inputs(built.processor)  # the built-in VL template became the omni one
    assert int((inputs["input_ids"] == model.config.vl_config.image_token_id).sum()) > 0
    assert int((inputs["input_ids"] == model.config.audio_token_id).sum()) > 0
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_parts_must_come_together(tmp_path):
    with pytest.raises(ValueError, match="needs both model.vision_lm"):
        build_omni("half", vision_lm=str(tmp_path))


def test_step_flops_add_vision_and_audio_work(bundle):
    config = bundle.model.config
    grids = torch.tensor([[1, 4, 6]])
    batch = {"doc_lengths": [30, 50], "image_grid_thw": grids, "audio_lengths": torch.tensor([300, 137])}
    text = train_flops(config.vl_config.text_config, [30, 50])
    vision = vision_train_flops(config.vl_config.vision_config, grids.tolist())
    sound = audio_train_flops(config.audio_config, 256, [300, 137])
    assert bundle.step_flops(batch) == pytest.approx(text + vision + sound)
    assert bundle.step_flops({"doc_lengths": [30, 50]}) == pytest.approx(text)


def test_components_shard_units_and_data_inputs(bundle):
    from lmms_engine.train.optim import component_of

    components = bundle.components()
    assert component_of("lm.model.audio_tower.layers.0.fc1.weight", components) == "audio"
    assert component_of("lm.model.audio_projector.weight", components) == "projector"
    assert component_of("lm.model.visual.merger.mlp.0.weight", components) == "merger"
    assert component_of("lm.model.visual.blocks.0.attn.qkv.weight", components) == "vision"
    assert component_of("lm.model.language_model.layers.0.mlp.up_proj.weight", components) == "lm"
    assert {cls.__name__ for cls in bundle.encoder_units} == {"Qwen2_5_VLVisionBlock", "Qwen2AudioEncoderLayer"}
    assert len(bundle.shard_units) == 3
    inputs = bundle.data_inputs()
    assert inputs["processor"] is bundle.processor
    assert inputs["mrope_spec"].image_token_id == bundle.model.config.vl_config.image_token_id


def test_patcher_keeps_packed_causal_attention_out_of_both_encoders(bundle):
    model = copy.deepcopy(bundle.model)
    KernelPatcher(use_rmpad=True, attn_backend="sdpa").apply(model, torch.device("cpu"), padding_free=True, encoders=bundle.encoders,
          decoder_path=bundle.decoder_path)
    assert [e.module_path for e in bundle.encoders] == ["model.visual", "model.audio_tower"]
    assert model.model.language_model.config._attn_implementation == attention.register("sdpa")
    assert model.model.visual.config._attn_implementation == "sdpa"
    assert model.model.audio_tower.config._attn_implementation == "sdpa"


def test_liger_registry_patches_the_vl_part_only(bundle, monkeypatch):
    pytest.importorskip("liger_kernel")
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as modeling

    from lmms_engine.kernels.liger import LIGER_REGISTRY

    # The rope swap is module-level: restored after the test so later CPU tests run the stock one.
    for name in ("apply_rotary_pos_emb", "apply_multimodal_rotary_pos_emb"):
        if hasattr(modeling, name):
            monkeypatch.setattr(modeling, name, getattr(modeling, name))
    model = copy.deepcopy(bundle.model)
    (summary,) = LIGER_REGISTRY["lmms_omni"](model)
    assert summary.startswith("lmms_omni: qwen2_5_vl")
    assert "forward" in vars(model.model.language_model.norm)
    assert "forward" in vars(model.model.visual.blocks[0].norm1)
    assert not any("forward" in vars(m) for m in model.model.audio_tower.modules() if isinstance(m, torch.nn.LayerNorm))
