"""Tokenize one source file in parallel, with an on-disk cache.

Records are read in chunks in the parent and tokenized by `num_proc` forked workers (each one
runs the fast tokenizer single-threaded; the chat template rendering is Python and needs
processes, not threads). The result is a few flat numpy arrays, cached as an uncompressed `.npz`
(loaded with allow_pickle=False) keyed by the file's identity and the tokenizer's fingerprint.

For a vision-language model (`media` settings given) the workers also measure every image / video
(media.py) and expand each placeholder token to the item's visual token count, so the cached token
counts are final; a bad media file is a DataError of its record, like any other bad record.
"""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedTokenizerBase

from lmms_engine.options import ON_ERROR_POLICIES

from .cache import cache_file_for, load_tokenized, locked, save_tokenized
from .chat import TEXT_ONLY, expand_placeholders, tokenize_batch
from .errors import DataError
from .formats import to_openai
from .messages import parse_record
from .modalities import MediaSupport, measure_record_media
from .sources import SourceFile, read_chunks
from .types import MediaItem, MediaTable, Provenance, Record, TokenizedFile, format_location

logger = logging.getLogger("lmms_engine.data")

CHUNK_SIZE = 1000
MAX_LOGGED_SKIPS = 5  # the first few skipped records are logged in full; the rest only counted


@dataclass
class _ChunkResult:
    input_ids: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray
    locations: np.ndarray
    media: list[tuple[MediaItem, ...]]  # per sample
    errors: list[DataError]
    formats: Counter  # records per detected format


def default_num_proc() -> int:
    return min(8, os.cpu_count() or 1)


def prepare_file(
    source: SourceFile,
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_fingerprint: str,
    on_error: str,
    num_proc: int,
    cache_dir: Path,
    media: MediaSupport | None = None,
) -> TokenizedFile:
    """Tokens and labels of every valid record of `source`, from the cache when it is fresh.
    `media`: measure images / videos / audio and expand placeholders (multimodal models)."""
    assert on_error in ON_ERROR_POLICIES, on_error
    cache_file = cache_file_for(cache_dir, source, tokenizer_fingerprint, on_error, media)
    # The lock makes concurrent ranks on one host tokenize once: the others wait, then load.
    with locked(cache_file):
        cached = load_tokenized(cache_file)
        if cached is not None:
            logger.info("%s: %d samples from cache %s", source.path, cached.num_samples, cache_file)
            _log_skips(source, cached)
            return cached
        started = time.perf_counter()
        tokenized = tokenize_file(source, tokenizer, on_error, num_proc, media)
        save_tokenized(cache_file, tokenized)
    logger.info(
        "%s: %d records -> %d samples in %.1fs (%d procs), cached at %s",
        source.path,
        tokenized.records,
        tokenized.num_samples,
        time.perf_counter() - started,
        num_proc,
        cache_file,
    )
    _log_skips(source, tokenized)
    return tokenized


def tokenize_file(
    source: SourceFile,
    tokenizer: PreTrainedTokenizerBase,
    on_error: str,
    num_proc: int,
    media: MediaSupport | None = None,
    all_errors: list[DataError] | None = None,
) -> TokenizedFile:
    """Tokenize a whole source (no cache); raise the first DataError unless on_error == 'skip'.
    `all_errors`: a list that receives every skipped record's DataError, in file order (the result
    keeps only the first MAX_LOGGED_SKIPS messages); `lmms-data check` uses it."""
    # Chunks are read as the workers take them, not all up front: a chunk of a parquet source with
    # embedded images holds their bytes, so memory stays one chunk per worker, not the file.
    read = [0]
    chunks = _counted(read_chunks(source, CHUNK_SIZE), read)
    results, skipped, examples = [], Counter(), []
    # closing(): on an error, stop the worker pool now rather than when the generator is collected.
    with closing(_map_chunks(chunks, source, tokenizer, num_proc, media)) as chunk_results:
        for result in chunk_results:
            if result.errors and on_error == "raise":
                raise result.errors[0]
            for error in result.errors:
                skipped[error.reason] += 1
                if all_errors is not None:
                    all_errors.append(error)
                if len(examples) < MAX_LOGGED_SKIPS:
                    examples.append(str(error))
            results.append(result)
    return _merge(results, read[0], dict(skipped), examples)


def _counted(chunks: Iterator[list], total: list[int]) -> Iterator[list]:
    """`chunks`, adding each one's record count to total[0] as it passes."""
    for items in chunks:
        total[0] += len(items)
        yield items


def _map_chunks(
    chunks: Iterator[list[tuple[int, Any]]],
    source: SourceFile,
    tokenizer: PreTrainedTokenizerBase,
    num_proc: int,
    media: MediaSupport | None,
) -> Iterator[_ChunkResult]:
    """Chunk results in file order; in-process when one process would do (starting workers costs)."""
    first = list(itertools.islice(chunks, 2))
    several = len(first) > 1
    chunks, first = itertools.chain(first, chunks), None  # not held here once the chain passed them
    if num_proc <= 1 or not several:
        for items in chunks:
            yield tokenize_items(tokenizer, source, items, media)
        return
    with _worker_pool(tokenizer, num_proc) as pool:
        yield from pool.imap(_tokenize_in_worker, ((source, items, media) for items in chunks))


# ---------------------------------------------------------------- workers

_WORKER_TOKENIZER: PreTrainedTokenizerBase | None = None


