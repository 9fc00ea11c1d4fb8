"""Audio in the SFT data pipeline (Qwen2-Audio): decoding, clips of long audio, placeholder
expansion, the audio batch keys, bad audio files, the cache, position ids, stats."""

from __future__ import annotations

import copy
import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from lmms_engine.data import prepare
from lmms_engine.data.chat import IGNORE_INDEX
from lmms_engine.data.dataset import build_sft_dataset
from lmms_engine.data.settings import DataSettings
from lmms_engine.data.errors import DataError
from lmms_engine.data.media_audio import AudioSettings, decode_audio, mel_frames
from lmms_engine.models.qwen2_audio.encoder import feat_extract_output_lengths
from lmms_engine.models.mrope import MropeSpec
from lmms_engine.models.qwen2_audio import build_builtin_audio_processor
from lmms_engine.models.tokenizer import CHATML_TEMPLATE
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parents[2]
DEMO_AUDIO = REPO / "lmms_engine" / "data" / "demo" / "media" / "audio"
DEMO_AUDIO_YAML = REPO / "lmms_engine" / "data" / "demo" / "demo_audio.yaml"
RATE = 16000
SECONDS = {"a.wav": 0.5, "b.wav": 1.0, "c.wav": 2.37, "d.wav": 7.0}


@pytest.fixture(scope="module")
def processor():
    return build_builtin_audio_processor()


@pytest.fixture(scope="module")
def ids(processor):
    convert = processor.tokenizer.convert_tokens_to_ids
    return {
        name: convert(token)
        for name, token in (("audio", "<|AUDIO|>"), ("bos", "<|audio_bos|>"), ("eos", "<|audio_eos|>"))
    }


def tone(seconds: float, rate: int = RATE, frequency: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return 0.3 * np.sin(2 * np.pi * frequency * t)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    """PCM16 wav; samples (n,) mono or (n, channels)."""
    samples = samples.reshape(len(samples), -1 if samples.size else 1)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(samples.shape[1])
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(np.round(samples * 32767).astype(np.int16).tobytes())
    return path


@pytest.fixture
def media(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    for name, seconds in SECONDS.items():
        write_wav(folder / name, tone(seconds))
    return folder


def user(*parts) -> dict:
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return {"role": "user", "content": content}


def audio(url: str) -> dict:
    return {"type": "audio_url", "audio_url": url}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_data(tmp_path: Path, records: list[list[dict]], media_folder: Path) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in records))
    path = tmp_path / "data.yaml"
    path.write_text(f"datasets:\n  - path: {data}\n    data_folder: {media_folder}\n    data_type: jsonl\n")
    return path


def build(processor, dataset_path, tmp_path, tokenizer=None, mrope_spec=None, **kwargs):
    kwargs = {"packing_length": 4096, "num_proc": 1, "cache_dir": tmp_path / "cache", **kwargs}
    return build_sft_dataset(tokenizer or processor.tokenizer, DataSettings(dataset_path, **kwargs), processor=processor,
                             mrope_spec=mrope_spec)


def by_line(dataset) -> dict:
    return {int(dataset[i].sample_id.rsplit(":", 1)[1]): dataset[i] for i in range(dataset.num_samples)}


