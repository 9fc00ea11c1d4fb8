"""Sources: dataset yaml, path resolution, every file format, and every kind of bad input."""

import json
import logging
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmms_engine.data.dataset import build_sft_dataset
from lmms_engine.data.settings import DataSettings
from lmms_engine.data.errors import DataError, DataSourceError
from lmms_engine.data.sources import resolve_sources
from lmms_engine.models.tokenizer import build_byte_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def chat(i):
    return {
        "messages": [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    }


def write_jsonl(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def build(tokenizer, path, tmp_path, seed=0, **kwargs):
    kwargs = {"packing_length": 512, "num_proc": 1, "cache_dir": tmp_path / "cache", **kwargs}
    return build_sft_dataset(tokenizer, DataSettings(path, **kwargs), seed=seed)


def sample_texts(tokenizer, dataset):
    return sorted(tokenizer.decode(dataset[i].input_ids.tolist()) for i in range(dataset.num_samples))


BAD_RECORDS = [
    ('{"messages": [{"role": "user"', "malformed_json", "invalid JSON"),
    ({"conversation": []}, "no_messages", "record has no 'messages' key"),
    ({"messages": []}, "empty_conversation", "empty list"),
    ({"messages": "hi"}, "bad_messages", "must be a list"),
    ([1, 2], "not_a_dict", "must be a JSON object"),
    (
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "tool", "content": "x"},
                {"role": "assistant", "content": "a"},
            ]
        },
        "unknown_role",
        "messages[1] has unknown role 'tool'",
    ),
    ({"messages": [{"role": "user", "content": "only a question"}]}, "no_assistant", "no assistant turn"),
    (
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
        "no_assistant",
        "non-empty",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": "a.png"}]},
                {"role": "assistant", "content": "a"},
            ]
        },
        "media_on_text_model",
        "text only",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "gif", "gif": "a"}]},
                {"role": "assistant", "content": "a"},
            ]
        },
        "bad_part",
        "unknown type 'gif'",
    ),
    (
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]},
        "bad_content",
        "'content' must be",
    ),
    (
        {"messages": [{"role": "assistant", "content": "a"}]},
        "assistant_first",
        "messages[0] is an assistant turn",
    ),
]


@pytest.mark.parametrize("bad, reason, problem", BAD_RECORDS, ids=[r for _, r, _ in BAD_RECORDS])
def test_bad_record_raises_naming_file_line_and_problem(tokenizer, tmp_path, bad, reason, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [chat(0), "", bad, chat(1)])  # bad record on line 3
    with pytest.raises(DataError) as caught:
        build(tokenizer, path, tmp_path)
    assert str(caught.value).startswith(f"{path}:3: ")
    assert problem in str(caught.value)
    assert caught.value.reason == reason


@pytest.mark.parametrize("bad, reason, problem", BAD_RECORDS, ids=[r for _, r, _ in BAD_RECORDS])
def test_bad_record_is_skipped_and_counted(tokenizer, tmp_path, caplog, bad, reason, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [chat(0), bad, chat(1), bad])
    with caplog.at_level(logging.WARNING, logger="lmms_engine.data"):
        dataset = build(tokenizer, path, tmp_path, on_error="skip")
    assert dataset.stats["skipped_by_reason"] == {reason: 2}
    assert dataset.stats["skipped"] == 2 and dataset.stats["records"] == 4 and dataset.num_samples == 2
    assert f"{path}:2: " in caplog.text and f"{path}:4: " in caplog.text


