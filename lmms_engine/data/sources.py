"""Data sources: resolve `data.dataset_path` into files and read their raw records.

`dataset_path` is one of
  * a dataset yaml: `datasets: [{path, data_folder, data_type, weight?, num_samples?}]`;
  * one jsonl / json / parquet / arrow file;
  * a folder: a `datasets.save_to_disk` arrow folder, a folder of jsonl / json / parquet files, or
    a dataset repository as `hf download` leaves it (`data/train-00000-of-00004.parquet`, ...):
    its `train` split, found by the `datasets` library's own file patterns.

Each entry's `data_format` (`auto` by default) says how its records are shaped (formats/): OpenAI
chat `messages` (a list, or a JSON string), or LLaVA / ShareGPT `conversations`.

Reading yields chunks of `(location, payload)`: for jsonl the location is the 1-based line and the
payload the raw line (decoded and validated later, in the worker that tokenizes it); for the other
formats the location is the 0-based record index and the payload the decoded record.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import DataSourceError

DATA_TYPES = ("jsonl", "json", "arrow", "parquet")
# auto: detected per record (formats/__init__.py); the others force one reading.
DATA_FORMATS = ("auto", "openai", "sharegpt")
ENTRY_KEYS = ("path", "data_folder", "data_type", "data_format", "weight", "num_samples")
YAML_SUFFIXES = (".yaml", ".yml")
# Marker files written by datasets.save_to_disk (Dataset and DatasetDict respectively).
ARROW_FOLDER_MARKERS = ("state.json", "dataset_dict.json")


@dataclass(frozen=True)
class SourceFile:
    """One file (or save_to_disk folder) to read; `data_folder` is kept on every record."""

    path: Path
    data_type: str
    data_folder: str | None
    data_format: str = "auto"  # one of DATA_FORMATS

    @property
    def is_line_based(self) -> bool:
        return self.data_type == "jsonl"


@dataclass(frozen=True)
class DatasetEntry:
    """One entry of the dataset yaml (or the whole dataset_path): files sampled together."""

    files: tuple[SourceFile, ...]
    weight: float | None
    num_samples: int | None
    origin: str  # where the entry was declared, for error messages


def resolve_sources(dataset_path: str | Path) -> list[DatasetEntry]:
    """Turn `data.dataset_path` into dataset entries; raise DataSourceError on config mistakes."""
    path = Path(dataset_path)
    if not path.exists():
        raise DataSourceError(str(path), "dataset_path does not exist")
    if path.is_file() and path.suffix in YAML_SUFFIXES:
        return _entries_from_yaml(path)
    files = _files_at(path, _data_type_of(path), None, str(path))
    return [DatasetEntry(files=files, weight=None, num_samples=None, origin=str(path))]


def _data_type_of(path: Path) -> str | None:
    """The data type implied by a path (None for a folder of files: decided per file)."""
    if path.is_dir():
        return "arrow" if _is_arrow_folder(path) else None
    data_type = path.suffix.lstrip(".")
    if data_type not in DATA_TYPES:
        raise DataSourceError(
            str(path),
            f"unknown file type {path.suffix!r}; expected .yaml or one of .{', .'.join(DATA_TYPES)}",
        )
    return data_type


def _is_arrow_folder(path: Path) -> bool:
    return any((path / marker).is_file() for marker in ARROW_FOLDER_MARKERS)


def _files_at(
    path: Path, data_type: str | None, data_folder: str | None, origin: str, data_format: str = "auto"
) -> tuple[SourceFile, ...]:
    """The files behind a path: itself, or a folder's files of `data_type` (any known, if None):
    those directly inside it, else the `train` split of a dataset repository laid out as on the hub."""
    if path.is_file() or data_type == "arrow":
        return (SourceFile(path, data_type, data_folder, data_format),)
    wanted = (data_type,) if data_type else ("jsonl", "json", "parquet")
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lstrip(".") in wanted)
    if not found:
        found = _hub_train_files(path, wanted)
    if not found:
        raise DataSourceError(
            origin,
            f"folder {str(path)!r} holds no .{' / .'.join(wanted)} files, directly or as the train split of a "
            "dataset repository (data/train-00000-of-00001.parquet, ...)",
        )
    return tuple(SourceFile(p, p.suffix.lstrip("."), data_folder, data_format) for p in found)


def _hub_train_files(folder: Path, wanted: tuple[str, ...]) -> list[Path]:
    """The `train` split's files of a dataset repository folder (what `hf download` leaves), by the
    patterns `datasets.load_dataset` infers splits with; [] when there is no train split."""
    from datasets.data_files import EmptyDatasetError, get_data_patterns, resolve_pattern

    try:
        patterns = get_data_patterns(str(folder)).get("train", [])
    except EmptyDatasetError:
        return []
    found = set()
    for pattern in patterns:
        try:
            found.update(resolve_pattern(pattern, str(folder), allowed_extensions=[f".{t}" for t in wanted]))
        except FileNotFoundError:
            continue
    return sorted(Path(p) for p in found if Path(p).suffix.lstrip(".") in wanted)


def _entries_from_yaml(yaml_path: Path) -> list[DatasetEntry]:
    try:
        config = yaml.safe_load(yaml_path.read_text())
    except yaml.YAMLError as error:
        raise DataSourceError(str(yaml_path), f"invalid yaml: {error}") from error
    if not isinstance(config, dict) or not isinstance(config.get("datasets"), list) or not config["datasets"]:
        raise DataSourceError(
            str(yaml_path),
            "a dataset yaml needs a non-empty list 'datasets: [{path, data_folder, data_type}]'",
        )
    return [_parse_entry(raw, yaml_path, i) for i, raw in enumerate(config["datasets"])]


def _parse_entry(raw: Any, yaml_path: Path, i: int) -> DatasetEntry:
    origin = f"{yaml_path}: datasets[{i}]"
    if not isinstance(raw, dict) or "path" not in raw or "data_type" not in raw:
        raise DataSourceError(origin, "each dataset needs at least 'path' and 'data_type'")
    unknown = sorted(set(raw) - set(ENTRY_KEYS))
    if unknown:
        raise DataSourceError(origin, f"unknown key(s) {unknown}; allowed keys are {list(ENTRY_KEYS)}")
    data_type = raw["data_type"]
    if data_type not in DATA_TYPES:
        raise DataSourceError(
            origin, f"unknown data_type {data_type!r}; expected one of {', '.join(DATA_TYPES)}"
        )
    data_format = raw.get("data_format", "auto")
    if data_format not in DATA_FORMATS:
        raise DataSourceError(
            origin, f"unknown data_format {data_format!r}; expected one of {', '.join(DATA_FORMATS)}"
        )
    path = _resolve_entry_path(str(raw["path"]), yaml_path, origin)
    data_folder = _resolve_data_folder(raw.get("data_folder") or None, yaml_path)
    weight, num_samples = _parse_sampling(raw, origin)
    files = _files_at(path, data_type, data_folder, origin, data_format)
    return DatasetEntry(files=files, weight=weight, num_samples=num_samples, origin=origin)


def _resolve_entry_path(path: str, yaml_path: Path, origin: str) -> Path:
    """A relative path is tried against the working directory first, then the yaml's folder."""
    candidate = Path(path)
    if candidate.is_absolute():
        if candidate.exists():
            return candidate
        raise DataSourceError(origin, f"source {path!r} does not exist")
    from_yaml = yaml_path.parent / candidate
    for option in (candidate, from_yaml):
        if option.exists():
            return option
    raise DataSourceError(
        origin,
        f"source {path!r} does not exist: tried {str(Path.cwd() / candidate)!r} (working directory) "
        f"and {str(from_yaml)!r} (next to the yaml)",
    )


