"""Streaming data (data.streaming=true): shards, mixing, online packing, exact resume, errors."""

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmms_engine.data.dataset import build_sft_dataset
from lmms_engine.data.settings import DataSettings
from lmms_engine.data.errors import DataError, DataSourceError
from lmms_engine.data.sources import resolve_sources
from lmms_engine.data.shards import ShardReader
from lmms_engine.models.tokenizer import build_byte_tokenizer
from lmms_engine.train.data_iter import make_step_batches
from lmms_engine.train.prefetch import PrefetchCollator


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def record(i: int, words: int = 5) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": " ".join([f"a{i}"] * words)}]}


def write_jsonl(path, n: int, blank_every: int = 0, bad: dict | None = None, seed: int = 0):
    """n records (record i on its own line), blank lines every `blank_every`, `bad`: line number -> raw text."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        if blank_every and i % blank_every == 0:
            lines.append("")
        lines.append(json.dumps(record(i, int(rng.integers(1, 30)))))
    for line_number, text in (bad or {}).items():
        lines.insert(line_number - 1, text)
    path.write_text("\n".join(lines) + "\n")
    return path


def stream(tokenizer, path, seed=0, **kwargs):
    settings = {"packing_length": 256, "stream_window": 32, "streaming": True, **kwargs}
    return build_sft_dataset(tokenizer, DataSettings(path, **settings), seed=seed)


def ids_of(micro_batches) -> list[list[str]]:
    return [[s.sample_id for s in mb] for mb in micro_batches]


def read_pass(entry, rank, world, count):
    reader = ShardReader(entry, rank, world)
    return [(str(src.path), loc, payload) for src, loc, payload in reader.take(count)]


# ---------------------------------------------------------------- shards


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_jsonl_shards_cover_every_line_once_with_its_line_number(tmp_path, world):
    path = write_jsonl(tmp_path / "d.jsonl", 101, blank_every=7)
    entry = resolve_sources(path)[0]
    lines = path.read_bytes().split(b"\n")
    expected = {n: line + b"\n" for n, line in enumerate(lines, start=1) if line.strip()}
    seen = []
    for rank in range(world):
        reader = ShardReader(entry, rank, world)
        shard = []
        while reader.position.passes == 0:
            shard.extend(reader.take(1))
        seen.extend((loc, payload) for _, loc, payload in shard[:-1])  # the last one is from the next pass
    assert sorted(loc for loc, _ in seen) == sorted(expected)
    assert all(payload == expected[loc] for loc, payload in seen)


@pytest.mark.parametrize("kind", ["parquet", "arrow"])
def test_row_shards_cover_every_row_once(tmp_path, kind):
    records = [{"messages": record(i)["messages"]} for i in range(57)]
    if kind == "parquet":
        path = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=10)
    else:
        import datasets

        path = tmp_path / "d_arrow"
        datasets.Dataset.from_list(records).save_to_disk(str(path))
    entry = resolve_sources(path)[0]
    seen = []
    for rank in range(3):
        low, high = 57 * rank // 3, 57 * (rank + 1) // 3
        taken = read_pass(entry, rank, 3, high - low + 1)
        assert [loc for _, loc, _ in taken] == [*range(low, high), low]  # then the next pass starts
        seen.extend(taken[:-1])
    assert sorted(loc for _, loc, _ in seen) == list(range(57))
    assert all(payload["messages"][0]["content"] == f"question {loc}" for _, loc, payload in seen)


def test_reader_resumes_where_it_stopped_across_files_and_passes(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(3):
        write_jsonl(folder / f"part{k}.jsonl", 11 + k, seed=k)
    entry = resolve_sources(folder)[0]
    reader = ShardReader(entry, 1, 2)
    reader.take(9)
    saved = reader.position.state_dict()
    continued = reader.take(40)  # crosses files and the end of the shard
    resumed = ShardReader(entry, 1, 2, saved).take(40)
    assert [(str(s.path), loc) for s, loc, _ in continued] == [(str(s.path), loc) for s, loc, _ in resumed]
    assert reader.position.passes >= 1


def test_a_rank_without_records_is_an_error_naming_the_entry(tmp_path):
    path = write_jsonl(tmp_path / "tiny.jsonl", 1)
    entry = resolve_sources(path)[0]
    with pytest.raises(DataSourceError, match="rank 1 of 4 has no records"):
        ShardReader(entry, 1, 4).take(1)


# ---------------------------------------------------------------- the stream


def test_stream_packs_within_the_budget_and_keeps_labels(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", 200)
    data = stream(tokenizer, path)
    steps = make_step_batches(data, 2, 0, 1)
    for _ in range(10):
        for mb in steps.next_step():
            batch = data.collate(mb)
            assert batch.input_ids.shape[1] <= 256
            assert batch.sample_ids == [s.sample_id for s in mb]
            assert batch.num_label_tokens > 0


def test_indexed_and_streamed_samples_are_the_same_tokens(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", 50)
    indexed = build_sft_dataset(tokenizer, DataSettings(path, packing_length=256, num_proc=1, cache_dir=tmp_path / "cache"))
    by_id = {indexed[i].sample_id: indexed[i] for i in range(len(indexed))}
    steps = make_step_batches(stream(tokenizer, path, stream_window=50), 1, 0, 1)
    streamed = [s for _ in range(4) for mb in steps.next_step() for s in mb]
    assert streamed
    for sample in streamed:
        np.testing.assert_array_equal(sample.input_ids, by_id[sample.sample_id].input_ids)
        np.testing.assert_array_equal(sample.labels, by_id[sample.sample_id].labels)


@pytest.mark.parametrize("stop_after", [1, 3, 7, 12])
def test_resume_from_a_saved_position_gives_the_same_micro_batches(tokenizer, tmp_path, stop_after):
    path = write_jsonl(tmp_path / "d.jsonl", 90)
    other = write_jsonl(tmp_path / "e.jsonl", 40, seed=5)
    yaml_path = tmp_path / "mix.yaml"
    yaml_path.write_text(f"datasets:\n  - {{path: {path}, data_type: jsonl, weight: 2}}\n"
                         f"  - {{path: {other}, data_type: jsonl}}\n")
    data = stream(tokenizer, yaml_path, seed=3)
    reference = make_step_batches(data, 3, 1, 2)
    for _ in range(stop_after):
        reference.next_step()
    state = json.loads(json.dumps(reference.state_dict()))  # plain data: it goes into a checkpoint
    expected = [ids_of(reference.next_step()) for _ in range(10)]
    resumed = make_step_batches(data, 3, 1, 2, state)
    assert [ids_of(resumed.next_step()) for _ in range(10)] == expected


def test_prefetch_plan_and_steps_share_one_stream(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", 120)
    data = stream(tokenizer, path)
    # grad_accum 6 > the 2 micro-batches one worker prefetches: a step pulls ahead of the plan too.
    direct = make_step_batches(data, 6, 0, 1)
    expected = [direct.next_step() for _ in range(5)]
    steps = make_step_batches(data, 6, 0, 1)
    collator = PrefetchCollator(data.collate, steps.plan(), num_workers=1)
    try:
        for want in expected:
            got = steps.next_step()
            assert ids_of(got) == ids_of(want)
            for mb, mb_want in zip(got, want):
                batch, batch_want = collator.get(mb), data.collate(mb_want)
                assert batch.sample_ids == batch_want.sample_ids
                assert batch.input_ids.equal(batch_want.input_ids)
                assert batch.labels.equal(batch_want.labels)
    finally:
        collator.close()
    assert steps.state_dict() == direct.state_dict()


def test_weights_set_the_mix(tokenizer, tmp_path):
    first = write_jsonl(tmp_path / "first.jsonl", 300)
    second = write_jsonl(tmp_path / "second.jsonl", 30, seed=1)
    yaml_path = tmp_path / "mix.yaml"
    yaml_path.write_text(f"datasets:\n  - {{path: {first}, data_type: jsonl, weight: 3}}\n"
                         f"  - {{path: {second}, data_type: jsonl, weight: 1}}\n")
    steps = make_step_batches(stream(tokenizer, yaml_path, stream_window=200), 50, 0, 1)
    origins = Counter(s.sample_id.rsplit(":", 1)[0].rsplit("/", 1)[1] for _ in range(8) for mb in steps.next_step()
                      for s in mb)
    share = origins["first.jsonl"] / sum(origins.values())
    assert sum(origins.values()) > 1000
    assert abs(share - 0.75) < 0.03, origins


def test_ranks_read_disjoint_records(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", 400)
    data = stream(tokenizer, path, stream_window=50)
    per_rank = []
    for rank in range(2):
        steps = make_step_batches(data, 1, rank, 2)
        per_rank.append({s.sample_id for _ in range(3) for mb in steps.next_step() for s in mb})
    assert per_rank[0] and per_rank[1] and not per_rank[0] & per_rank[1]
    lines = [{int(i.rsplit(":", 1)[1]) for i in ids} for ids in per_rank]
    assert max(lines[0]) <= 200 < min(lines[1])


def test_unpacked_stream_gives_full_micro_batches(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", 100)
    steps = make_step_batches(stream(tokenizer, path, packing=False, micro_batch_size=4), 2, 0, 1)
    for _ in range(5):
        assert [len(mb) for mb in steps.next_step()] == [4, 4]


def test_overlong_samples_are_dropped_or_truncated(tokenizer, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record(0, 400)) + "\n" + json.dumps(record(1, 3)) + "\n")
    for policy, lengths_ok in (("drop", lambda n: n < 64), ("truncate", lambda n: n <= 64)):
        data = stream(tokenizer, path, packing_length=64, overlong=policy, stream_window=2)
        steps = make_step_batches(data, 1, 0, 1)
        samples = [s for _ in range(3) for mb in steps.next_step() for s in mb]
        assert all(lengths_ok(len(s)) for s in samples)
        counters = steps.counters
        assert (counters.dropped_overlong if policy == "drop" else counters.truncated) >= 1
        assert any(s.sample_id.endswith(":2") for s in samples)  # the short record (line 2) stays


# ---------------------------------------------------------------- errors


def test_bad_records_are_skipped_and_counted_or_raised_with_their_line(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", 30, bad={4: "{not json", 9: json.dumps({"messages": []})})
    steps = make_step_batches(stream(tokenizer, path, on_error="skip", stream_window=32), 1, 0, 1)
    steps.next_step()
    assert steps.counters.records == 32
    assert sum(steps.counters.skipped_by_reason.values()) == 2
    raising = make_step_batches(stream(tokenizer, path, on_error="raise", stream_window=32), 1, 0, 1)
    with pytest.raises(DataError, match=r"d\.jsonl:4: "):
        raising.next_step()


def test_a_window_without_usable_samples_is_an_error(tokenizer, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{oops\n" * 10)
    steps = make_step_batches(stream(tokenizer, path, on_error="skip", stream_window=8), 1, 0, 1)
    with pytest.raises(DataSourceError, match="no usable sample"):
        steps.next_step()


def test_unstreamable_sources_and_settings_are_refused(tokenizer, tmp_path):
    json_file = tmp_path / "d.json"
    json_file.write_text(json.dumps([record(0)]))
    with pytest.raises(DataSourceError, match="cannot be streamed; convert to jsonl"):
        stream(tokenizer, json_file)
    data_file = write_jsonl(tmp_path / "d.jsonl", 10)
    yaml_path = tmp_path / "n.yaml"
    yaml_path.write_text(f"datasets:\n  - {{path: {data_file}, data_type: jsonl, num_samples: 5}}\n")
    with pytest.raises(DataSourceError, match="use 'weight'"):
        stream(tokenizer, yaml_path)


def test_a_position_of_another_rank_layout_or_the_indexed_path_is_refused(tokenizer, tmp_path):
    data = stream(tokenizer, write_jsonl(tmp_path / "d.jsonl", 60))
    steps = make_step_batches(data, 1, 0, 2)
    steps.next_step()
    with pytest.raises(ValueError, match="same number of ranks"):
        make_step_batches(data, 1, 0, 4, steps.state_dict())
    with pytest.raises(ValueError, match="data.streaming=false"):
        make_step_batches(data, 1, 0, 1, {"epoch": 0, "index": 3})