def test_missing_source_in_yaml_names_both_candidates_even_with_skip(tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    yaml_path = tmp_path / "conf" / "data.yaml"
    yaml_path.write_text("datasets:\n  - path: nowhere.jsonl\n    data_type: jsonl\n")
    with pytest.raises(DataSourceError) as caught:
        build(tokenizer, yaml_path, tmp_path, on_error="skip")
    message = str(caught.value)
    assert str(yaml_path) in message and "datasets[0]" in message
    assert str(tmp_path / "nowhere.jsonl") in message and str(tmp_path / "conf" / "nowhere.jsonl") in message
    assert isinstance(caught.value, DataError)


def test_missing_dataset_path_and_unknown_data_type(tokenizer, tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        build(tokenizer, tmp_path / "absent.jsonl", tmp_path)
    write_jsonl(tmp_path / "a.jsonl", [chat(0)])
    yaml_path = tmp_path / "data.yaml"
    yaml_path.write_text(f"datasets:\n  - path: {tmp_path / 'a.jsonl'}\n    data_type: csv\n")
    with pytest.raises(DataSourceError, match=r"data\.yaml: datasets\[0\]: unknown data_type 'csv'"):
        build(tokenizer, yaml_path, tmp_path, on_error="skip")


def test_yaml_entry_rejects_unknown_keys_and_weight_with_num_samples(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [chat(0)])
    yaml_path = tmp_path / "data.yaml"
    yaml_path.write_text("datasets:\n  - {path: a.jsonl, data_type: jsonl, weights: 2}\n")
    with pytest.raises(DataSourceError, match="unknown key.*weights"):
        resolve_sources(yaml_path)
    yaml_path.write_text("datasets:\n  - {path: a.jsonl, data_type: jsonl, weight: 2, num_samples: 3}\n")
    with pytest.raises(DataSourceError, match="at most one of 'weight' and 'num_samples'"):
        resolve_sources(yaml_path)
    yaml_path.write_text("datasets:\n  - {path: a.jsonl, data_type: jsonl, weight: -1}\n")
    with pytest.raises(DataSourceError, match="'weight' must be a positive number"):
        resolve_sources(yaml_path)


def test_relative_path_prefers_working_directory_then_yaml_folder(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    write_jsonl(tmp_path / "conf" / "a.jsonl", [chat(0)])
    yaml_path = tmp_path / "conf" / "data.yaml"
    yaml_path.write_text("datasets:\n  - path: a.jsonl\n    data_folder: media\n    data_type: jsonl\n")
    monkeypatch.chdir(tmp_path)
    (entry,) = resolve_sources(yaml_path)
    assert entry.files[0].path == tmp_path / "conf" / "a.jsonl"
    assert entry.files[0].data_folder == "media"
    write_jsonl(tmp_path / "a.jsonl", [chat(1)])
    (entry,) = resolve_sources(yaml_path)
    assert entry.files[0].path.resolve() == (tmp_path / "a.jsonl").resolve()


def test_yaml_mixes_sources_with_weight_and_num_samples(tokenizer, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [chat(i) for i in range(10)])
    write_jsonl(tmp_path / "b.jsonl", [chat(100 + i) for i in range(8)])
    yaml_path = tmp_path / "mix.yaml"
    yaml_path.write_text(
        "datasets:\n"
        "  - {path: a.jsonl, data_folder: '', data_type: jsonl, weight: 2.5}\n"
        "  - {path: b.jsonl, data_folder: null, data_type: jsonl, num_samples: 3}\n"
    )
    dataset = build(tokenizer, yaml_path, tmp_path, seed=3)
    ids = [dataset[i].sample_id for i in range(dataset.num_samples)]
    from_a = Counter(i for i in ids if "a.jsonl" in i)
    from_b = Counter(i for i in ids if "b.jsonl" in i)
    assert sum(from_a.values()) == 25 and len(from_a) == 10
    assert sorted(from_a.values()) == [2] * 5 + [3] * 5  # 2 full copies + 5 of 10 drawn with the seed
    assert sum(from_b.values()) == 3 and set(from_b.values()) == {1}
    assert dataset.num_samples == dataset.stats["samples"] == 28 and dataset.stats["records"] == 18
    again = build(tokenizer, yaml_path, tmp_path, seed=3)
    assert [again[i].sample_id for i in range(again.num_samples)] == ids


def test_num_samples_above_the_source_size_repeats(tokenizer, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [chat(i) for i in range(4)])
    yaml_path = tmp_path / "mix.yaml"
    yaml_path.write_text("datasets:\n  - {path: a.jsonl, data_type: jsonl, num_samples: 10}\n")
    dataset = build(tokenizer, yaml_path, tmp_path)
    counts = Counter(dataset[i].sample_id for i in range(dataset.num_samples))
    assert sorted(counts.values()) == [2, 2, 3, 3]


def test_json_arrow_parquet_and_folder_sources_match_jsonl(tokenizer, tmp_path):
    import datasets

    records = [chat(i) for i in range(6)]
    reference = sample_texts(
        tokenizer, build(tokenizer, write_jsonl(tmp_path / "r.jsonl", records), tmp_path)
    )
    (tmp_path / "r.json").write_text(json.dumps(records))
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "arrow"))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "r.parquet")
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "part1.jsonl", records[:3])
    write_jsonl(folder / "part2.jsonl", records[3:])
    for path in ("r.json", "arrow", "r.parquet", "folder"):
        assert sample_texts(tokenizer, build(tokenizer, tmp_path / path, tmp_path)) == reference, path