def _resolve_data_folder(data_folder: str | None, yaml_path: Path) -> str | None:
    """ "" and null both mean: no media root. A relative folder is kept as written (the working
    directory) unless only the yaml's folder has it, like `path`, so a yaml next to its data and
    media works from anywhere."""
    if data_folder is None or Path(data_folder).is_absolute() or Path(data_folder).exists():
        return data_folder
    from_yaml = yaml_path.parent / data_folder
    return str(from_yaml) if from_yaml.exists() else data_folder


def _parse_sampling(raw: dict, origin: str) -> tuple[float | None, int | None]:
    weight, num_samples = raw.get("weight"), raw.get("num_samples")
    if weight is not None and num_samples is not None:
        raise DataSourceError(origin, "set at most one of 'weight' and 'num_samples'")
    if weight is not None and (
        isinstance(weight, bool)
        or not isinstance(weight, (int, float))
        or not math.isfinite(weight)
        or weight <= 0
    ):
        raise DataSourceError(origin, f"'weight' must be a positive number, got {weight!r}")
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0
    ):
        raise DataSourceError(origin, f"'num_samples' must be a positive integer, got {num_samples!r}")
    return (float(weight) if weight is not None else None), num_samples


# ---------------------------------------------------------------- reading


def read_chunks(source: SourceFile, chunk_size: int) -> Iterator[list[tuple[int, Any]]]:
    """Raw records of a source in chunks of `(location, payload)`, in file order."""
    readers = {"jsonl": _jsonl_items, "json": _json_items, "arrow": _arrow_items, "parquet": _parquet_items}
    chunk = []
    for item in readers[source.data_type](source.path):
        chunk.append(item)
        if len(chunk) == chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _jsonl_items(path: Path) -> Iterator[tuple[int, bytes]]:
    # Lines stay bytes: decoding and JSON parsing happen in the worker, so errors name the line.
    with path.open("rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                yield line_number, line


def _json_items(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        records = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as error:  # also: too deeply nested, a too-long integer
        raise DataSourceError(str(path), f"invalid JSON file: {error}") from error
    if not isinstance(records, list):
        raise DataSourceError(
            str(path),
            f"a .json source must hold a list of records, got {type(records).__name__} "
            "(use jsonl for one record per line)",
        )
    yield from enumerate(records)


def _arrow_items(path: Path) -> Iterator[tuple[int, Any]]:
    dataset = load_arrow(path)
    for start in range(0, len(dataset), 1000):
        yield from enumerate(arrow_rows(dataset, start, start + 1000), start=start)


def arrow_rows(dataset, start: int, stop: int) -> list[dict]:
    """Rows [start, stop) of a `datasets.Dataset` as stored: an `Image` / `Audio` / `Video` column
    stays its `{bytes, path}` struct (the python format would decode every image up front)."""
    return dataset.with_format("arrow")[start:stop].to_pylist()


def load_arrow(path: Path):
    import datasets  # heavy import, only for arrow sources

    if path.is_file():
        return datasets.Dataset.from_file(str(path))
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as error:
        raise DataSourceError(str(path), f"not a datasets.save_to_disk folder: {error}") from error
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise DataSourceError(
                str(path), f"saved DatasetDict has no 'train' split (splits: {list(loaded)})"
            )
        return loaded["train"]
    return loaded


def _parquet_items(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    parquet, index = pq.ParquetFile(path), 0
    # One row group at a time: a reader over the whole file keeps every group's buffers it has read
    # (measured: +230 MB after 12,000 rows of embedded images), so memory would grow with the file.
    for group in range(parquet.num_row_groups):
        for batch in parquet.iter_batches(batch_size=1000, row_groups=[group]):
            for row in batch.to_pylist():
                yield index, row
                index += 1


def columns_to_rows(columns: dict[str, list]) -> Iterator[dict[str, Any]]:
    """Columnar batch (dict of lists) -> rows (dicts)."""
    names = list(columns)
    for values in zip(*(columns[name] for name in names), strict=True):
        yield dict(zip(names, values, strict=True))
