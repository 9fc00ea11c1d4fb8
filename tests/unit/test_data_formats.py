"""Data as it is downloaded: Hugging Face datasets with embedded media (parquet, save_to_disk
folders, hub-layout folders), LLaVA / ShareGPT conversations, and `messages` stored as JSON strings.
Each format gives exactly what its equivalent OpenAI-messages jsonl + media files give: tokens,
labels, pixels / audio features, grids and the tiny models' step-1 loss; bad input is named by
reason and row."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from lmms_engine.data.check import check_dataset, print_report
from lmms_engine.data.dataset import build_sft_dataset
from lmms_engine.data.settings import DataSettings
from lmms_engine.data.errors import DataError, DataSourceError
from lmms_engine.data.sources import resolve_sources
from lmms_engine.kernels.attention import varlen_kwargs
from lmms_engine.kernels.loss import cross_entropy_sum
from lmms_engine.kernels.patcher import KernelPatcher
from lmms_engine.models.mrope import MropeSpec
from lmms_engine.models.qwen2_5_vl import build_qwen2_5_vl
from lmms_engine.models.qwen2_audio import build_qwen2_audio
from lmms_engine.train.data_iter import make_step_batches
from lmms_engine.train.module import CausalLMWithLoss

from .test_data_audio import tone, write_wav
from .test_data_vl import write_video

PRESETS = Path(__file__).resolve().parents[2] / "conf" / "model"
BATCH_KEYS = ("input_ids", "labels", "position_ids", "cu_seqlens", "pixel_values", "image_grid_thw",
              "pixel_values_videos", "video_grid_thw", "second_per_grid_ts", "audio_features", "audio_frames",
              "audio_lengths")


def _preset(name: str) -> dict:
    values = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
    values.pop("_target_")
    return values


@pytest.fixture(scope="module")
def vl():
    torch.manual_seed(0)
    bundle = build_qwen2_5_vl(**_preset("tiny_qwen2_5_vl"))
    return bundle, MropeSpec.from_config(bundle.model.config)


@pytest.fixture(scope="module")
def audio_bundle():
    torch.manual_seed(0)
    return build_qwen2_audio(**_preset("tiny_qwen2_audio"))


# ---------------------------------------------------------------- fixtures: media and records


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    for name, (width, height) in {"a.png": (100, 60), "b.png": (90, 200), "c.png": (224, 224)}.items():
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(folder / name)
    write_video(folder / "clip.mp4", frames=16, fps=8)
    write_wav(folder / "a.wav", tone(0.5))
    write_wav(folder / "b.wav", tone(1.3, frequency=660.0))
    return folder


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def bare(kind: str) -> dict:
    """A media part without a payload: it takes the record's next item of its kind."""
    return {"type": kind}


def turn(role: str, *parts) -> dict:
    return {"role": role, "content": [text(p) if isinstance(p, str) else p for p in parts]}


# Each record: (messages with payload-less media parts, its media in order per kind). Content is
# always a list of parts: the parquet tables need one type per column.
VL_RECORDS = [
    ([turn("user", bare("image"), "What shape?"), turn("assistant", "A circle.")], {"image": ["a.png"]}),
    ([turn("user", "Compare", bare("image"), bare("image")), turn("assistant", "Different.")],
     {"image": ["b.png", "c.png"]}),
    ([turn("user", "Hi"), turn("assistant", "Hello.")], {}),
    ([turn("user", bare("video"), "Which way?"), turn("assistant", "Left."), turn("user", bare("image"), "And?"),
      turn("assistant", "Circle.")], {"image": ["a.png"], "video": ["clip.mp4"]}),
]
AUDIO_RECORDS = [
    ([turn("user", bare("audio"), "Pitch?"), turn("assistant", "A4.")], {"audio": ["a.wav"]}),
    ([turn("user", "Hi"), turn("assistant", "Hello.")], {}),
    ([turn("user", "Compare", bare("audio"), bare("audio")), turn("assistant", "A4 then E5.")],
     {"audio": ["a.wav", "b.wav"]}),
]
COLUMNS = {"image": "images", "video": "videos", "audio": "audios"}


