"""Media path escapes (`media_path_escape`, data.allow_path_escape) and the `lmms-data check` tool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lmms_engine.data.check import main
from lmms_engine.data.dataset import build_sft_dataset
from lmms_engine.data.errors import DataError
from lmms_engine.data.settings import DataSettings
from lmms_engine.data.media import resolve_media_path

REPO = Path(__file__).resolve().parents[2]
DEMO_VL_YAML = REPO / "lmms_engine" / "data" / "demo" / "demo_vl.yaml"


def chat(image: str | None = None, answer: str = "A small picture.") -> dict:
    content = [{"type": "text", "text": "What is this?"}]
    if image is not None:
        content.append({"type": "image_url", "image_url": image})
    return {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]}


@pytest.fixture
def folders(tmp_path):
    """tmp/data/media/a.png (inside data_folder) and tmp/outside.png (next to it, outside)."""
    media = tmp_path / "data" / "media"
    media.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 255, (56, 56, 3), dtype=np.uint8)
    for path in (media / "a.png", tmp_path / "outside.png"):
        Image.fromarray(pixels).save(path)
    return tmp_path


# ---------------------------------------------------------------- resolve_media_path


def test_relative_climb_out_of_data_folder_is_refused(folders):
    data_folder = str(folders / "data" / "media")
    with pytest.raises(DataError) as raised:
        resolve_media_path("../../outside.png", data_folder, "d.jsonl:3")
    assert raised.value.reason == "media_path_escape"
    assert "d.jsonl:3" in str(raised.value) and "../../outside.png" in str(raised.value)
    with pytest.raises(DataError, match="media_path_escape|leaves its data_folder"):
        resolve_media_path("../../../../../../etc/passwd", data_folder, "d.jsonl:4")
    # `..` that stays inside is fine; the check is lexical.
    assert resolve_media_path("sub/../a.png", data_folder, "w") == folders / "data" / "media" / "a.png"


def test_escape_allowed_with_flag_and_absolute_paths_always(folders):
    data_folder = str(folders / "data" / "media")
    outside = folders / "outside.png"
    assert resolve_media_path("../../outside.png", data_folder, "w", allow_escape=True) == outside
    assert resolve_media_path(str(outside), data_folder, "w") == outside
    assert resolve_media_path(outside.as_uri(), data_folder, "w") == outside


def test_escape_relative_to_working_directory_without_data_folder(folders, monkeypatch):
    monkeypatch.chdir(folders / "data")
    with pytest.raises(DataError) as raised:
        resolve_media_path("../outside.png", None, "w")
    assert raised.value.reason == "media_path_escape"


# ---------------------------------------------------------------- through the dataset


@pytest.fixture(scope="module")
def vl():
    from lmms_engine.models.qwen2_5_vl import build_builtin_processor
    from lmms_engine.models.mrope import MropeSpec

    processor = build_builtin_processor()
    convert = processor.tokenizer.convert_tokens_to_ids
    spec = MropeSpec(
        image_token_id=convert("<|image_pad|>"),
        video_token_id=convert("<|video_pad|>"),
        spatial_merge_size=2,
        tokens_per_second=2,
    )
    return {"tokenizer": processor.tokenizer, "processor": processor, "mrope_spec": spec}


def write_dataset(root: Path, records: list[dict]) -> Path:
    jsonl = root / "data" / "chat.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    yaml_path = root / "data" / "ds.yaml"
    media = root / "data" / "media"
    yaml_path.write_text(f"datasets:\n  - path: {jsonl}\n    data_folder: {media}\n    data_type: jsonl\n")
    return yaml_path


def test_dataset_escape_follows_on_error_and_flag(folders, vl, tmp_path):
    records = [chat("a.png"), chat("../../outside.png"), chat(str(folders / "outside.png"))]
    yaml_path = write_dataset(folders, records)
    common = dict(dataset_path=yaml_path, packing=False, micro_batch_size=1, num_proc=1, cache_dir=tmp_path / "c")
    with pytest.raises(DataError) as raised:
        build_sft_dataset(settings=DataSettings(**common), **vl)
    assert raised.value.reason == "media_path_escape" and raised.value.where.endswith("chat.jsonl:2")
    skipped = build_sft_dataset(settings=DataSettings(on_error="skip", **common), **vl)
    assert skipped.stats["skipped_by_reason"] == {"media_path_escape": 1} and len(skipped) == 2
    allowed = build_sft_dataset(settings=DataSettings(allow_path_escape=True, **common), **vl)  # a new cache entry, not the skip one
    assert allowed.stats["skipped"] == 0 and len(allowed) == 3


# ---------------------------------------------------------------- lmms-data check


def test_check_reports_every_bad_record(folders, capsys, monkeypatch):
    monkeypatch.chdir(folders / "data" / "media")  # no data_folder: media paths are relative to here
    records = [chat("a.png"), chat(answer="fine, text only")] * 3
    records.insert(2, {"no_messages": True})
    records.insert(5, chat("../../outside.png"))
    jsonl = folders / "data" / "chat.jsonl"
    lines = [json.dumps(r) for r in records]
    jsonl.write_text("\n".join(lines[:4] + ["{not json"] + lines[4:]) + "\n")
    # lines: 1 ok, 2 ok, 3 no 'messages', 4 ok, 5 malformed, 6 ok, 7 escape, 8.. ok
    code = main(["check", str(jsonl), "--num-proc", "1"])
    out = capsys.readouterr().out
    assert code == 1
    assert f"{jsonl}:3: [" in out
    assert f"{jsonl}:5: [malformed_json]" in out
    assert f"{jsonl}:7: [media_path_escape]" in out  # no data_folder: under the working directory
    assert "records:        9" in out and "valid samples:  6" in out
    assert "result:         3 bad record(s)" in out


def test_check_flags_path_escape_under_data_folder(folders, capsys):
    yaml_path = write_dataset(folders, [chat("a.png"), chat("../../outside.png"), chat("../../../etc/x.png")])
    assert main(["check", str(yaml_path), "--num-proc", "1"]) == 1
    out = capsys.readouterr().out
    assert out.count("[media_path_escape]") == 2 and "chat.jsonl:2:" in out and "chat.jsonl:3:" in out
    assert "skipped:        2 (media_path_escape: 2)" in out


def test_check_demo_data_is_clean(capsys):
    assert main(["check", str(DEMO_VL_YAML)]) == 0
    out = capsys.readouterr().out
    assert "records:        600" in out and "valid samples:  600" in out and "skipped:        0" in out
    assert "tokens/sample:  min" in out and "p95" in out and "> 2k: 0" in out
    assert "images 267" in out and "result:         OK" in out


def test_media_option_defaults_are_the_data_config_defaults():
    """lmms-data check measures media with MediaOptions(); training with the data config's keys (DataSettings)."""
    import dataclasses
    import inspect

    from lmms_engine.data.modalities import MediaOptions

    parameters = inspect.signature(DataSettings).parameters
    for option in dataclasses.fields(MediaOptions):
        assert parameters[option.name].default == option.default, option.name
