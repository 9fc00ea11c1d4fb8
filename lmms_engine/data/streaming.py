"""Streaming SFT data (`data.streaming=true`): for data sets larger than memory.

The indexed pipeline (dataset.py) tokenizes every record up front into a cache and packs the whole
data set; its memory grows with the data. A stream instead reads its sources lazily and packs
online, window by window, so host memory is bounded by one window, whatever the source size:

  * Shards: each rank reads its own part of every source file (jsonl: a byte range, a line belonging
    to the range its first byte is in; parquet / arrow: a row range) and nothing else.
  * Windows: window w draws `window` record slots from the dataset entries by weight (the yaml's
    `weight`, default 1 per entry: a mixing ratio), with a generator seeded by (seed, rank, w);
    each entry's reader hands over its next records (cycling at the end of its shard, so a small
    source repeats while a big one streams). Records are validated and tokenized in the training
    process (the same code as the indexed path, the same `on_error` policy and skip reasons), the
    overlong policy applies, and the window's samples are packed best-fit-decreasing; the packs,
    in an order shuffled by the window's generator, are the micro-batches.
  * Position: (window w, each reader's position at the start of w, micro-batches of w handed out).
    It is saved in each rank's train state and restores the stream exactly: the window is rebuilt
    from the readers' positions and the handed-out micro-batches are skipped. It does not depend on
    the number of collating workers (`trainer.data_workers`), which only collate micro-batches the
    stream has already decided; so a run may resume with another worker count.

Not streamable: `.json` files (a JSON list is parsed whole; convert to jsonl) and `num_samples`
(a stream has no fixed size; use `weight`). An epoch has no meaning either: a run ends at
`trainer.max_steps`.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .batch import Batch
from .common import MediaInputs, collate_samples, cut_flags, placeholder_id_list
from .errors import DataError, DataSourceError
from .packing import apply_overlong, pack_best_fit_decreasing
from .prepare import tokenize_items
from .settings import DataSettings
from .shards import ShardReader
from .sources import DatasetEntry, SourceFile
from .types import Sample, format_location

logger = logging.getLogger("lmms_engine.data")

STREAMABLE_TYPES = ("jsonl", "parquet", "arrow")


def check_streamable(entries: list[DatasetEntry]) -> None:
    """Refuse, with the entry named, what a stream cannot read."""
    for entry in entries:
        if entry.num_samples is not None:
            raise DataSourceError(
                entry.origin, "'num_samples' needs the whole data set counted; with data.streaming=true use 'weight'"
            )
        for source in entry.files:
            if source.data_type not in STREAMABLE_TYPES:
                raise DataSourceError(
                    str(source.path),
                    f"{source.data_type} sources are parsed whole and cannot be streamed; convert to jsonl "
                    f"(or use one of {', '.join(STREAMABLE_TYPES)}) or set data.streaming=false",
                )


class StreamingSFTDataset:
    """The Hydra-built data object of `data.streaming=true`: settings plus what every rank's stream
    shares. Each rank's `SampleStream` is made by `step_source(...)`, once the rank is known."""

    eval_data = None  # an SFTDataset of data.eval_path, set by build_sft_dataset

    def __init__(self, tokenizer, entries: list[DatasetEntry], settings: DataSettings, seed: int, pad_token_id: int,
                 media: MediaInputs | None = None):
        self.tokenizer, self.entries, self.origin = tokenizer, entries, str(settings.dataset_path)
        self.packing, self.packing_length = settings.packing, settings.packing_length
        self.micro_batch_size, self.on_error, self.overlong = settings.micro_batch_size, settings.on_error, settings.overlong
        self.window, self.seed, self.pad_token_id = settings.stream_window, seed, pad_token_id
        self._media = media
        weights = np.asarray([e.weight if e.weight is not None else 1.0 for e in entries], dtype=np.float64)
        self.mix = weights / weights.sum()
        self.stats = {
            "streaming": True,
            "window": self.window,
            "sources": [{"origin": e.origin, "files": len(e.files), "mix": round(float(p), 6)}
                        for e, p in zip(entries, self.mix, strict=True)],
        }

    @property
    def media_support(self):
        return self._media.support if self._media is not None else None

    def step_source(self, grad_accum: int, rank: int, world_size: int, state: dict | None = None) -> StreamStepBatches:
        """This rank's step source, at `state` (a checkpoint's data position; None: the start)."""
        return StreamStepBatches(SampleStream(self, rank, world_size, state), grad_accum)

    def collate(self, micro_batch) -> Batch:
        return collate_samples(list(micro_batch), self.packing, self.pad_token_id, self._media)

    def fit_lengths(self, samples: list[Sample], counters: StreamCounters) -> list[Sample]:
        """The overlong policy over one window's samples (as the indexed path applies it)."""
        lengths = np.asarray([len(s) for s in samples], dtype=np.int64)
        trained = np.ones(len(samples), dtype=bool)
        cuttable = np.ones(len(samples), dtype=bool)
        placeholder_ids = placeholder_id_list(self.media_support)
        for k in np.flatnonzero(lengths > self.packing_length):
            trained[k], cuttable[k] = cut_flags(samples[k].input_ids, samples[k].labels, self.packing_length,
                                                placeholder_ids)
        result = apply_overlong(lengths, trained, self.packing_length, self.overlong, cuttable)
        counters.truncated += result.truncated
        counters.dropped_overlong += result.dropped
        return [_cut(samples[k], int(n)) for k, n in zip(result.keep.tolist(), result.lengths.tolist(), strict=True)]

    def group(self, samples: list[Sample], rng: np.random.Generator) -> list[tuple[Sample, ...]]:
        """One window's micro-batches: packs (best-fit decreasing) or micro_batch_size samples
        (a short tail is dropped), in an order shuffled by the window's generator."""
        if self.packing:
            packs = pack_best_fit_decreasing(np.asarray([len(s) for s in samples]), self.packing_length)
            return [tuple(samples[i] for i in packs[j]) for j in rng.permutation(len(packs)).tolist()]
        order = rng.permutation(len(samples)).tolist()
        size = self.micro_batch_size
        return [tuple(samples[i] for i in order[k : k + size]) for k in range(0, len(order) - size + 1, size)]