def filled(messages: list[dict], items: dict[str, list[str]], media_folder: Path) -> list[dict]:
    """The OpenAI form with every payload-less part given its file (absolute path)."""
    pending = {kind: list(paths) for kind, paths in items.items()}
    out = []
    for message in messages:
        parts = [
            {"type": f"{p['type']}_url", f"{p['type']}_url": str(media_folder / pending[p["type"]].pop(0))}
            if p["type"] != "text" else p
            for p in message["content"]
        ]
        out.append({"role": message["role"], "content": parts})
    return out


def write_reference(path: Path, records, media_folder: Path) -> Path:
    path.write_text("".join(json.dumps({"messages": filled(m, items, media_folder)}) + "\n" for m, items in records))
    return path


def embedded_rows(records, media_folder: Path, kinds: tuple[str, ...]) -> list[dict]:
    """Rows with the media as datasets feature structs {bytes, path} in list columns."""
    return [
        {"messages": messages, **{
            COLUMNS[kind]: [{"bytes": (media_folder / name).read_bytes(), "path": name} for name in items.get(kind, [])]
            for kind in kinds
        }}
        for messages, items in records
    ]


def hf_dataset(rows: list[dict], kinds: tuple[str, ...], messages_as_json: bool = False) -> datasets.Dataset:
    part = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    messages = datasets.Value("string") if messages_as_json else datasets.List(
        {"role": datasets.Value("string"), "content": datasets.List(part)}
    )
    features = {"messages": messages}
    struct = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    for kind in kinds:
        features[COLUMNS[kind]] = datasets.List(datasets.Image() if kind == "image" else struct)
    if messages_as_json:
        rows = [{**row, "messages": m if isinstance(m := row["messages"], str) else json.dumps(m)} for row in rows]
    dataset = datasets.Dataset.from_list(rows, features=datasets.Features(features))
    if "audio" in kinds:  # the Audio feature's storage is that struct; encoding it would need torchcodec
        dataset = dataset.cast_column("audios", datasets.List(datasets.Audio(decode=False)))
    return dataset


def sharegpt_rows(records, kinds: tuple[str, ...]) -> list[dict]:
    """The records as LLaVA conversations: `<image>` placeholders where the parts were, media paths
    in `image` / `video` / `audio` (a single path when there is one, else a list)."""
    rows = []
    for messages, items in records:
        conversations = [
            {"from": {"user": "human", "assistant": "gpt"}[m["role"]],
             "value": "".join(p["text"] if p["type"] == "text" else f"<{p['type']}>" for p in m["content"])}
            for m in messages
        ]
        row = {"conversations": conversations}
        for kind in kinds:
            if items.get(kind):
                row[kind] = items[kind][0] if len(items[kind]) == 1 else items[kind]
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_yaml(path: Path, data: Path, data_type: str, media_folder: Path, **extra) -> Path:
    entry = {"path": str(data), "data_type": data_type, "data_folder": str(media_folder), **extra}
    path.write_text(yaml.safe_dump({"datasets": [entry]}))
    return path


def format_fixtures(tmp_path: Path, records, media_folder: Path, kinds: tuple[str, ...]) -> dict[str, Path]:
    """Every format of `records`: name -> dataset path."""
    rows = embedded_rows(records, media_folder, kinds)
    hub = tmp_path / "hub_repo"
    (hub / "data").mkdir(parents=True)
    (hub / "README.md").write_text("---\nlicense: mit\n---\n")
    hf_dataset(rows[:2], kinds).to_parquet(hub / "data" / "train-00000-of-00002.parquet")
    hf_dataset(rows[2:], kinds).to_parquet(hub / "data" / "train-00001-of-00002.parquet")
    hf_dataset(rows[:1], kinds).to_parquet(hub / "data" / "test-00000-of-00001.parquet")  # not read
    hf_dataset(rows, kinds).to_parquet(tmp_path / "embedded.parquet")
    hf_dataset(rows, kinds).save_to_disk(str(tmp_path / "embedded_arrow"))
    hf_dataset(rows, kinds, messages_as_json=True).to_parquet(tmp_path / "json_string.parquet")
    sharegpt = write_jsonl(tmp_path / "llava.jsonl", sharegpt_rows(records, kinds))
    return {
        "parquet": tmp_path / "embedded.parquet",
        "arrow": tmp_path / "embedded_arrow",
        "hub_folder": write_yaml(tmp_path / "hub.yaml", hub, "parquet", media_folder),
        "json_string": tmp_path / "json_string.parquet",
        "sharegpt": write_yaml(tmp_path / "llava.yaml", sharegpt, "jsonl", media_folder, data_format="sharegpt"),
        "sharegpt_auto": write_yaml(tmp_path / "llava_auto.yaml", sharegpt, "jsonl", media_folder),
    }


