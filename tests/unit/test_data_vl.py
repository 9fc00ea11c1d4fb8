"""Images and video in the SFT data pipeline (Qwen2.5-VL): placeholder expansion, media paths, mrope
position ids, pixels, bad media files, the cache, frame sampling, overlong samples."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lmms_engine.data import prepare
from lmms_engine.data.chat import IGNORE_INDEX
from lmms_engine.data.dataset import build_sft_dataset
from lmms_engine.data.settings import DataSettings
from lmms_engine.data.errors import DataError
from lmms_engine.models.mrope import MropeSpec, mm_token_type_ids
from lmms_engine.models.qwen2_5_vl import build_qwen2_5_vl

REPO = Path(__file__).resolve().parents[2]
PRESET = REPO / "conf" / "model" / "tiny_qwen2_5_vl.yaml"
DEMO_VL_YAML = REPO / "lmms_engine" / "data" / "demo" / "demo_vl.yaml"
MERGE = 2


@pytest.fixture(scope="module")
def bundle():
    return build_qwen2_5_vl("tiny", config=OmegaConf.load(PRESET).config)


@pytest.fixture(scope="module")
def spec(bundle):
    return MropeSpec.from_config(bundle.model.config)


@pytest.fixture(scope="module")
def ids(bundle):
    convert = bundle.tokenizer.convert_tokens_to_ids
    return {"image": convert("<|image_pad|>"), "video": convert("<|video_pad|>")}


@pytest.fixture
def media(tmp_path):
    """A folder with images of distinct sizes (so grids tell them apart) and a 16-frame 8 fps video."""
    folder = tmp_path / "media"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (width, height) in {"a.png": (100, 60), "b.png": (90, 200), "c.png": (224, 224)}.items():
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(folder / name)
    write_video(folder / "clip.mp4", frames=16, fps=8)
    return folder


def write_video(path: Path, frames: int, fps: int, width: int = 64, height: int = 48) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            frame = np.full((height, width, 3), 20 * t % 255, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def user(*parts) -> dict:
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return {"role": "user", "content": content}


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": url}


def video(url: str) -> dict:
    return {"type": "video_url", "video_url": {"url": url}}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_records(path: Path, records: list[list[dict]]) -> Path:
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in records))
    return path


def write_yaml(tmp_path: Path, data: Path, media_folder: Path) -> Path:
    path = tmp_path / "data.yaml"
    path.write_text(f"datasets:\n  - path: {data}\n    data_folder: {media_folder}\n    data_type: jsonl\n")
    return path


def build(bundle, spec, dataset_path, tmp_path, **kwargs):
    kwargs = {"packing_length": 1024, "num_proc": 1, "cache_dir": tmp_path / "cache", **kwargs}
    return build_sft_dataset(
        bundle.tokenizer, DataSettings(dataset_path, **kwargs), processor=bundle.processor, mrope_spec=spec
    )


def by_id(dataset) -> dict:
    return {dataset[i].sample_id.rsplit(":", 1)[1]: dataset[i] for i in range(dataset.num_samples)}


def runs(input_ids: np.ndarray, token_id: int) -> list[tuple[int, int]]:
    """[start, end) of every run of token_id."""
    mask = np.concatenate([[0], (input_ids == token_id).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(mask))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def hf_positions(bundle, spec, sample) -> torch.Tensor:
    """transformers' get_rope_index on the sample alone (3, len)."""
    images = [m.grid_thw for m in sample.media if m.kind == "image"]
    videos = [m for m in sample.media if m.kind == "video"]
    input_ids = torch.from_numpy(sample.input_ids).long().unsqueeze(0)
    kwargs = {
        "image_grid_thw": torch.tensor(images) if images else None,
        "video_grid_thw": torch.tensor([m.grid_thw for m in videos]) if videos else None,
        "second_per_grid_ts": torch.tensor([m.second_per_grid_t for m in videos]) if videos else None,
        "attention_mask": torch.ones_like(input_ids),
    }
    model = bundle.model.model
    if "mm_token_type_ids" in inspect.signature(model.get_rope_index).parameters:
        types = mm_token_type_ids(sample.input_ids, spec)
        kwargs["mm_token_type_ids"] = torch.from_numpy(types).unsqueeze(0)
    with torch.no_grad():
        return model.get_rope_index(input_ids, **kwargs)[0][:, 0]


