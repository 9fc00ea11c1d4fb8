"""Per-sample mrope positions equal transformers' `get_rope_index` on that sample alone; packed
positions are the per-sample ones side by side."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

from lmms_engine.models.mrope import (
    MropeSample,
    MropeSpec,
    mm_token_type_ids,
    mrope_position_ids,
    packed_mrope_position_ids,
)
from lmms_engine.models.qwen2_5_vl import TOKEN_ID_FIELDS, build_vl_tokenizer

PRESET = Path(__file__).resolve().parents[2] / "conf" / "model" / "tiny_qwen2_5_vl.yaml"
MERGE = 2


@pytest.fixture(scope="module")
def tokenizer():
    return build_vl_tokenizer()


@pytest.fixture(scope="module")
def hf_model(tokenizer):
    """A tiny Qwen2_5_VLModel: only its config and get_rope_index are used."""
    values = yaml.safe_load(PRESET.read_text())["config"]
    values.update({field: tokenizer.convert_tokens_to_ids(token) for field, token in TOKEN_ID_FIELDS.items()})
    return Qwen2_5_VLModel(Qwen2_5_VLConfig(**values)).eval()


@pytest.fixture(scope="module")
def spec(hf_model):
    return MropeSpec.from_config(hf_model.config)


# ---------------------------------------------------------------- sample construction


class _SampleWriter:
    """Builds input_ids the way the processor expands them: <vs> pads*n <ve> around each visual."""

    def __init__(self, tokenizer):
        self.ids: list[int] = []
        self.images: list[tuple[int, int, int]] = []
        self.videos: list[tuple[int, int, int]] = []
        self.seconds: list[float] = []
        self.vs, self.ve, self.image_pad, self.video_pad = (
            tokenizer.convert_tokens_to_ids(t)
            for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
        )

    def text(self, count: int) -> _SampleWriter:
        self.ids += [ord("a") + i % 26 for i in range(count)]
        return self

    def image(self, t: int, h: int, w: int) -> _SampleWriter:
        self.images.append((t, h, w))
        self.ids += [self.vs] + [self.image_pad] * (t * h * w // MERGE**2) + [self.ve]
        return self

    def video(self, t: int, h: int, w: int, seconds: float = 1.0) -> _SampleWriter:
        self.videos.append((t, h, w))
        self.seconds.append(seconds)
        self.ids += [self.vs] + [self.video_pad] * (t * h * w // MERGE**2) + [self.ve]
        return self

    def sample(self) -> MropeSample:
        return MropeSample(
            input_ids=np.asarray(self.ids, dtype=np.int64),
            image_grid_thw=np.asarray(self.images, dtype=np.int64).reshape(-1, 3) if self.images else None,
            video_grid_thw=np.asarray(self.videos, dtype=np.int64).reshape(-1, 3) if self.videos else None,
            second_per_grid_ts=np.asarray(self.seconds, dtype=np.float32) if self.seconds else None,
        )


def _samples(tokenizer) -> dict[str, MropeSample]:
    w = functools.partial(_SampleWriter, tokenizer)
    return {
        "text_only": w().text(23).sample(),
        "one_image": w().text(5).image(1, 4, 6).text(7).sample(),
        "two_images": w().text(3).image(1, 4, 6).text(4).image(1, 8, 4).text(2).sample(),
        # temporal ids (step 2 * 1.0 s) outrun the 2x2 spatial grid: text resumes by spatial extent
        "image_and_video": w().text(4).image(1, 6, 4).text(3).video(4, 4, 4, seconds=1.0).text(5).sample(),
        "video_two_seconds_per_grid": w().text(2).video(3, 4, 6, seconds=2.0).text(3).sample(),
        "starts_with_image": w().image(1, 4, 4).text(6).sample(),
        "multi_turn": _multi_turn(w()),
    }


def _multi_turn(writer: _SampleWriter) -> MropeSample:
    writer.text(10)  # system turn
    writer.text(3).image(1, 4, 6).text(6)  # user turn with an image
    writer.text(12)  # assistant turn
    writer.text(6).video(2, 4, 4).image(1, 4, 4).text(4)  # user turn with a video and an image
    writer.text(8)  # assistant turn
    return writer.sample()


# ---------------------------------------------------------------- transformers reference


def _hf_rope_index(model: Qwen2_5_VLModel, sample: MropeSample, spec: MropeSpec):
    """transformers' positions for the sample alone (batch of 1, full attention mask).

    Since transformers 5.3 get_rope_index finds visual tokens through `mm_token_type_ids`
    (required argument) rather than by scanning for vision_start tokens; pass them when it takes them.
    """
    input_ids = torch.from_numpy(sample.input_ids).unsqueeze(0)
    kwargs = {
        "image_grid_thw": _tensor_or_none(sample.image_grid_thw),
        "video_grid_thw": _tensor_or_none(sample.video_grid_thw),
        "second_per_grid_ts": _tensor_or_none(sample.second_per_grid_ts),
        "attention_mask": torch.ones_like(input_ids),
    }
    if "mm_token_type_ids" in inspect.signature(model.get_rope_index).parameters:
        kwargs["mm_token_type_ids"] = torch.from_numpy(mm_token_type_ids(sample.input_ids, spec)).unsqueeze(0)
    with torch.no_grad():
        positions, deltas = model.get_rope_index(input_ids, **kwargs)
    return positions, int(deltas.reshape(-1)[0])


def _tensor_or_none(array):
    return None if array is None else torch.from_numpy(array)


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "name",
    [
        "text_only",
        "one_image",
        "two_images",
        "image_and_video",
        "video_two_seconds_per_grid",
        "starts_with_image",
        "multi_turn",
    ],
)
def test_per_sample_positions_match_transformers(tokenizer, hf_model, spec, name):
    sample = _samples(tokenizer)[name]
    expected, expected_delta = _hf_rope_index(hf_model, sample, spec)
    positions, delta = mrope_position_ids(sample, spec)
    assert positions.shape == (3, len(sample.input_ids))
    assert positions.dtype == np.int64
    np.testing.assert_array_equal(positions, expected[:, 0].numpy())
    assert delta == expected_delta


def test_packed_positions_are_per_sample_positions_side_by_side(tokenizer, hf_model, spec):
    samples = list(_samples(tokenizer).values())
    packed = packed_mrope_position_ids(samples, spec)
    expected = torch.cat([_hf_rope_index(hf_model, s, spec)[0] for s in samples], dim=-1)
    assert packed.shape == (3, 1, sum(len(s.input_ids) for s in samples))
    assert packed.dtype == torch.long
    assert torch.equal(packed, expected)


def test_positions_restart_in_every_sample_of_a_pack(tokenizer, spec):
    samples = [_samples(tokenizer)["one_image"], _samples(tokenizer)["text_only"]]
    packed = packed_mrope_position_ids(samples, spec)
    start = len(samples[0].input_ids)
    assert packed[:, 0, 0].tolist() == [0, 0, 0]
    assert packed[:, 0, start].tolist() == [0, 0, 0]


def test_image_block_positions_by_hand(tokenizer, spec):
    # 3 text tokens, <vs>, a 2x3 merged grid, <ve>, 1 text token
    sample = _SampleWriter(tokenizer).text(3).image(1, 4, 6).text(1).sample()
    positions, delta = mrope_position_ids(sample, spec)
    block = positions[:, 4:10]  # the 6 image tokens; <vs> is text position 3
    assert block[0].tolist() == [4] * 6
    assert block[1].tolist() == [4, 4, 4, 5, 5, 5]
    assert block[2].tolist() == [4, 5, 6, 4, 5, 6]
    assert positions[:, 10].tolist() == [7, 7, 7]  # <ve> resumes at 4 + max(2, 3)
    assert delta == 8 + 1 - len(sample.input_ids)


def test_fractional_seconds_per_grid_floor_after_scaling(tokenizer, spec):
    # tokens_per_second=2 and 0.75 s per grid: temporal steps 0, 1.5, 3, 4.5 -> 0, 1, 3, 4 (as in
    # Qwen's reference code and transformers >= 5.25-dev; 5.17 truncates 0.75 to 0 first).
    sample = _SampleWriter(tokenizer).text(1).video(4, 2, 2, seconds=0.75).sample()
    positions, _ = mrope_position_ids(sample, spec)
    temporal = positions[0, 2:6] - 2  # the video's 4 tokens start at position 2 (after text + <vs>)
    assert temporal.tolist() == [0, 1, 3, 4]


def test_qwen_reference_resumes_text_after_the_largest_position(tokenizer, hf_model):
    sample = _SampleWriter(tokenizer).text(1).video(4, 4, 4, seconds=1.0).text(2).sample()
    spec = MropeSpec.from_config(hf_model.config, resume_text="qwen_reference")
    positions, _ = mrope_position_ids(sample, spec)
    # video tokens start at 2; temporal ids 2, 4, 6, 8; so <ve> gets 9 (transformers 5.x: 2 + 2 = 4)
    after_video = 2 + 16
    assert positions[:, after_video].tolist() == [9, 9, 9]


def test_touching_images_are_split_by_their_grids(tokenizer, spec):
    writer = _SampleWriter(tokenizer).text(2)
    writer.images += [(1, 4, 4), (1, 2, 4)]
    writer.ids += [writer.image_pad] * (4 + 2)  # no <ve><vs> between the two images
    positions, _ = mrope_position_ids(writer.sample(), spec)
    assert positions[:, 2:6].tolist() == [[2, 2, 2, 2], [2, 2, 3, 3], [2, 3, 2, 3]]
    assert positions[:, 6:8].tolist() == [[4, 4], [4, 4], [4, 5]]  # second image starts at 2 + 2


@pytest.mark.parametrize(
    "grids, message",
    [
        ([(1, 4, 6), (1, 4, 4)], "cover only 1"),  # a grid with no placeholders
        ([(1, 4, 8)], "needs 8 placeholder tokens"),  # the run of 6 is too short for its grid
        ([(1, 4, 4)], "no grid left"),  # 4 of the 6 placeholders covered, 2 left over
        ([], "no grid left"),
    ],
)
def test_placeholder_grid_mismatch_is_a_clear_error(tokenizer, spec, grids, message):
    writer = _SampleWriter(tokenizer).text(2).image(1, 4, 6)  # 6 placeholders
    writer.images = grids
    with pytest.raises(ValueError, match=message):
        mrope_position_ids(writer.sample(), spec)


def test_bad_inputs_are_value_errors(tokenizer, spec):
    with pytest.raises(ValueError, match="empty"):
        mrope_position_ids(MropeSample(input_ids=np.zeros(0, dtype=np.int64)), spec)
    with pytest.raises(ValueError, match="1-D"):
        mrope_position_ids(MropeSample(input_ids=np.zeros((2, 3), dtype=np.int64)), spec)
    video = _SampleWriter(tokenizer).video(2, 4, 4).sample()
    with pytest.raises(ValueError, match="one per video"):
        mrope_position_ids(MropeSample(video.input_ids, None, video.video_grid_thw, np.ones(2)), spec)
    with pytest.raises(ValueError, match="resume_text"):
        MropeSpec(1, 2, 2, 2.0, resume_text="nope")