# ---------------------------------------------------------------- equivalence


def batches(dataset) -> list:
    return [dataset.collate(indices) for indices in dataset.micro_batches(0)]


def assert_same_batches(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert sorted(k for k in a.fields() if k != "sample_ids") == sorted(k for k in b.fields() if k != "sample_ids")
        for key in BATCH_KEYS:
            if key in b:
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def step1_loss(bundle, batch) -> torch.Tensor:
    KernelPatcher(use_rmpad=True).apply(bundle.model, torch.device("cpu"), padding_free=True,
                                        encoders=bundle.encoders, decoder_path=bundle.decoder_path)
    module = CausalLMWithLoss(bundle.model, cross_entropy_sum, bundle.hidden_states)
    inputs = {k: batch[k] for k in bundle.input_keys if k in batch}
    inputs.update(varlen_kwargs(batch["cu_seqlens"], batch["max_seqlen"], "sdpa"))
    with torch.no_grad():
        return module(labels=batch["labels"], **inputs) / batch["num_label_tokens"]


@pytest.fixture(scope="module")
def vl_fixtures(tmp_path_factory, media):
    tmp_path = tmp_path_factory.mktemp("vl_formats")
    reference = write_reference(tmp_path / "reference.jsonl", VL_RECORDS, media)
    return reference, format_fixtures(tmp_path, VL_RECORDS, media, ("image", "video"))


def build_vl(vl, path, tmp_path, **kwargs):
    bundle, spec = vl
    return build_sft_dataset(bundle.tokenizer, DataSettings(path, packing_length=1024, num_proc=1, cache_dir=tmp_path / "cache",
                                                            **kwargs), processor=bundle.processor, mrope_spec=spec)


@pytest.mark.parametrize("fmt", ["parquet", "arrow", "hub_folder", "json_string", "sharegpt", "sharegpt_auto"])
def test_vl_formats_give_the_reference_jsonls_tokens_pixels_and_loss(vl, vl_fixtures, tmp_path, fmt):
    reference_path, fixtures = vl_fixtures
    reference, dataset = build_vl(vl, reference_path, tmp_path), build_vl(vl, fixtures[fmt], tmp_path)
    assert dataset.stats["samples"] == reference.stats["samples"] == len(VL_RECORDS)
    assert (dataset.stats["images"], dataset.stats["videos"]) == (4, 1)
    got, expected = batches(dataset), batches(reference)
    assert_same_batches(got, expected)
    assert any("pixel_values_videos" in b for b in expected) and any("pixel_values" in b for b in expected)
    torch.testing.assert_close(step1_loss(vl[0], got[0]), step1_loss(vl[0], expected[0]), rtol=0, atol=0)


def test_embedded_media_are_references_read_back_at_collate_time(vl, vl_fixtures, tmp_path):
    """The dataset keeps (source, row:column:index) per embedded item, never bytes or pixels."""
    dataset = build_vl(vl, vl_fixtures[1]["parquet"], tmp_path)
    items = [item for i in range(len(dataset)) for item in dataset[i].media]
    source = str(vl_fixtures[1]["parquet"].absolute())
    assert {item.path for item in items} == {source}
    assert sorted(item.member for item in items) == ["0:images:0", "1:images:0", "1:images:1", "3:images:0",
                                                      "3:videos:0"]


def test_streaming_reads_every_format_like_the_indexed_path(vl, vl_fixtures, tmp_path):
    _, fixtures = vl_fixtures
    for fmt in ("parquet", "arrow", "json_string", "sharegpt"):
        indexed = build_vl(vl, fixtures[fmt], tmp_path, packing=False, micro_batch_size=1)
        streamed = build_vl(vl, fixtures[fmt], tmp_path, packing=False, micro_batch_size=1, streaming=True,
                            stream_window=4)
        step = make_step_batches(streamed, 4, 0, 1).next_step()
        by_id = {indexed[i].sample_id: indexed.collate([i]) for i in range(len(indexed))}
        for micro_batch in step:
            got = streamed.collate(micro_batch)
            assert_same_batches([got], [by_id[got["sample_ids"][0]]])


# ---------------------------------------------------------------- audio


@pytest.fixture(scope="module")
def audio_fixtures(tmp_path_factory, media):
    tmp_path = tmp_path_factory.mktemp("audio_formats")
    reference = write_reference(tmp_path / "reference.jsonl", AUDIO_RECORDS, media)
    return reference, format_fixtures(tmp_path, AUDIO_RECORDS, media, ("audio",))


@pytest.mark.parametrize("fmt", ["parquet", "arrow", "json_string", "sharegpt"])
def test_audio_formats_give_the_reference_jsonls_tokens_features_and_loss(audio_bundle, audio_fixtures, tmp_path, fmt):
    reference_path, fixtures = audio_fixtures

    def build(path):
        return build_sft_dataset(audio_bundle.tokenizer, DataSettings(path, packing_length=4096, num_proc=1,
                                                                      cache_dir=tmp_path / "cache"), **audio_bundle.data_inputs())

    reference, dataset = build(reference_path), build(fixtures[fmt])
    assert dataset.stats["audios"] == reference.stats["audios"] == 3
    got, expected = batches(dataset), batches(reference)
    assert_same_batches(got, expected)
    assert "audio_features" in expected[0]
    torch.testing.assert_close(step1_loss(audio_bundle, got[0]), step1_loss(audio_bundle, expected[0]), rtol=0, atol=0)


# ---------------------------------------------------------------- sources, check


def test_a_hub_folder_reads_its_train_split_in_order(vl_fixtures):
    (entry,) = resolve_sources(vl_fixtures[1]["hub_folder"])
    assert [f.path.name for f in entry.files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]


def test_unknown_data_format_is_refused_naming_the_entry(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": []}])
    with pytest.raises(DataSourceError, match=r"datasets\[0\]: unknown data_format 'llava'; expected one of auto"):
        resolve_sources(write_yaml(tmp_path / "d.yaml", data, "jsonl", tmp_path, data_format="llava"))


def test_check_reports_the_detected_format_of_each_source(vl, vl_fixtures):
    bundle, spec = vl
    out = io.StringIO()
    for fmt, expected in (("parquet", "openai, embedded media"), ("json_string", "openai-json-string, embedded media"),
                          ("sharegpt", "sharegpt")):
        path = vl_fixtures[1][fmt]
        print_report(check_dataset(path, bundle.tokenizer, bundle.processor, spec, num_proc=1), str(path), out)
        assert f"format {expected}):" in out.getvalue()


# ---------------------------------------------------------------- bad input: reason and row


def test_a_forced_format_reads_only_that_shape(vl, tmp_path, media):
    rows = sharegpt_rows(VL_RECORDS[:1], ("image",))
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"d\.jsonl:1: record has no 'messages' key") as caught:
        build_vl(vl, write_yaml(tmp_path / "d.yaml", data, "jsonl", media, data_format="openai"), tmp_path)
    assert caught.value.reason == "no_messages"


def bad_parquet(tmp_path: Path, media_folder: Path) -> tuple[Path, dict[int, str]]:
    """A parquet file whose rows 1, 3, 5, 7 are bad (row -> reason); the others are fine."""
    good = [turn("user", bare("image"), "What?"), turn("assistant", "A circle.")]
    png = (media_folder / "a.png").read_bytes()
    image = {"bytes": png, "path": "a.png"}
    rows = [
        (good, [image]),
        (good, [image, image]),  # 1 part, 2 images
        (good, [image]),
        ('[{"role": "user", "content": "What?"', [image]),  # not JSON
        (good, [image]),
        (good, [{"bytes": b"not a png", "path": "x.png"}]),  # undecodable bytes
        (good, [image]),
        (good, [{"bytes": None, "path": None}]),  # neither bytes nor path
    ]
    path = tmp_path / "bad.parquet"
    hf_dataset([{"messages": m, "images": i} for m, i in rows], ("image",), messages_as_json=True).to_parquet(path)
    return path, {1: "media_count_mismatch", 3: "messages_not_json", 5: "media_unreadable", 7: "bad_media"}


def test_bad_embedded_rows_raise_naming_the_row_and_reason(vl, tmp_path, media):
    path, bad = bad_parquet(tmp_path, media)
    with pytest.raises(DataError) as caught:
        build_vl(vl, path, tmp_path)
    assert (caught.value.where, caught.value.reason) == (f"{path}#1", "media_count_mismatch")
    assert "the messages have 1 image part(s) without a payload but the record's 'images' holds 2" in str(caught.value)


def test_bad_embedded_rows_are_skipped_and_counted_by_reason(vl, tmp_path, media):
    path, bad = bad_parquet(tmp_path, media)
    dataset = build_vl(vl, path, tmp_path, on_error="skip")
    assert dataset.stats["skipped_by_reason"] == {reason: 1 for reason in bad.values()}
    assert sorted(dataset[i].sample_id for i in range(len(dataset))) == [f"{path}#{r}" for r in (0, 2, 4, 6)]
    bundle, spec = vl
    report = check_dataset(path, bundle.tokenizer, bundle.processor, spec, num_proc=1)
    assert {(e.where, e.reason) for e in report.errors} == {(f"{path}#{row}", r) for row, r in bad.items()}
    undecodable = next(e for e in report.errors if e.reason == "media_unreadable")
    assert f"cannot decode image 'images[0] of {path.absolute()}#5'" in str(undecodable)


SHAREGPT_BAD = [
    ({"conversations": [{"from": "human", "value": "<image><image>Hi"}, {"from": "gpt", "value": "Yes."}],
      "image": "a.png"}, "media_count_mismatch", "the messages have 2 image part(s) without a payload but the "
     "record's 'image' holds 1 image(s)"),
    ({"conversations": [{"from": "human", "value": "<image>Hi"}, {"from": "gpt", "value": "Yes."}]},
     "media_count_mismatch", "the conversation has 1 <image> placeholder(s) but the record has no 'image' media"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yes."}], "image": "a.png"},
     "media_count_mismatch", "the messages have 0 image part(s) without a payload but the record's 'image' holds 1"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Yes."}]}, "unknown_role",
     "conversations[1] has unknown 'from' 'bot' (expected one of human, gpt, system"),
    ({"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "Yes."}]}, "bad_content",
     "conversations[0] (human) 'value' must be a string, got int"),
    ({"conversations": "nope"}, "bad_messages", "'conversations' must be a list"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yes."}], "image": 5},
     "bad_media", "'image' must be a path or a {bytes, path} struct"),
]


@pytest.mark.parametrize("row, reason, message", SHAREGPT_BAD)
def test_bad_sharegpt_records_raise_naming_the_line_and_reason(vl, tmp_path, media, row, reason, message):
    good = sharegpt_rows(VL_RECORDS[:1], ("image",))[0]
    data = write_jsonl(tmp_path / "d.jsonl", [good, row])
    with pytest.raises(DataError) as caught:
        build_vl(vl, write_yaml(tmp_path / "d.yaml", data, "jsonl", media), tmp_path)
    assert (caught.value.where, caught.value.reason) == (f"{data}:2", reason)
    assert message in str(caught.value)


def test_sharegpt_system_turns_and_top_level_system_become_the_system_message(vl, tmp_path, media):
    question = [{"from": "human", "value": "<image>What?"}, {"from": "gpt", "value": "A circle."}]
    rows = [{"conversations": [{"from": "system", "value": "Be brief."}, *question], "image": "a.png"},
            {"conversations": question, "system": "Be brief.", "image": "a.png"}]
    reference = [[{"role": "system", "content": "Be brief."},
                  turn("user", {"type": "image_url", "image_url": str(media / "a.png")}, "What?"),
                  {"role": "assistant", "content": "A circle."}]] * 2
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    expected = build_vl(vl, write_jsonl(tmp_path / "r.jsonl", [{"messages": m} for m in reference]), tmp_path)
    got = build_vl(vl, write_yaml(tmp_path / "d.yaml", data, "jsonl", media), tmp_path)
    for i in range(2):
        np.testing.assert_array_equal(got[i].input_ids, expected[i].input_ids)
        np.testing.assert_array_equal(got[i].labels, expected[i].labels)


def test_a_source_changed_after_preparing_fails_at_collate_naming_the_item(vl, tmp_path, media):
    rows = embedded_rows(VL_RECORDS[:1], media, ("image",))
    path = tmp_path / "d.parquet"
    hf_dataset(rows, ("image",)).to_parquet(path)
    dataset = build_vl(vl, path, tmp_path)
    pq.write_table(pq.read_table(path).slice(0, 0), path)  # the row is gone
    with pytest.raises(ValueError, match=r"row 0 is past the end of a 0-row parquet file.*clear the data cache"):
        dataset.collate([0])