def _init_worker(tokenizer: PreTrainedTokenizerBase) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def _tokenize_in_worker(job: tuple[SourceFile, list, MediaSupport | None]) -> _ChunkResult:
    assert _WORKER_TOKENIZER is not None, "worker not initialised"
    source, items, media = job
    return tokenize_items(_WORKER_TOKENIZER, source, items, media)


@contextmanager
def _worker_pool(tokenizer: PreTrainedTokenizerBase, num_proc: int):
    # fork shares the loaded tokenizer for free; spawn (other platforms) pickles it once per worker.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    # Workers run the Rust tokenizer single-threaded: the processes already use every core, and a
    # forked Rust thread pool can deadlock. Setting the variable also silences the fork warning.
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        context = multiprocessing.get_context(method)
        with context.Pool(num_proc, initializer=_init_worker, initargs=(tokenizer,)) as pool:
            _restore_env("TOKENIZERS_PARALLELISM", previous)
            yield pool
    finally:
        _restore_env("TOKENIZERS_PARALLELISM", previous)


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


# ---------------------------------------------------------------- one chunk


def tokenize_items(
    tokenizer: PreTrainedTokenizerBase,
    source: SourceFile,
    items: list[tuple[int, Any]],
    media: MediaSupport | None = None,
) -> _ChunkResult:
    """Decode, validate and tokenize a chunk; bad records come back as errors, in order."""
    records, errors, formats = [], [], Counter()  # errors as (location, DataError)
    for location, payload in items:
        try:
            provenance = _provenance(source, location)
            raw, detected = to_openai(_decode(payload, source, location), source, location, provenance.where)
            if detected is not None:
                formats[detected] += 1
            records.append(parse_record(raw, provenance))
        except DataError as error:
            errors.append((location, error))
    ids, labels, lengths, locations, sample_media = [], [], [], [], []
    for record, result in zip(
        records, tokenize_batch(tokenizer, records, media.rendering if media else TEXT_ONLY), strict=True
    ):
        try:
            if isinstance(result, DataError):
                raise result
            record_ids, record_labels, record_media = _with_media(record, *result, media, tokenizer)
        except DataError as error:
            errors.append((record.provenance.location, error))
            continue
        ids.append(record_ids)
        labels.append(record_labels)
        lengths.append(len(record_ids))
        locations.append(record.provenance.location)
        sample_media.append(record_media)
    errors.sort(key=lambda pair: pair[0])  # so on_error=raise reports the first bad record of the file
    return _ChunkResult(
        input_ids=_concat(ids),
        labels=_concat(labels),
        lengths=np.asarray(lengths, dtype=np.int64),
        locations=np.asarray(locations, dtype=np.int64),
        media=sample_media,
        errors=[error for _, error in errors],
        formats=formats,
    )


def _with_media(
    record: Record,
    input_ids: np.ndarray,
    labels: np.ndarray,
    media: MediaSupport | None,
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[np.ndarray, np.ndarray, tuple[MediaItem, ...]]:
    """Measure the record's media (after tokenizing: records the template rejects are never
    decoded) and expand each placeholder to that item's token count (an audio item's: the sum over
    its clips, their runs one after another inside the part's <|audio_bos|> ... <|audio_eos|>), or
    to a Qwen3-VL video's timestamped frame sequence (`MediaSupport.placeholder_run`)."""
    if media is None:
        return input_ids, labels, ()
    items = measure_record_media(record, media)
    placeholders = media.placeholder_ids()
    expected = [(placeholders[item.kind], media.placeholder_run(item, tokenizer)) for item in items]
    where = record.provenance.where
    input_ids, labels = expand_placeholders(input_ids, labels, list(placeholders.values()), expected, where)
    return input_ids, labels, items


def _decode(payload: Any, source: SourceFile, location: int) -> Any:
    if not source.is_line_based:
        return payload
    where = format_location(str(source.path), True, location)
    try:
        return json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise DataError(where, "not_utf8", f"line is not valid UTF-8: {error}") from error
    except ValueError as error:  # a JSONDecodeError, or an integer over Python's 4300-digit limit
        raise DataError(where, "malformed_json", f"invalid JSON: {error}") from error
    except RecursionError:  # the json module's limit on nesting (about 1000 levels)
        raise DataError(where, "malformed_json", "invalid JSON: nested too deeply") from None


def _provenance(source: SourceFile, location: int) -> Provenance:
    line, index = (location, None) if source.is_line_based else (None, location)
    return Provenance(source=str(source.path), line=line, index=index, data_folder=source.data_folder)


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int32)


def _merge(
    results: list[_ChunkResult], records: int, skipped: dict[str, int], examples: list[str]
) -> TokenizedFile:
    lengths = np.concatenate([r.lengths for r in results]) if results else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TokenizedFile(
        input_ids=_concat([r.input_ids for r in results]),
        labels=_concat([r.labels for r in results]),
        offsets=offsets,
        locations=np.concatenate([r.locations for r in results]) if results else np.zeros(0, dtype=np.int64),
        records=records,
        media=MediaTable.from_items([item for r in results for item in r.media]),
        skipped_by_reason=skipped,
        skip_examples=examples,
        formats=dict(sum((r.formats for r in results), Counter())),
    )


def _log_skips(source: SourceFile, tokenized: TokenizedFile) -> None:
    if not tokenized.skipped_by_reason:
        return
    for message in tokenized.skip_examples:
        logger.warning("skipped %s", message)
    total = sum(tokenized.skipped_by_reason.values())
    logger.warning(
        "%s: skipped %d of %d records %s", source.path, total, tokenized.records, tokenized.skipped_by_reason
    )
