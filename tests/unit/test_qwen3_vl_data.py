"""Qwen3-VL through the SFT data pipeline: a multi-image record's and a video record's tokens (with
the per-frame-pair `<t seconds>` timestamps), pixels and positions equal what transformers' own
Qwen3-VL processor and `get_rope_index` give; bad media files are named errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torchvision")

from lmms_engine.data.errors import DataError  # noqa: E402
from lmms_engine.models.mrope import mm_token_type_ids  # noqa: E402
from tests.unit import test_data_vl as vl_data  # noqa: E402
from tests.unit.test_qwen3_vl import _preset  # noqa: E402


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    return _preset("tiny_qwen3_vl")()


@pytest.fixture(scope="module")
def spec(bundle):
    return bundle.data_extras["mrope_spec"]


def test_multi_image_record_equals_transformers_processor(bundle, spec, tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a.png": (100, 60), "b.png": (90, 200)}
    for name, (width, height) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(folder / name)
    messages = [vl_data.user(vl_data.image("a.png"), "and", vl_data.image("b.png"), "differ?"), vl_data.assistant("Yes.")]
    data = vl_data.write_records(tmp_path / "d.jsonl", [messages])
    dataset = vl_data.build(bundle, spec, vl_data.write_yaml(tmp_path, data, folder), tmp_path)
    sample = dataset[0]

    hf_messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"},
                                                {"type": "text", "text": "differ?"}]},
                   {"role": "assistant", "content": "Yes."}]
    text = bundle.processor.apply_chat_template(hf_messages, tokenize=False)
    images = [Image.open(folder / name).convert("RGB") for name in sizes]
    theirs = bundle.processor(text=[text], images=images, return_tensors="pt")
    np.testing.assert_array_equal(sample.input_ids, theirs["input_ids"][0].numpy())
    np.testing.assert_array_equal(mm_token_type_ids(sample.input_ids, spec), theirs["mm_token_type_ids"][0].numpy())

    batch = dataset.collate([0])
    assert batch["image_grid_thw"].tolist() == theirs["image_grid_thw"].tolist()
    torch.testing.assert_close(batch["pixel_values"], theirs["pixel_values"].float())
    expected, _ = bundle.model.model.get_rope_index(theirs["input_ids"], theirs["mm_token_type_ids"],
                                                    image_grid_thw=theirs["image_grid_thw"])
    torch.testing.assert_close(batch["position_ids"], expected)


def _decoded_frames(path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.mark.parametrize(
    ("frames", "fps", "size"),
    [
        (25, 10, (160, 120)),  # 5 frames sampled: the last pair padded; the whole-clip pixel bound shrinks frames
        (8, 4, (64, 48)),  # 4 frames (video_min_frames); a timestamp on a .x5 tie (0.25 s -> "0.2")
    ],
)
def test_video_record_equals_transformers_processor(bundle, spec, tmp_path, frames, fps, size):
    from transformers.video_utils import VideoMetadata

    folder = tmp_path / "media"
    folder.mkdir()
    vl_data.write_video(folder / "clip.mp4", frames=frames, fps=fps, width=size[0], height=size[1])
    messages = [vl_data.user("Watch:", vl_data.video("clip.mp4"), "what changes?"), vl_data.assistant("Light.")]
    data = vl_data.write_records(tmp_path / "d.jsonl", [messages])
    dataset = vl_data.build(bundle, spec, vl_data.write_yaml(tmp_path, data, folder), tmp_path, video_fps=2.0)
    sample = dataset[0]

    hf_messages = [{"role": "user", "content": [{"type": "text", "text": "Watch:"}, {"type": "video"},
                                                {"type": "text", "text": "what changes?"}]},
                   {"role": "assistant", "content": "Light."}]
    text = bundle.processor.apply_chat_template(hf_messages, tokenize=False)
    decoded = _decoded_frames(folder / "clip.mp4")
    metadata = VideoMetadata(total_num_frames=len(decoded), fps=float(fps), width=size[0], height=size[1])
    theirs = bundle.processor(text=[text], videos=[decoded], video_metadata=[metadata], fps=2.0,
                              do_sample_frames=True, cap_pixels_per_frame=False, return_tensors="pt")
    assert "seconds>" in bundle.tokenizer.decode(sample.input_ids)
    np.testing.assert_array_equal(sample.input_ids, theirs["input_ids"][0].numpy())
    np.testing.assert_array_equal(mm_token_type_ids(sample.input_ids, spec), theirs["mm_token_type_ids"][0].numpy())
    assert (sample.labels[: np.flatnonzero(sample.input_ids == spec.video_token_id)[-1] + 1] == -100).all()

    batch = dataset.collate([0])
    assert batch["video_grid_thw"].tolist() == theirs["video_grid_thw"].tolist()
    torch.testing.assert_close(batch["pixel_values_videos"], theirs["pixel_values_videos"].float())
    expected, _ = bundle.model.model.get_rope_index(theirs["input_ids"], theirs["mm_token_type_ids"],
                                                    video_grid_thw=theirs["video_grid_thw"])
    torch.testing.assert_close(batch["position_ids"], expected)


@pytest.mark.parametrize(("line", "file", "reason"), [(2, "missing.png", "media_missing"),
                                                     (3, "garbage.png", "media_unreadable"),
                                                     (4, "garbage.mp4", "media_unreadable")])
def test_bad_media_raises_naming_record_and_file(bundle, spec, tmp_path, line, file, reason):
    folder = tmp_path / "media"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(folder / "a.png")
    (folder / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    (folder / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    records = vl_data.bad_media_records()
    data = vl_data.write_records(tmp_path / "d.jsonl", [records[0], records[line - 1]])
    with pytest.raises(DataError, match=rf"d\.jsonl:2: .*{file}") as caught:
        vl_data.build(bundle, spec, vl_data.write_yaml(tmp_path, data, folder), tmp_path)
    assert caught.value.reason == reason


def test_a_spelled_placeholder_is_a_named_mismatch(bundle, spec, tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(folder / "a.png")
    messages = [vl_data.user(vl_data.image("a.png"), "see <|image_pad|>"), vl_data.assistant("No.")]
    data = vl_data.write_records(tmp_path / "d.jsonl", [messages])
    with pytest.raises(DataError, match=r"d\.jsonl:1: .*placeholder tokens") as caught:
        vl_data.build(bundle, spec, vl_data.write_yaml(tmp_path, data, folder), tmp_path)
    assert caught.value.reason == "placeholder_mismatch"


def test_a_spelled_video_placeholder_is_a_named_mismatch(bundle, spec, tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    vl_data.write_video(folder / "clip.mp4", frames=8, fps=4)
    messages = [vl_data.user(vl_data.video("clip.mp4"), "is <|video_pad|> here?"), vl_data.assistant("No.")]
    data = vl_data.write_records(tmp_path / "d.jsonl", [messages])
    with pytest.raises(DataError, match=r"d\.jsonl:1: .*placeholder tokens") as caught:
        vl_data.build(bundle, spec, vl_data.write_yaml(tmp_path, data, folder), tmp_path)
    assert caught.value.reason == "placeholder_mismatch"


def test_a_one_frame_video_is_named_unreadable(bundle, spec, tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    vl_data.write_video(folder / "still.mp4", frames=1, fps=4)
    messages = [vl_data.user(vl_data.video("still.mp4"), "What?"), vl_data.assistant("A still.")]
    data = vl_data.write_records(tmp_path / "d.jsonl", [messages])
    with pytest.raises(DataError, match=r"d\.jsonl:1: video '.*still\.mp4' has 1 frame\(s\); Qwen3-VL needs at least 2") as caught:
        vl_data.build(bundle, spec, vl_data.write_yaml(tmp_path, data, folder), tmp_path)
    assert caught.value.reason == "media_unreadable"


@pytest.mark.parametrize("overlong", ["drop", "truncate"])
def test_an_oversized_video_sample_is_dropped_and_counted_not_cut(bundle, spec, tmp_path, overlong):
    """As for Qwen2.5-VL (test_data_vl.test_overlong_vl_samples_are_dropped_not_cut_through_media):
    a video whose tokens (timestamps included) pass packing_length is never cut through."""
    folder = tmp_path / "media"
    folder.mkdir()
    vl_data.write_video(folder / "long.mp4", frames=64, fps=4, width=256, height=192)  # 16 s -> 16 frames
    vl_data.write_video(folder / "short.mp4", frames=8, fps=4)
    records = [[vl_data.user(vl_data.video("long.mp4"), "Describe."), vl_data.assistant("Moving light.")],
               [vl_data.user(vl_data.video("short.mp4"), "Describe."), vl_data.assistant("Moving light.")]]
    data = vl_data.write_records(tmp_path / "d.jsonl", records)
    dataset = vl_data.build(bundle, spec, vl_data.write_yaml(tmp_path, data, folder), tmp_path,
                            packing_length=128, overlong=overlong)
    assert (dataset.stats["dropped_overlong"], dataset.stats["truncated"]) == (1, 0)
    kept = vl_data.by_id(dataset)
    assert set(kept) == {"2"} and len(kept["2"]) <= 128
    dataset.collate([0])  # its placeholders and grids agree