def tokens_of(seconds: float, chunk_seconds: float = 30.0) -> int:
    """Expected <|AUDIO|> tokens: the formula per 30 s clip (L = ceil(n / 160))."""
    n, chunk = round(seconds * RATE), round(chunk_seconds * RATE)
    clips = [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])
    return sum(int(feat_extract_output_lengths(-(-c // 160))[1]) for c in clips)


def runs(input_ids: np.ndarray, token_id: int) -> list[tuple[int, int]]:
    mask = np.concatenate([[0], (input_ids == token_id).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(mask))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


@pytest.fixture
def mixed(processor, media, tmp_path):
    """Text, one audio, two audios, audio in a later turn; packed."""
    records = [
        [user("Hello"), assistant("Hi there.")],
        [user(audio("c.wav"), "What is the pitch?"), assistant("A4.")],
        [user("Compare", audio("a.wav"), audio("d.wav")), assistant("Same note.")],
        [
            user(audio("b.wav"), "And?"),
            assistant("A4."),
            user("Next", audio("c.wav")),
            assistant("A4 again."),
        ],
    ]
    return build(processor, write_data(tmp_path, records, media), tmp_path)


# ---------------------------------------------------------------- arithmetic


def test_mel_frames_equal_the_extractors_attention_mask(processor):
    lengths = [1, 159, 160, 161, 320, 321, 1600, 16000, 16159, 16160, 37_920, 479_999, 480_000]
    out = processor.feature_extractor(
        [np.zeros(n, dtype=np.float32) for n in lengths],
        sampling_rate=RATE,
        padding="max_length",
        return_attention_mask=True,
        return_tensors="np",
    )
    settings = AudioSettings(1, None, RATE, 160, 3000, 128, 480_000)
    assert [mel_frames(n, settings) for n in lengths] == out["attention_mask"].sum(-1).tolist()


def test_placeholders_expand_to_the_encoder_output_length_and_are_never_trained(ids, mixed):
    samples = by_line(mixed)
    for line, seconds in ((2, [SECONDS["c.wav"]]), (3, [SECONDS["a.wav"], SECONDS["d.wav"]])):
        sample = samples[line]
        found = runs(sample.input_ids, ids["audio"])
        assert [stop - start for start, stop in found] == [tokens_of(s) for s in seconds]
        for start, stop in found:  # each part's run sits inside its own <|audio_bos|> ... <|audio_eos|>
            assert sample.input_ids[start - 1] == ids["bos"] and sample.input_ids[stop] == ids["eos"]
        assert (sample.labels[sample.input_ids == ids["audio"]] == IGNORE_INDEX).all()
        assert [m.kind for m in sample.media] == ["audio"] * len(seconds)
    assert not samples[1].media and ids["audio"] not in samples[1].input_ids


def test_a_clip_longer_than_30_s_is_split_into_clips_of_30_s(processor, ids, tmp_path):
    data = write_data(
        tmp_path, [[user(audio("c_major_scale_35s.flac"), "Notes?"), assistant("A scale.")]], DEMO_AUDIO
    )
    dataset = build(processor, data, tmp_path, micro_batch_size=1)
    sample = dataset[0]
    (run,) = runs(sample.input_ids, ids["audio"])  # one part: its clips' tokens one after another
    assert run[1] - run[0] == 750 + 125 == tokens_of(35.0)
    batch = dataset.collate([0])
    assert batch.audio_lengths.tolist() == [3000, 500]
    assert batch.audio_frames.tolist() == [3000, 502]
    assert batch.audio_features.shape == (128, 3502)
    assert dataset.stats["audios"] == 1 and dataset.stats["audio_clips"] == 2
    assert dataset.stats["audio_seconds"] == pytest.approx(35.0)


def test_audio_max_seconds_sets_the_clip_length(processor, ids, tmp_path):
    data = write_data(
        tmp_path, [[user(audio("c_major_scale_35s.flac"), "Notes?"), assistant("A scale.")]], DEMO_AUDIO
    )
    dataset = build(processor, data, tmp_path, micro_batch_size=1, audio_max_seconds=10.0)
    assert (dataset[0].input_ids == ids["audio"]).sum() == tokens_of(35.0, chunk_seconds=10.0)
    assert dataset.collate([0]).audio_lengths.tolist() == [1000, 1000, 1000, 500]
    with pytest.raises(ValueError, match="audio_max_seconds"):
        build(processor, data, tmp_path, micro_batch_size=1, audio_max_seconds=31.0)


# ---------------------------------------------------------------- batches


def test_audio_features_are_the_extractors_frames_cut_to_valid_plus_context(processor, media, mixed):
    batch = mixed.collate([0, 1, 2, 3])  # placeholder order: c | a d | b c
    order = ["c.wav", "a.wav", "d.wav", "b.wav", "c.wav"]
    clips = [decode_audio(media / name, RATE, name) for name in order]
    out = processor.feature_extractor(
        clips, sampling_rate=RATE, padding="max_length", return_attention_mask=True, return_tensors="pt"
    )
    lengths = out["attention_mask"].sum(-1)
    assert (
        batch.audio_lengths.tolist()
        == lengths.tolist()
        == [-(-round(SECONDS[n] * RATE) // 160) for n in order]
    )
    assert batch.audio_frames.tolist() == (lengths + 2).clamp(max=3000).tolist()
    features = batch.audio_features
    assert features.dtype == torch.float32 and features.shape == (128, int(batch.audio_frames.sum()))
    expected = torch.cat(
        [out["input_features"][i, :, :t] for i, t in enumerate(batch.audio_frames.tolist())], 1
    )
    torch.testing.assert_close(features, expected.float())
    placeholders = int((batch.input_ids == mixed._media.support.audio.audio_token_id).sum())
    assert placeholders == sum(int(feat_extract_output_lengths(n)[1]) for n in lengths.tolist())


def test_packed_and_padded_audio_batches_keep_1d_positions(processor, media, mixed, tmp_path):
    packed = mixed.collate([0, 1, 2])
    assert packed.position_ids.shape == packed.input_ids.shape  # (1, total): no mrope rows
    lengths = np.diff(packed.cu_seqlens.numpy())
    assert packed.position_ids[0].tolist() == np.concatenate([np.arange(n) for n in lengths]).tolist()
    text_only = mixed.collate([0])
    assert not {"audio_features", "audio_frames", "audio_lengths"} & set(text_only.fields())
    padded = build(processor, mixed_path(tmp_path), tmp_path, packing=False, micro_batch_size=2)
    batch = padded.collate([0, 1])
    assert batch.position_ids.shape == batch.input_ids.shape
    assert batch.audio_lengths.tolist() == [
        mel_frames(round(SECONDS["c.wav"] * RATE), padded._media.support.audio)
    ]


def mixed_path(tmp_path: Path) -> Path:
    return tmp_path / "data.yaml"


def test_audio_with_an_mrope_spec_gets_text_like_3d_positions(processor, media, tmp_path):
    data = write_data(tmp_path, [[user(audio("b.wav"), "Pitch?"), assistant("A4.")]], media)
    spec = MropeSpec(
        image_token_id=10**6, video_token_id=10**6 + 1, spatial_merge_size=2, tokens_per_second=2.0
    )
    dataset = build(processor, data, tmp_path, micro_batch_size=1, mrope_spec=spec)
    batch = dataset.collate([0])
    n = batch.input_ids.shape[1]
    assert batch.position_ids.shape == (3, 1, n)
    assert (batch.position_ids == torch.arange(n)).all()
    assert batch.audio_features is not None


def test_resampled_44k_stereo_audio(processor, ids, tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    left = tone(2.0, rate=44100)
    write_wav(folder / "stereo.wav", np.stack([left, np.zeros_like(left)], axis=1), rate=44100)
    decoded = decode_audio(folder / "stereo.wav", RATE, "stereo")
    assert decoded.dtype == np.float32 and abs(len(decoded) - 2 * RATE) <= 16
    assert np.abs(decoded).max() == pytest.approx(0.15, abs=0.01)  # the mean of a 0.3 tone and silence
    spectrum = np.abs(np.fft.rfft(decoded))
    assert np.argmax(spectrum) * RATE / len(decoded) == pytest.approx(440.0, abs=1.0)
    data = write_data(tmp_path, [[user(audio("stereo.wav"), "Pitch?"), assistant("A4.")]], folder)
    dataset = build(processor, data, tmp_path, micro_batch_size=1)
    (item,) = dataset[0].media
    assert item.sampling_rate == RATE and item.audio_samples == len(decoded)
    assert (dataset[0].input_ids == ids["audio"]).sum() == feat_extract_output_lengths(
        -(-len(decoded) // 160)
    )[1]


# ---------------------------------------------------------------- templates and kinds


def test_a_template_without_audio_parts_renders_them_as_placeholder_text(processor, media, tmp_path):
    data = write_data(tmp_path, [[user("Hear", audio("b.wav")), assistant("A4.")]], media)
    native = build(processor, data, tmp_path, micro_batch_size=1)
    tokenizer = _copy_with_template(processor.tokenizer, CHATML_TEMPLATE)  # renders text parts only
    fallback = build(processor, data, tmp_path, tokenizer=tokenizer, micro_batch_size=1)
    assert fallback._media.support.audio.audio_text == "<|audio_bos|><|AUDIO|><|audio_eos|>"
    assert native._media.support.audio.audio_text is None
    np.testing.assert_array_equal(native[0].input_ids, fallback[0].input_ids)
    np.testing.assert_array_equal(native[0].labels, fallback[0].labels)


def _copy_with_template(tokenizer, template: str):
    copied = copy.deepcopy(tokenizer)
    copied.chat_template = template
    return copied


def test_image_parts_for_an_audio_processor_are_unsupported(processor, media, tmp_path):
    records = [
        [user({"type": "image_url", "image_url": "x.png"}, "What?"), assistant("A shape.")],
        [user(audio("b.wav"), "Pitch?"), assistant("A4.")],
    ]
    data = write_data(tmp_path, records, media)
    with pytest.raises(DataError, match=r"data.jsonl:1: record has image parts") as caught:
        build(processor, data, tmp_path, micro_batch_size=1)
    assert caught.value.reason == "media_unsupported"
    dataset = build(processor, data, tmp_path, micro_batch_size=1, on_error="skip")
    assert dataset.stats["skipped_by_reason"] == {"media_unsupported": 1}


# ---------------------------------------------------------------- bad audio and the cache


@pytest.mark.parametrize(
    ("file", "reason"),
    [
        ("missing.wav", "media_missing"),
        ("garbage.wav", "media_unreadable"),
        ("empty.wav", "media_unreadable"),
    ],
)
def test_bad_audio_raises_naming_record_and_file(processor, media, tmp_path, file, reason):
    (media / "garbage.wav").write_bytes(b"RIFF this is not audio at all" * 10)
    write_wav(media / "empty.wav", np.zeros(0))
    records = [
        [user(audio("b.wav"), "Pitch?"), assistant("A4.")],
        [user(audio(file), "Pitch?"), assistant("A4.")],
    ]
    data = write_data(tmp_path, records, media)
    with pytest.raises(DataError, match=rf"data.jsonl:2: .*{file}") as caught:
        build(processor, data, tmp_path, micro_batch_size=1)
    assert caught.value.reason == reason


def test_bad_audio_is_skipped_and_counted(processor, media, tmp_path):
    (media / "garbage.wav").write_bytes(b"\x00\x01garbage" * 50)
    records = [
        [user(audio("b.wav"), "Pitch?"), assistant("A4.")],
        [user(audio("missing.wav"), "Pitch?"), assistant("A4.")],
        [user(audio("garbage.wav"), "Pitch?"), assistant("A4.")],
        [user(audio("https://example.com/x.wav"), "Pitch?"), assistant("A4.")],
    ]
    dataset = build(
        processor, write_data(tmp_path, records, media), tmp_path, micro_batch_size=1, on_error="skip"
    )
    assert dataset.num_samples == 1
    assert dataset.stats["skipped_by_reason"] == {
        "media_missing": 1,
        "media_unreadable": 1,
        "media_url_unsupported": 1,
    }


def test_cache_round_trip_gives_identical_batches(processor, media, mixed, tmp_path, monkeypatch):
    def no_tokenizing(*args, **kwargs):
        raise AssertionError("should have been served from the cache")

    monkeypatch.setattr(prepare, "tokenize_file", no_tokenizing)
    cached = build(processor, mixed_path(tmp_path), tmp_path)
    assert cached.stats == mixed.stats
    for k in range(mixed.num_samples):
        assert cached[k].media == mixed[k].media
    first, again = mixed.collate([0, 1, 2, 3]), cached.collate([0, 1, 2, 3])
    for key in ("input_ids", "position_ids", "labels", "audio_features", "audio_frames", "audio_lengths"):
        torch.testing.assert_close(getattr(again, key), getattr(first, key))


def test_audio_settings_are_part_of_the_cache_key(processor, media, mixed, tmp_path):
    shorter = build(processor, mixed_path(tmp_path), tmp_path, audio_max_seconds=1.0)
    assert shorter.stats["audio_clips"] > mixed.stats["audio_clips"] == mixed.stats["audios"]


def test_an_audio_file_changed_after_caching_fails_at_collate(processor, media, mixed, tmp_path):
    write_wav(media / "c.wav", tone(3.0))
    with pytest.raises(ValueError, match="clear the data cache"):
        mixed.collate([1])


# ---------------------------------------------------------------- stats and demo data


def test_stats_count_audios_seconds_clips_and_tokens(mixed):
    stats = mixed.stats
    assert stats["audios"] == 5 and stats["audio_clips"] == 5
    assert stats["audio_seconds"] == pytest.approx(
        sum(SECONDS[n] for n in ("c.wav", "a.wav", "d.wav", "b.wav", "c.wav"))
    )
    assert stats["audio_tokens"] == sum(
        tokens_of(SECONDS[n]) for n in ("c.wav", "a.wav", "d.wav", "b.wav", "c.wav")
    )
    assert "images" not in stats


def test_demo_audio_yaml_builds_with_text_and_audio(processor, tmp_path):
    """At the bundled `data=demo_audio` packing length, none of its own samples is dropped."""
    packing_length = compose_config("model=tiny_qwen2_audio", "data=demo_audio", shrink=False).data.packing_length
    dataset = build(processor, DEMO_AUDIO_YAML, tmp_path, num_proc=2, packing_length=packing_length)
    assert dataset.stats["audios"] > 100 and dataset.stats["skipped"] == 0
    assert dataset.stats["dropped_overlong"] == 0 and dataset.stats["samples"] == dataset.stats["records"]
    pack = max(dataset.micro_batches(0), key=len)
    batch = dataset.collate(pack)
    assert batch.audio_features.shape[1] == int(batch.audio_frames.sum())
    assert int((batch.input_ids == dataset._media.support.audio.audio_token_id).sum()) == sum(
        int(feat_extract_output_lengths(n)[1]) for n in batch.audio_lengths.tolist()
    )