# ---------------------------------------------------------------- placeholders and paths


def test_placeholders_expand_to_grid_tokens_in_order_and_are_never_trained(
    bundle, spec, ids, media, tmp_path
):
    records = [
        [
            user(image("a.png"), "Compare", image("b.png")),
            assistant("Different."),
            user("And this?", image("c.png")),
            assistant("Square."),
        ]
    ]
    dataset = build(
        bundle, spec, write_yaml(tmp_path, write_records(tmp_path / "d.jsonl", records), media), tmp_path
    )
    sample = dataset[0]
    processed = bundle.processor.image_processor(
        images=[Image.open(media / n).convert("RGB") for n in ("a.png", "b.png", "c.png")],
        return_tensors="pt",
    )
    expected_grids = [tuple(g) for g in processed["image_grid_thw"].tolist()]
    assert [m.grid_thw for m in sample.media] == expected_grids  # placeholder order = part order
    assert len(set(expected_grids)) == 3
    blocks = runs(sample.input_ids, ids["image"])
    assert [end - start for start, end in blocks] == [t * h * w // MERGE**2 for t, h, w in expected_grids]
    assert (sample.labels[sample.input_ids == ids["image"]] == IGNORE_INDEX).all()
    assert (sample.labels != IGNORE_INDEX).any()  # the assistant turns are still trained
    assert [m.path for m in sample.media] == [str(media / n) for n in ("a.png", "b.png", "c.png")]


def test_relative_absolute_and_file_url_paths_resolve_to_the_same_file(bundle, spec, media, tmp_path):
    urls = ["a.png", str(media / "a.png"), (media / "a.png").as_uri()]
    records = [[user(image(url), "What?"), assistant("A.")] for url in urls]
    dataset = build(
        bundle, spec, write_yaml(tmp_path, write_records(tmp_path / "d.jsonl", records), media), tmp_path
    )
    assert dataset.num_samples == 3
    assert {dataset[i].media[0].path for i in range(3)} == {str(media / "a.png")}


@pytest.mark.parametrize(
    "url", ["http://example.com/a.png", "https://example.com/a.png", "s3://bucket/a.png"]
)
def test_remote_urls_are_refused(bundle, spec, media, tmp_path, url):
    records = [[user("Hi"), assistant("Hello.")], [user(image(url), "What?"), assistant("A.")]]
    data = write_records(tmp_path / "d.jsonl", records)
    with pytest.raises(DataError, match=r"d\.jsonl:2: .*URLs are not fetched") as caught:
        build(bundle, spec, write_yaml(tmp_path, data, media), tmp_path)
    assert caught.value.reason == "media_url_unsupported"


def test_media_in_an_assistant_turn_is_refused(bundle, spec, media, tmp_path):
    drawn = {"role": "assistant", "content": [image("a.png"), {"type": "text", "text": "Here."}]}
    records = [[user("Hi"), assistant("Hello.")], [user("Draw"), drawn]]
    data = write_records(tmp_path / "d.jsonl", records)
    with pytest.raises(DataError, match=r"d\.jsonl:2: messages\[1\] is an assistant turn with a media part") as caught:
        build(bundle, spec, write_yaml(tmp_path, data, media), tmp_path)
    assert caught.value.reason == "media_in_assistant"


# ---------------------------------------------------------------- collation


def mixed_records() -> list[list[dict]]:
    return [
        [user(image("a.png"), "Color?"), assistant("Red.")],
        [user("Two:", image("b.png"), image("c.png")), assistant("Both.")],
        [user(video("clip.mp4"), "Motion?"), assistant("None.")],
        [user("Plain text."), assistant("Yes.")],
        [
            user(image("c.png"), video("clip.mp4"), "Both?"),
            assistant("Yes."),
            user("More", image("a.png")),
            assistant("Ok."),
        ],
    ]


@pytest.fixture
def mixed(bundle, spec, media, tmp_path):
    data = write_records(tmp_path / "d.jsonl", mixed_records())
    return build(bundle, spec, write_yaml(tmp_path, data, media), tmp_path)


def test_packed_collate_positions_pixels_and_grids(bundle, spec, ids, mixed):
    batch = mixed.collate(list(range(mixed.num_samples)))
    samples = [mixed[i] for i in range(mixed.num_samples)]
    total = sum(len(s) for s in samples)
    assert batch.input_ids.shape == batch.labels.shape == (1, total)
    assert batch.position_ids.shape == (3, 1, total) and batch.position_ids.dtype == torch.long
    bounds = batch.cu_seqlens.tolist()
    for sample, start, end in zip(samples, bounds[:-1], bounds[1:], strict=True):
        assert torch.equal(batch.position_ids[:, 0, start:end], hf_positions(bundle, spec, sample))
        assert (
            batch.labels[0, start:end][torch.from_numpy(sample.input_ids) == ids["image"]] == IGNORE_INDEX
        ).all()
    images = [m for s in samples for m in s.media if m.kind == "image"]
    videos = [m for s in samples for m in s.media if m.kind == "video"]
    assert batch.image_grid_thw.tolist() == [list(m.grid_thw) for m in images]
    assert batch.pixel_values.shape[0] == sum(int(np.prod(m.grid_thw)) for m in images)
    assert batch.pixel_values.dtype == torch.float32
    assert batch.video_grid_thw.tolist() == [list(m.grid_thw) for m in videos]
    assert batch.pixel_values_videos.shape[0] == sum(int(np.prod(m.grid_thw)) for m in videos)
    assert batch.second_per_grid_ts.tolist() == [m.second_per_grid_t for m in videos]
    # the image features are those of each image alone, in placeholder order
    alone = [
        bundle.processor.image_processor(images=[Image.open(m.path).convert("RGB")], return_tensors="pt")
        for m in images
    ]
    assert torch.equal(batch.pixel_values, torch.cat([a["pixel_values"] for a in alone]))


def test_media_keys_absent_without_media_and_text_positions_are_equal_rows(mixed):
    text = [i for i in range(mixed.num_samples) if not mixed[i].media]
    batch = mixed.collate(text)
    assert not {"pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"} & set(batch.fields())
    positions = batch.position_ids
    assert positions.shape == (3, 1, batch.input_ids.shape[1])
    assert torch.equal(positions[0], positions[1]) and torch.equal(positions[0], positions[2])
    assert positions[0, 0].tolist() == list(range(positions.shape[-1]))
    images_only = mixed.collate([0])
    assert images_only.pixel_values is not None and images_only.pixel_values_videos is None


def test_padded_collate_has_per_row_mrope_positions(bundle, spec, media, tmp_path):
    data = write_records(tmp_path / "d.jsonl", mixed_records())
    dataset = build(
        bundle, spec, write_yaml(tmp_path, data, media), tmp_path, packing=False, micro_batch_size=5
    )
    batch = dataset.collate(list(range(5)))
    width = max(len(dataset[i]) for i in range(5))
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.labels.shape == (5, width)
    assert batch.position_ids.shape == (3, 5, width)
    for row in range(5):
        sample = dataset[row]
        n = len(sample)
        assert torch.equal(batch.position_ids[:, row, :n], hf_positions(bundle, spec, sample))
        assert (batch.position_ids[:, row, n:] == 0).all()
    assert batch.image_grid_thw.shape[0] == sum(
        m.kind == "image" for i in range(5) for m in dataset[i].media
    )
    assert batch.video_grid_thw.shape[0] == 2


def test_vl_batch_runs_through_the_tiny_model(bundle, mixed):
    batch = mixed.collate([0, 1, 2])
    model = bundle.model.eval()
    inputs = {
        k: v
        for k, v in batch.fields().items()
        if k
        in (
            "input_ids",
            "position_ids",
            "pixel_values",
            "image_grid_thw",
            "pixel_values_videos",
            "video_grid_thw",
            "second_per_grid_ts",
        )
    }
    with torch.no_grad():
        logits = model(**inputs).logits  # placeholder counts must match the tower's features
    assert logits.shape[:2] == batch.input_ids.shape


def test_stats_count_images_videos_and_visual_tokens(mixed):
    samples = [mixed[i] for i in range(mixed.num_samples)]
    assert mixed.stats["images"] == 5 and mixed.stats["videos"] == 2
    assert mixed.stats["visual_tokens"] == sum(m.num_tokens(MERGE) for s in samples for m in s.media)


# ---------------------------------------------------------------- video sampling


@pytest.mark.parametrize(
    ("fps", "min_frames", "max_frames", "frames", "seconds"),
    [
        (2.0, 4, 16, 4, 1.0),  # 2 s of video at 2 fps: 4 frames, 2 per grid step of 1 s
        (4.0, 4, 16, 8, 0.5),
        (8.0, 4, 6, 6, 2 / 3),  # 16 wanted, capped at 6
        (0.5, 4, 16, 4, 1.0),  # 1 wanted, raised to min_frames
    ],
)
def test_video_grid_t_and_seconds_follow_the_sampling_settings(
    bundle, spec, media, tmp_path, fps, min_frames, max_frames, frames, seconds
):
    data = write_records(tmp_path / "d.jsonl", [[user(video("clip.mp4"), "What?"), assistant("Nothing.")]])
    dataset = build(
        bundle,
        spec,
        write_yaml(tmp_path, data, media),
        tmp_path,
        video_fps=fps,
        video_min_frames=min_frames,
        video_max_frames=max_frames,
    )
    item = dataset[0].media[0]
    assert item.kind == "video" and (item.total_frames, item.num_frames) == (16, frames)
    assert item.grid_thw[0] == frames // 2
    assert item.second_per_grid_t == pytest.approx(seconds)
    batch = dataset.collate([0])
    assert batch.video_grid_thw.tolist() == [list(item.grid_thw)]
    assert batch.second_per_grid_ts.tolist() == pytest.approx([seconds])


def test_video_max_pixels_bounds_the_frame_grid(bundle, spec, media, tmp_path):
    data = write_records(tmp_path / "d.jsonl", [[user(video("clip.mp4"), "What?"), assistant("Nothing.")]])
    small = build(bundle, spec, write_yaml(tmp_path, data, media), tmp_path, video_max_pixels=28 * 28)
    _, h, w = small[0].media[0].grid_thw
    assert (h, w) == (2, 2)
    assert small.collate([0]).video_grid_thw.tolist() == [list(small[0].media[0].grid_thw)]


# ---------------------------------------------------------------- bad media


def bad_media_records() -> list[list[dict]]:
    return [
        [user(image("a.png"), "Fine?"), assistant("Yes.")],
        [user(image("missing.png"), "Where?"), assistant("Gone.")],
        [user(image("garbage.png"), "What?"), assistant("Noise.")],
        [user(video("garbage.mp4"), "What?"), assistant("Noise.")],
    ]


@pytest.mark.parametrize(
    ("line", "file", "reason"),
    [
        (2, "missing.png", "media_missing"),
        (3, "garbage.png", "media_unreadable"),
        (4, "garbage.mp4", "media_unreadable"),
    ],
)
def test_bad_media_raises_naming_record_and_file(bundle, spec, media, tmp_path, line, file, reason):
    (media / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    (media / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    records = bad_media_records()
    data = write_records(tmp_path / "d.jsonl", [records[0], records[line - 1]])
    with pytest.raises(DataError, match=rf"d\.jsonl:2: .*{file}") as caught:
        build(bundle, spec, write_yaml(tmp_path, data, media), tmp_path)
    assert caught.value.reason == reason


def test_bad_media_is_skipped_and_counted(bundle, spec, media, tmp_path):
    (media / "garbage.png").write_bytes(b"garbage" * 20)
    (media / "garbage.mp4").write_bytes(b"garbage" * 50)
    data = write_records(tmp_path / "d.jsonl", bad_media_records())
    dataset = build(bundle, spec, write_yaml(tmp_path, data, media), tmp_path, on_error="skip")
    assert dataset.num_samples == 1 and dataset[0].sample_id.endswith(":1")
    assert dataset.stats["skipped_by_reason"] == {"media_missing": 1, "media_unreadable": 2}


def test_a_truncated_image_is_unreadable(bundle, spec, media, tmp_path):
    whole = (media / "c.png").read_bytes()
    (media / "cut.png").write_bytes(whole[: len(whole) // 2])
    data = write_records(tmp_path / "d.jsonl", [[user(image("cut.png"), "What?"), assistant("Half.")]])
    with pytest.raises(DataError, match=r"d\.jsonl:1: cannot decode image .*cut\.png"):
        build(bundle, spec, write_yaml(tmp_path, data, media), tmp_path)


def test_an_image_changed_after_caching_fails_at_collate(bundle, spec, media, tmp_path):
    data = write_records(tmp_path / "d.jsonl", [[user(image("a.png"), "What?"), assistant("A.")]])
    dataset = build(bundle, spec, write_yaml(tmp_path, data, media), tmp_path)
    Image.new("RGB", (224, 56)).save(media / "a.png")
    with pytest.raises(ValueError, match=r"a\.png.*changed since caching"):
        dataset.collate([0])


def test_media_without_a_processor_is_still_rejected(bundle, media, tmp_path):
    data = write_records(tmp_path / "d.jsonl", [[user(image("a.png"), "What?"), assistant("A.")]])
    with pytest.raises(DataError, match="takes text only") as caught:
        build_sft_dataset(
            bundle.tokenizer, DataSettings(write_yaml(tmp_path, data, media), num_proc=1, cache_dir=tmp_path / "c")
        )
    assert caught.value.reason == "media_on_text_model"


def test_processor_needs_the_mrope_spec(bundle, media, tmp_path):
    data = write_records(tmp_path / "d.jsonl", [[user("Hi"), assistant("Hello.")]])
    with pytest.raises(ValueError, match="mrope_spec"):
        build_sft_dataset(bundle.tokenizer, DataSettings(data, cache_dir=tmp_path / "c"), processor=bundle.processor)


# ---------------------------------------------------------------- cache, workers, overlong


def test_cache_round_trip_gives_identical_batches(bundle, spec, media, tmp_path, monkeypatch):
    data = write_records(tmp_path / "d.jsonl", mixed_records())
    path = write_yaml(tmp_path, data, media)
    cold = build(bundle, spec, path, tmp_path)
    monkeypatch.setattr(
        prepare, "tokenize_file", lambda *a, **k: pytest.fail("tokenized again, cache missed")
    )
    warm = build(bundle, spec, path, tmp_path)
    indices = list(range(cold.num_samples))
    first, second = cold.collate(indices), warm.collate(indices)
    assert first.fields().keys() == second.fields().keys()
    for key, value in first.fields().items():
        other = getattr(second, key)
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    assert [warm[i].media for i in indices] == [cold[i].media for i in indices]
    monkeypatch.undo()
    other = build(bundle, spec, path, tmp_path, image_max_pixels=16 * 28 * 28)  # settings are in the key
    assert other[4].media[0].grid_thw != cold[4].media[0].grid_thw


def test_worker_processes_give_the_same_samples(bundle, spec, media, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK_SIZE", 2)
    data = write_records(tmp_path / "d.jsonl", mixed_records() * 2)
    path = write_yaml(tmp_path, data, media)
    serial = build(bundle, spec, path, tmp_path / "one")
    parallel = build(bundle, spec, path, tmp_path / "two", num_proc=3)
    for i in range(serial.num_samples):
        a, b = serial[i], parallel[i]
        assert (
            np.array_equal(a.input_ids, b.input_ids)
            and np.array_equal(a.labels, b.labels)
            and a.media == b.media
        )


def test_overlong_vl_samples_are_dropped_not_cut_through_media(bundle, spec, ids, media, tmp_path):
    long_answer = "word " * 300
    records = [
        [user(image("c.png"), "Talk."), assistant(long_answer)],  # image before the cut: truncated
        [
            user("Talk."),
            assistant(long_answer),
            user(image("c.png"), "And?"),
            assistant("A."),
        ],  # cut drops it
        [user("Short", image("a.png")), assistant("Fits.")],
    ]
    data = write_records(tmp_path / "d.jsonl", records)
    dataset = build(
        bundle, spec, write_yaml(tmp_path, data, media), tmp_path, packing_length=256, overlong="truncate"
    )
    assert (dataset.stats["truncated"], dataset.stats["dropped_overlong"]) == (1, 1)
    kept = by_id(dataset)
    assert set(kept) == {"1", "3"} and len(kept["1"]) == 256
    assert (kept["1"].input_ids == ids["image"]).sum() == kept["1"].media[0].num_tokens(MERGE)
    dataset.collate(list(range(dataset.num_samples)))  # placeholders and grids still agree
    dropped = build(
        bundle, spec, write_yaml(tmp_path, data, media), tmp_path, packing_length=256, overlong="drop"
    )
    assert dropped.stats["dropped_overlong"] == 2


# ---------------------------------------------------------------- demo data


def test_demo_vl_yaml_builds_with_images_and_video(bundle, spec, tmp_path):
    dataset = build(bundle, spec, DEMO_VL_YAML, tmp_path)
    assert dataset.stats["skipped"] == 0 and dataset.stats["images"] > 100 and dataset.stats["videos"] > 0
    batch = dataset.collate(dataset.micro_batches(0)[0])
    assert batch.position_ids.shape == (3, 1, batch.input_ids.shape[1])


def test_streamed_vl_micro_batches_collate_like_the_indexed_ones(bundle, spec, media, tmp_path):
    """data.streaming=true with images and video: the same tokens, grids, pixels and mrope ids as
    the indexed dataset gives for the same samples."""
    from lmms_engine.train.data_iter import make_step_batches

    records = [[user(image("a.png"), "What?"), assistant("A.")], [user("Hi"), assistant("Hello.")],
               [user(video("clip.mp4"), "Moves?"), assistant("Yes.")],
               [user(image("b.png"), image("c.png"), "Both?"), assistant("Two.")]]
    path = write_yaml(tmp_path, write_records(tmp_path / "d.jsonl", records), media)
    indexed = build(bundle, spec, path, tmp_path)
    streamed = build(bundle, spec, path, tmp_path, streaming=True, stream_window=4)
    position = {sample.sample_id: i for i, sample in enumerate(indexed[i] for i in range(len(indexed)))}
    steps = make_step_batches(streamed, 1, 0, 1)
    seen = set()
    for _ in range(4):
        (micro_batch,) = steps.next_step()
        got = streamed.collate(micro_batch)
        want = indexed.collate([position[s.sample_id] for s in micro_batch])
        assert got.fields().keys() == want.fields().keys()
        for key, value in want.fields().items():
            mine = getattr(got, key)
            assert torch.equal(mine, value) if isinstance(value, torch.Tensor) else mine == value, key
        seen.update(s.sample_id for s in micro_batch)
    assert len(seen) == 4
