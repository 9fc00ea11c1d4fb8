"""The tiny Qwen2.5-VL preset: build, processor placeholder expansion, mrope forward parity, packed
forward parity, save / load round trip, vision FLOPs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("torchvision", reason="Qwen2.5-VL processors need torchvision")
Image = pytest.importorskip("PIL.Image", reason="images are PIL images")

from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLDecoderLayer,
    Qwen2_5_VLVisionBlock,
)

from lmms_engine.kernels import attention
from lmms_engine.models.base import ModelBundle
from lmms_engine.models.mrope import (
    MropeSample,
    MropeSpec,
    mm_token_type_ids,
    mrope_position_ids,
    packed_mrope_position_ids,
)
from lmms_engine.models.qwen2_5_vl import (
    build_qwen2_5_vl,
    vl_hidden_states,
    set_text_attention,
)
from lmms_engine.models.qwen2_5_vl.flops import vision_forward_flops, vision_train_flops

PRESETS = Path(__file__).resolve().parents[2] / "conf" / "model"


def _preset(name: str) -> dict:
    values = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
    values.pop("_target_")
    return values


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    torch.manual_seed(0)
    built = build_qwen2_5_vl(**_preset("tiny_qwen2_5_vl"))
    built.model.eval()
    return built


def _image(height: int, width: int, seed: int = 0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _conversation(question: str, answer: str, images: int = 1) -> list[dict]:
    parts = [{"type": "image_url", "image_url": f"img{i}.png"} for i in range(images)]
    return [
        {"role": "user", "content": [*parts, {"type": "text", "text": question}]},
        {"role": "assistant", "content": answer},
    ]


def _encode(bundle: ModelBundle, messages: list[dict], images: list) -> dict:
    text = bundle.tokenizer.apply_chat_template(messages, tokenize=False)
    return bundle.processor(text=[text], images=images, return_tensors="pt")


def _positions(bundle: ModelBundle, inputs: dict) -> torch.Tensor:
    spec = MropeSpec.from_config(bundle.model.config)
    sample = MropeSample(input_ids=inputs["input_ids"][0], image_grid_thw=inputs["image_grid_thw"])
    positions, _ = mrope_position_ids(sample, spec)
    return torch.from_numpy(positions).unsqueeze(1)


def _model_inputs(inputs: dict) -> dict:
    keys = ("input_ids", "pixel_values", "image_grid_thw")
    return {key: inputs[key] for key in keys}


# ---------------------------------------------------------------- build


def test_tiny_preset_builds_a_small_vl_model(bundle):
    config = bundle.model.config
    tokenizer = bundle.tokenizer
    assert isinstance(bundle, ModelBundle) and [e.name for e in bundle.encoders] == ["vision"]
    assert bundle.shard_units == (Qwen2_5_VLDecoderLayer, Qwen2_5_VLVisionBlock)
    assert bundle.processor.tokenizer is tokenizer
    assert 1e6 < sum(p.numel() for p in bundle.model.parameters()) < 10e6
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_config.out_hidden_size == config.text_config.hidden_size
    assert config.text_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_preset_token_id_that_disagrees_with_the_tokenizer_is_rejected():
    values = _preset("tiny_qwen2_5_vl")
    values["config"]["image_token_id"] = 5
    with pytest.raises(ValueError, match="image_token_id=5"):
        build_qwen2_5_vl(**values)


def test_vocab_smaller_than_the_tokenizer_is_rejected():
    values = _preset("tiny_qwen2_5_vl")
    values["config"]["text_config"]["vocab_size"] = 200
    with pytest.raises(ValueError, match="vocab_size is 200"):
        build_qwen2_5_vl(**values)


def test_missing_config_and_checkpoint_is_rejected():
    with pytest.raises(ValueError, match="model.pretrained"):
        build_qwen2_5_vl(name="x")


@pytest.mark.parametrize("name", ["qwen2_5_vl_3b", "qwen2_5_vl_7b"])
def test_published_shapes_build_on_the_meta_device(name):
    with torch.device("meta"):
        built = build_qwen2_5_vl(**_preset(name), structure_only=True)
    billions = sum(p.numel() for p in built.model.parameters()) / 1e9
    assert {"qwen2_5_vl_3b": 3.75, "qwen2_5_vl_7b": 8.29}[name] == pytest.approx(billions, abs=0.02)


# ---------------------------------------------------------------- processor


def test_processor_expands_one_placeholder_to_the_image_tokens(bundle):
    inputs = _encode(bundle, _conversation("What is this?", "A test."), [_image(56, 84)])
    image_token = bundle.model.config.image_token_id
    expected_tokens = (56 // 14) * (84 // 14) // 4
    assert int((inputs["input_ids"] == image_token).sum()) == expected_tokens == 6
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 6]]
    assert tuple(inputs["pixel_values"].shape) == (24, 3 * 2 * 14 * 14)
    text = bundle.tokenizer.decode(inputs["input_ids"][0])
    assert "<|vision_start|>" + "<|image_pad|>" * 6 + "<|vision_end|>What is this?" in text


def test_processor_token_types_match_ours(bundle):
    inputs = _encode(bundle, _conversation("Two?", "Yes.", images=2), [_image(56, 84), _image(84, 56, 1)])
    if "mm_token_type_ids" not in inputs:
        pytest.skip("this transformers' processor does not return mm_token_type_ids")
    ours = mm_token_type_ids(inputs["input_ids"][0], MropeSpec.from_config(bundle.model.config))
    np.testing.assert_array_equal(inputs["mm_token_type_ids"][0].numpy(), ours)


# ---------------------------------------------------------------- forward


def test_our_positions_give_the_models_own_logits(bundle):
    inputs = _encode(bundle, _conversation("What is this?", "A test."), [_image(56, 84)])
    spec = MropeSpec.from_config(bundle.model.config)
    types = torch.from_numpy(mm_token_type_ids(inputs["input_ids"][0], spec)).unsqueeze(0)
    positions = _positions(bundle, inputs)
    with torch.no_grad():
        own = bundle.model(**_model_inputs(inputs), mm_token_type_ids=types).logits
        ours = bundle.model(**_model_inputs(inputs), position_ids=positions).logits
        flat = bundle.model(**_model_inputs(inputs), position_ids=torch.arange(positions.shape[-1])[None]).logits
    assert torch.equal(own, ours)
    assert not torch.allclose(own, flat)  # 1-D positions are different: the 3-D ones are really used


def test_packed_samples_give_their_unpacked_logits(bundle):
    """Two samples in one row: causal packed attention in the decoder, the vision tower untouched."""
    model = copy.deepcopy(bundle.model)
    samples = [
        _encode(bundle, _conversation("What is this?", "A test."), [_image(56, 84)]),
        _encode(bundle, _conversation("And these two?", "Also tests.", images=2), [_image(84, 56, 1), _image(56, 56, 2)]),
    ]
    with torch.no_grad():
        unpacked = [model(**_model_inputs(s), position_ids=_positions(bundle, s)).logits[0] for s in samples]
    lengths = [s["input_ids"].shape[1] for s in samples]
    cu_seqlens = torch.tensor([0, lengths[0], sum(lengths)], dtype=torch.int32)
    spec = MropeSpec.from_config(model.config)
    positions = packed_mrope_position_ids(
        [MropeSample(s["input_ids"][0], s["image_grid_thw"]) for s in samples], spec
    )
    set_text_attention(model, attention.register("sdpa"))
    with torch.no_grad():
        hidden = vl_hidden_states(
            model,
            input_ids=torch.cat([s["input_ids"] for s in samples], dim=1),
            position_ids=positions,
            pixel_values=torch.cat([s["pixel_values"] for s in samples]),
            image_grid_thw=torch.cat([s["image_grid_thw"] for s in samples]),
            **attention.varlen_kwargs(cu_seqlens, max(lengths), "sdpa"),
        )
        packed = model.lm_head(hidden)[0]
    torch.testing.assert_close(packed, torch.cat(unpacked), rtol=1e-5, atol=1e-5)


def test_packed_forward_rejects_grids_that_do_not_fit_the_placeholders(bundle):
    inputs = _encode(bundle, _conversation("What is this?", "A test."), [_image(56, 84)])
    with pytest.raises(ValueError, match="6 image placeholder tokens"):
        vl_hidden_states(
            bundle.model,
            input_ids=inputs["input_ids"],
            position_ids=_positions(bundle, inputs),
            pixel_values=torch.zeros(16, inputs["pixel_values"].shape[1]),
            image_grid_thw=torch.tensor([[1, 4, 4]]),
        )


# ---------------------------------------------------------------- save / load


def test_save_and_load_round_trip_model_and_processor(bundle, tmp_path):
    bundle.model.save_pretrained(tmp_path)
    bundle.processor.save_pretrained(tmp_path)
    loaded = build_qwen2_5_vl(name="reloaded", pretrained=str(tmp_path))
    loaded.model.eval()
    messages, images = _conversation("What is this?", "A test."), [_image(56, 84)]
    before, after = _encode(bundle, messages, images), _encode(loaded, messages, images)
    assert type(loaded.processor) is type(bundle.processor)
    assert loaded.tokenizer.get_vocab() == bundle.tokenizer.get_vocab()
    assert loaded.tokenizer.chat_template == bundle.tokenizer.chat_template
    for key in ("input_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(before[key], after[key]), key
    with torch.no_grad():
        logits_before = bundle.model(**_model_inputs(before), position_ids=_positions(bundle, before)).logits
        logits_after = loaded.model(**_model_inputs(after), position_ids=_positions(loaded, after)).logits
    assert torch.equal(logits_before, logits_after)


# ---------------------------------------------------------------- vision FLOPs


@pytest.mark.parametrize("grid", [(1, 4, 6), (1, 8, 8), (2, 6, 4)])
def test_vision_flops_formula_matches_counted_matmuls(bundle, grid):
    from torch.utils.flop_counter import FlopCounterMode

    visual = copy.deepcopy(bundle.model.model.visual)
    visual.set_attn_implementation("eager")  # plain matmuls, which the counter sees
    config = visual.config
    patch_dim = config.in_channels * config.temporal_patch_size * config.patch_size**2
    pixels = torch.randn(grid[0] * grid[1] * grid[2], patch_dim)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        visual(pixels, grid_thw=torch.tensor([grid]))
    assert vision_forward_flops(config, grid) == counter.get_total_flops()


def test_vision_train_flops_scale_with_training(bundle):
    config = bundle.model.config.vision_config
    grids = [(1, 4, 6), (2, 4, 4)]
    forward = sum(vision_forward_flops(config, g) for g in grids)
    assert vision_train_flops(config, grids) == 3 * forward
    assert vision_train_flops(config, grids, trainable=False) == forward
    with pytest.raises(ValueError, match="divisible"):
        vision_forward_flops(config, (1, 3, 4))