def _cut(sample: Sample, length: int) -> Sample:
    if length == len(sample):
        return sample
    return Sample(input_ids=sample.input_ids[:length], labels=sample.labels[:length], sample_id=sample.sample_id,
                  media=sample.media)


# ---------------------------------------------------------------- the stream


@dataclass
class MicroBatch:
    """One micro-batch of a stream: its samples, a key naming it (rank, window, index) and the
    stream position right after it (what a checkpoint taken after it saves)."""

    key: tuple[int, int, int]
    samples: tuple[Sample, ...]
    after: dict = field(repr=False)

    def __iter__(self):
        return iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class StreamCounters:
    """What the stream has met so far on this rank (logged, and summed into `stats`)."""

    records: int = 0
    skipped_by_reason: Counter = field(default_factory=Counter)
    truncated: int = 0
    dropped_overlong: int = 0


class SampleStream:
    """One rank's stream of micro-batches (see the module docstring)."""

    def __init__(self, dataset, rank: int, world_size: int, state: dict | None = None):
        self.dataset, self.rank, self.world_size = dataset, rank, world_size
        self._check_state(state)
        readers = state["readers"] if state else [None] * len(dataset.entries)
        self.readers = [ShardReader(e, rank, world_size, r) for e, r in zip(dataset.entries, readers, strict=True)]
        self.window = state["window"] if state else 0
        self._skip = state["emitted"] if state else 0
        self.counters = StreamCounters()

    def _check_state(self, state: dict | None) -> None:
        if state is None:
            return
        if "window" not in state:
            raise ValueError("the checkpoint's data position is not a stream's (it was saved with "
                             "data.streaming=false); resume with the same data.streaming setting")
        saved = (state["rank"], state["world_size"], len(state["readers"]))
        if saved != (self.rank, self.world_size, len(self.dataset.entries)):
            raise ValueError(
                f"the checkpoint's stream position belongs to rank {saved[0]} of {saved[1]} over {saved[2]} dataset "
                f"entries, not rank {self.rank} of {self.world_size} over {len(self.dataset.entries)}: a stream "
                "resumes with the same number of ranks and the same dataset entries"
            )

    def __iter__(self) -> Iterator[MicroBatch]:
        while True:
            start = [r.position.state_dict() for r in self.readers]
            batches = self._window_batches()
            end = [r.position.state_dict() for r in self.readers]
            for i, samples in enumerate(batches):
                if i < self._skip:
                    continue
                last = i == len(batches) - 1
                after = self._position(self.window + 1, end, 0) if last else self._position(self.window, start, i + 1)
                yield MicroBatch(key=(self.rank, self.window, i), samples=samples, after=after)
            self.window, self._skip = self.window + 1, 0

    def position(self) -> dict:
        """The position before the next window is read (at a window boundary)."""
        return self._position(self.window, [r.position.state_dict() for r in self.readers], self._skip)

    def _position(self, window: int, readers: list[dict], emitted: int) -> dict:
        return {"window": window, "readers": readers, "emitted": emitted, "rank": self.rank,
                "world_size": self.world_size}

    def _window_batches(self) -> list[tuple[Sample, ...]]:
        rng = np.random.default_rng([self.dataset.seed, self.rank, self.window])
        samples = self._window_samples(rng)
        if not samples:
            raise DataSourceError(
                self.dataset.origin,
                f"window {self.window} of rank {self.rank}: no usable sample in {self.dataset.window} records "
                f"(skipped: {dict(self.counters.skipped_by_reason)}, overlong dropped: "
                f"{self.counters.dropped_overlong})",
            )
        return self.dataset.group(samples, rng)

    def _window_samples(self, rng: np.random.Generator) -> list[Sample]:
        slots = rng.choice(len(self.readers), size=self.dataset.window, p=self.dataset.mix)
        counts = np.bincount(slots, minlength=len(self.readers))
        samples = []
        for reader, count in zip(self.readers, counts.tolist(), strict=True):
            if count:
                samples.extend(self._tokenized(reader.take(count)))
        return self.dataset.fit_lengths(samples, self.counters)

    def _tokenized(self, records: list[tuple[SourceFile, int, Any]]) -> list[Sample]:
        """Samples of the valid records (runs of one file tokenized together); bad ones per on_error."""
        samples, run = [], []
        for record in records + [None]:
            if run and (record is None or record[0] != run[0][0]):
                samples.extend(self._tokenize_run(run[0][0], [(loc, payload) for _, loc, payload in run]))
                run = []
            if record is not None:
                run.append(record)
        return samples

    def _tokenize_run(self, source: SourceFile, items: list[tuple[int, Any]]) -> list[Sample]:
        data = self.dataset
        result = tokenize_items(data.tokenizer, source, items, data.media_support)
        self.counters.records += len(items)
        for error in result.errors:
            self._skip_record(error)
        offsets = np.concatenate([[0], np.cumsum(result.lengths)])
        return [
            Sample(
                input_ids=result.input_ids[offsets[k] : offsets[k + 1]].copy(),
                labels=result.labels[offsets[k] : offsets[k + 1]].copy(),
                sample_id=format_location(str(source.path), source.is_line_based, int(location)),
                media=result.media[k],
            )
            for k, location in enumerate(result.locations.tolist())
        ]

    def _skip_record(self, error: DataError) -> None:
        if self.dataset.on_error == "raise":
            raise error
        skipped = self.counters.skipped_by_reason
        if sum(skipped.values()) < 5:
            logger.warning("skipped %s", error)
        skipped[error.reason] += 1