def test_arrow_rows_with_null_struct_fields_and_record_index_errors(tokenizer, tmp_path):
    import datasets

    text = lambda s: {"type": "text", "text": s, "image_url": None}  # noqa: E731  arrow fills unused keys with null
    records = [
        {
            "messages": [
                {"role": "user", "content": [text("q")]},
                {"role": "assistant", "content": [text("a")]},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [text("q")]},
                {"role": "user", "content": [text("no answer")]},
            ]
        },
    ]
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "arrow"))
    with pytest.raises(DataError, match=r"arrow#1: conversation has no assistant turn"):
        build(tokenizer, tmp_path / "arrow", tmp_path)
    dataset = build(tokenizer, tmp_path / "arrow", tmp_path, on_error="skip")
    assert dataset.num_samples == 1 and dataset[0].sample_id.endswith("arrow#0")
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "r.parquet")
    with pytest.raises(DataError, match=r"r\.parquet#1: "):
        build(tokenizer, tmp_path / "r.parquet", tmp_path)


def test_json_source_must_be_a_list(tokenizer, tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"data": [chat(0)]}))
    with pytest.raises(DataSourceError, match="must hold a list of records"):
        build(tokenizer, tmp_path / "r.json", tmp_path, on_error="skip")


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "[" + "9" * 5000 + "]"])
def test_json_source_too_deep_or_with_a_huge_integer_names_the_file(tokenizer, tmp_path, text):
    (tmp_path / "r.json").write_text(text)
    with pytest.raises(DataSourceError, match=r"r\.json: invalid JSON file"):
        build(tokenizer, tmp_path / "r.json", tmp_path, on_error="skip")


def test_all_records_bad_is_an_error_even_with_skip(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ["{nope", {"messages": []}])
    with pytest.raises(DataSourceError, match="only 0 usable samples"):
        build(tokenizer, path, tmp_path, on_error="skip")


def test_a_packing_length_below_every_sample_says_the_length_needed(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [chat(i) for i in range(20)])
    lengths = sorted(len(build(tokenizer, path, tmp_path)[i].input_ids) for i in range(20))
    with pytest.raises(DataSourceError) as err:
        build(tokenizer, path, tmp_path, packing_length=8, micro_batch_size=4)
    assert str(err.value) == (f"{path}: only 0 usable samples: 20 samples were longer than data.packing_length=8 tokens "
                              f"and dropped; set data.packing_length>={lengths[-1]} (the longest sample; the shortest has "
                              f"{lengths[0]} tokens) or data.overlong=truncate")
    build(tokenizer, path, tmp_path, packing_length=lengths[-1])  # the length it names is enough


def test_fewer_samples_than_a_padded_micro_batch_names_micro_batch_size(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [chat(i) for i in range(3)])
    with pytest.raises(DataSourceError, match=r"only 3 usable samples: a padded micro-batch holds "
                                              r"data\.micro_batch_size=4 samples; lower data\.micro_batch_size or add data$"):
        build(tokenizer, path, tmp_path, packing=False, micro_batch_size=4)


def test_sample_ids_name_file_and_line(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [chat(0), "", chat(1)])
    dataset = build(tokenizer, path, tmp_path)
    assert sorted(dataset[i].sample_id for i in range(2)) == [f"{path}:1", f"{path}:3"]
    assert np.all(dataset[0].input_ids >= 0)
