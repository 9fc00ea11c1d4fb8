"""SFTDataset: micro-batch determinism, caching, parallel tokenization, the demo data."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

import lmms_engine.data.prepare as prepare
from lmms_engine.data.dataset import build_sft_dataset
from lmms_engine.data.settings import DataSettings
from lmms_engine.models.tokenizer import build_byte_tokenizer

DEMO_YAML = Path(__file__).resolve().parents[2] / "lmms_engine" / "data" / "demo" / "demo.yaml"


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


@pytest.fixture
def data_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.jsonl"
    with path.open("w") as handle:
        for i in range(120):
            answer = " ".join(["word"] * int(rng.integers(1, 40)))
            record = {
                "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": answer}]
            }
            handle.write(json.dumps(record) + "\n")
    return path


def build(tokenizer, path, tmp_path, seed=0, **kwargs):
    kwargs = {"packing_length": 256, "num_proc": 1, "cache_dir": tmp_path / "cache", **kwargs}
    return build_sft_dataset(tokenizer, DataSettings(path, **kwargs), seed=seed)


def all_samples(dataset):
    return [dataset[i] for i in range(dataset.num_samples)]


def test_packed_micro_batches_are_deterministic_and_cover_every_sample(tokenizer, data_file, tmp_path):
    dataset = build(tokenizer, data_file, tmp_path, seed=7)
    other_rank = build(tokenizer, data_file, tmp_path, seed=7)
    epoch0, epoch1 = dataset.micro_batches(0), dataset.micro_batches(1)
    assert epoch0 == dataset.micro_batches(0) == other_rank.micro_batches(0)
    assert epoch0 != epoch1  # pack order reshuffled per epoch ...
    assert sorted(map(sorted, epoch0)) == sorted(map(sorted, epoch1))  # ... packs themselves fixed
    assert sorted(i for batch in epoch0 for i in batch) == list(range(dataset.num_samples))
    assert build(tokenizer, data_file, tmp_path, seed=8).micro_batches(0) != epoch0
    for batch in epoch0:
        collated = dataset.collate(batch)
        assert (
            collated.input_ids.shape[1] <= 256
            and collated.cu_seqlens[-1] == collated.input_ids.shape[1]
        )


def test_padded_micro_batches(tokenizer, data_file, tmp_path):
    dataset = build(tokenizer, data_file, tmp_path, packing=False, micro_batch_size=7, seed=1)
    batches = dataset.micro_batches(3)
    assert not dataset.packing and batches == dataset.micro_batches(3) != dataset.micro_batches(4)
    assert len(batches) == 120 // 7 and all(len(b) == 7 for b in batches)  # last partial batch dropped
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == len(flat)
    collated = dataset.collate(batches[0])
    assert collated.input_ids.shape[0] == 7 and collated.attention_mask is not None
    assert collated.input_ids[collated.attention_mask == 0].eq(tokenizer.pad_token_id).all()


def test_cache_hit_gives_identical_samples_without_tokenizing(tokenizer, data_file, tmp_path, monkeypatch):
    started = time.perf_counter()
    cold = build(tokenizer, data_file, tmp_path)
    cold_s = time.perf_counter() - started
    cache_files = list((tmp_path / "cache" / "sft").glob("*.npz"))
    assert len(cache_files) == 1
    with np.load(cache_files[0], allow_pickle=False) as saved:  # plain arrays, no pickle
        assert saved["input_ids"].dtype == np.int32 and saved["offsets"][-1] == len(saved["labels"])

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("cache miss: tokenized again")

    monkeypatch.setattr(prepare, "tokenize_file", no_tokenizing)
    started = time.perf_counter()
    warm = build(tokenizer, data_file, tmp_path)
    assert time.perf_counter() - started < cold_s
    assert warm.stats == cold.stats and warm.micro_batches(0) == cold.micro_batches(0)
    for a, b in zip(all_samples(cold), all_samples(warm), strict=True):
        assert a.sample_id == b.sample_id
        assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.labels, b.labels)


def test_cache_misses_when_file_tokenizer_or_policy_change(tokenizer, data_file, tmp_path):
    build(tokenizer, data_file, tmp_path)
    build(tokenizer, data_file, tmp_path, on_error="skip")
    other = build_byte_tokenizer()
    other.chat_template = other.chat_template.replace("<|im_end|>\n", "<|im_end|>\n\n")
    build(other, data_file, tmp_path)
    with data_file.open("a") as handle:
        handle.write(
            json.dumps(
                {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
            )
            + "\n"
        )
    os.utime(data_file, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert build(tokenizer, data_file, tmp_path).num_samples == 121
    assert len(list((tmp_path / "cache" / "sft").glob("*.npz"))) == 4


def test_parallel_tokenization_matches_one_process(tokenizer, data_file, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK_SIZE", 16)  # 8 chunks, so workers really run
    serial = build(tokenizer, data_file, tmp_path / "one", num_proc=1)
    parallel = build(tokenizer, data_file, tmp_path / "two", num_proc=2)
    assert parallel.stats == serial.stats
    for a, b in zip(all_samples(serial), all_samples(parallel), strict=True):
        assert a.sample_id == b.sample_id and np.array_equal(a.input_ids, b.input_ids)
        assert np.array_equal(a.labels, b.labels)


def test_parallel_tokenization_raises_the_first_bad_record(tokenizer, data_file, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK_SIZE", 16)
    lines = data_file.read_text().splitlines()
    lines[40], lines[90] = "{broken", '{"messages": []}'
    data_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{data_file}:41: invalid JSON"):
        build(tokenizer, data_file, tmp_path, num_proc=2)
    skipped = build(tokenizer, data_file, tmp_path, num_proc=2, on_error="skip")
    assert skipped.stats["skipped_by_reason"] == {"malformed_json": 1, "empty_conversation": 1}


def test_invalid_settings_are_rejected(tokenizer, data_file, tmp_path):
    for bad, match in [
        ({"on_error": "ignore"}, "on_error"),
        ({"overlong": "wrap"}, "overlong"),
        ({"packing_length": 0}, "packing_length"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            build(tokenizer, data_file, tmp_path, **bad)


def test_demo_data_builds_cleanly(tokenizer, tmp_path):
    dataset = build(tokenizer, DEMO_YAML, tmp_path, packing_length=1024)
    assert dataset.stats["records"] == dataset.num_samples == 400 and dataset.stats["skipped"] == 0
    assert dataset.stats["pack_fill"] > 0.9
    texts = [tokenizer.decode(dataset[i].input_ids.tolist()) for i in range(dataset.num_samples)]
    assert sum("<|im_start|>system" in t for t in texts) > 50
    assert sum(t.count("<|im_start|>assistant") > 1 for t in texts) > 50  # multi-turn
    assert max(len(t.encode()) for t in texts) < 1024