class StreamStepBatches:
    """Step n takes this rank's next `grad_accum` micro-batches of its stream (the StepSource of a
    streaming dataset; the indexed one's is data.steps.StepBatches).

    `plan()` (for the prefetching collator) and `next_step()` share the one stream: whatever one of
    them pulls first is queued for the other, so every micro-batch is read and tokenized once.
    """

    def __init__(self, stream: SampleStream, grad_accum: int):
        self.grad_accum = grad_accum
        self._stream = stream
        self._batches = iter(stream)
        self._for_step: deque[MicroBatch] = deque()
        self._for_plan: deque[MicroBatch] | None = None  # only once plan() was asked for
        self._state = stream.position()

    def next_step(self) -> list[MicroBatch]:
        step = [self._for_step.popleft() if self._for_step else self._pull(for_step=False)
                for _ in range(self.grad_accum)]
        self._state = step[-1].after
        return step

    def plan(self) -> Iterator[MicroBatch]:
        self._for_plan = deque()
        while True:
            yield self._for_plan.popleft() if self._for_plan else self._pull(for_plan=False)

    def _pull(self, for_step: bool = True, for_plan: bool = True) -> MicroBatch:
        batch = next(self._batches)
        if for_step:
            self._for_step.append(batch)
        if for_plan and self._for_plan is not None:
            self._for_plan.append(batch)
        return batch

    def state_dict(self) -> dict:
        return self._state

    @property
    def counters(self) -> StreamCounters:
        return self._stream.counters
