"""The SFT dataset: sources -> tokenized samples -> weighted sample list -> micro-batches.

`build_sft_dataset(tokenizer, settings)` builds it from the data config group's `DataSettings`
(data/settings.py, the group's Hydra `_target_`) and what the model brings. The result is index based:
`micro_batches(epoch)` lists the epoch's micro-batches as sample indices (the same on every rank,
from (seed, epoch) only) and `collate(indices)` turns one into model inputs.

Given a Qwen2.5-VL style `processor` (and the model's `mrope_spec`), records may hold images and
videos: their grids are measured and placeholders expanded at prepare time (cached), pixels are
made at collate time, and position ids are 3-D mrope ids. Given a Qwen2-Audio style processor (a
`feature_extractor`), records may hold audio: decoded and split into clips at prepare time, log-mel
features made at collate time (media_audio.py), plain 1-D position ids unless an `mrope_spec` is
given too (an omni model: audio tokens are text-like for mrope). Without a processor, media is an
error; a media kind the processor has no piece for is an error of its record.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

from lmms_engine.models.mrope import MropeSpec

from .cache import resolve_cache_dir, tokenizer_fingerprint
from .batch import Batch
from .chat import IGNORE_INDEX, check_tokenizer
from .common import MediaInputs, collate_samples, cut_flags, media_inputs, pad_token_id, placeholder_id_list
from .errors import too_few_samples
from .holdout import held_out_records
from .media_audio import clip_sample_counts
from .modalities import MediaSupport
from .packing import apply_overlong, pack_best_fit_decreasing
from .prepare import default_num_proc, prepare_file
from .settings import DataSettings
from .sources import DatasetEntry, SourceFile, resolve_sources
from .steps import StepBatches
from .streaming import StreamingSFTDataset, check_streamable
from .types import MediaTable, Sample, TokenizedFile, format_location
from .weighting import weighted_sample_index

logger = logging.getLogger("lmms_engine.data")


def build_sft_dataset(tokenizer: PreTrainedTokenizerBase, settings: DataSettings, seed: int = 0, processor=None,
                      mrope_spec: MropeSpec | None = None) -> SFTDataset | StreamingSFTDataset:
    """Read, validate, tokenize (cached, in parallel) and index the data `settings` name (data/settings.py:
    the data config group, also how packs are made, the media rules, streaming and eval data).

    processor: a Qwen2.5-VL style processor (`.image_processor`, `.video_processor`, `.tokenizer`)
      to train on images and video, and / or a Qwen2-Audio style one (`.feature_extractor`) for
      audio; None = text only. mrope_spec (required with images / video): the model's `MropeSpec`,
      for 3-D position ids. Both come from the model (ModelBundle.data_inputs()); seed: the run's.
    With settings.streaming it returns a StreamingSFTDataset (data/streaming.py): no cache and no
    data_stats totals then, records are tokenized as the run reaches them.
    """
    eval_data = None
    if settings.eval_path is not None:  # the same settings, so eval batches are packed / collated like training's
        eval_data = build_sft_dataset(tokenizer, settings.for_eval(), seed, processor, mrope_spec)
    check_tokenizer(tokenizer)
    inputs = media_inputs(processor, mrope_spec, tokenizer, settings.media_options())
    entries = resolve_sources(settings.dataset_path)
    if settings.streaming:
        check_streamable(entries)
        dataset = StreamingSFTDataset(tokenizer, entries, settings, seed, pad_token_id(tokenizer), inputs)
        logger.info("dataset %s (streaming): %s", settings.dataset_path, dataset.stats)
        dataset.eval_data = eval_data
        return dataset
    media = inputs.support if inputs else None
    tokenized = _tokenize_sources(tokenizer, entries, settings, media)
    store = _SampleStore.from_files(tokenized)
    length_range = (int(store.lengths.min()), int(store.lengths.max())) if len(store.lengths) else None
    overlong_counts = store.apply_overlong(settings.packing_length, settings.overlong, media)
    held_out = store.hold_out(settings.eval_fraction)  # before weighting: a held-out record is never trained on
    sample_index = weighted_sample_index(store, entries, seed)
    if len(sample_index) == 0 or (not settings.packing and len(sample_index) < settings.micro_batch_size):
        raise too_few_samples(str(settings.dataset_path), len(sample_index), packing=settings.packing,
                              micro_batch_size=settings.micro_batch_size, packing_length=settings.packing_length,
                              overlong=settings.overlong, skipped=_merged_skips(tokenized.values()),
                              overlong_counts=overlong_counts, length_range=length_range)
    dataset = SFTDataset(store, sample_index, settings, pad_token_id(tokenizer), seed, inputs)
    dataset.stats.update(_source_stats(tokenized.values(), overlong_counts))
    if settings.eval_fraction:
        eval_data = SFTDataset(store, held_out, settings, pad_token_id(tokenizer), seed, inputs)
    dataset.eval_data = eval_data
    if eval_data is not None:
        dataset.stats["eval"] = eval_data.stats
    logger.info("dataset %s: %s", settings.dataset_path, dataset.stats)
    return dataset


def _tokenize_sources(
    tokenizer: PreTrainedTokenizerBase, entries: list[DatasetEntry], settings: DataSettings, media: MediaSupport | None
) -> dict[SourceFile, TokenizedFile]:
    """Every distinct file once (an entry listed twice is not tokenized twice)."""
    fingerprint = tokenizer_fingerprint(tokenizer)
    procs = settings.num_proc if settings.num_proc is not None else default_num_proc()
    cache = resolve_cache_dir(settings.cache_dir)
    tokenized: dict[SourceFile, TokenizedFile] = {}
    for entry in entries:
        for source in entry.files:
            if source not in tokenized:
                tokenized[source] = prepare_file(source, tokenizer, fingerprint, settings.on_error, procs, cache, media)
    return tokenized


def _merged_skips(files) -> dict[str, int]:
    merged = Counter()
    for tokenized in files:
        merged.update(tokenized.skipped_by_reason)
    return dict(merged)


def _source_stats(files, overlong_counts: dict[str, int]) -> dict:
    files = list(files)
    skipped = _merged_skips(files)
    return {
        "records": sum(f.records for f in files),
        "skipped": sum(skipped.values()),
        "skipped_by_reason": skipped,
        **overlong_counts,
    }


# ---------------------------------------------------------------- samples


@dataclass
class _SampleStore:
    """Every distinct sample ("base sample") of every file, flat; sample k is
    input_ids[starts[k] : starts[k] + lengths[k]] (lengths shrink when truncated)."""

    input_ids: np.ndarray
    labels: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    usable: np.ndarray  # bool: False once dropped by the overlong policy
    file_ids: np.ndarray  # which file each sample came from (index into `files`)
    locations: np.ndarray  # line or record index in that file
    files: list[SourceFile]
    media: MediaTable  # sample k's images / videos are its rows offsets[k]:offsets[k+1]

    @classmethod
    def from_files(cls, tokenized: dict[SourceFile, TokenizedFile]) -> _SampleStore:
        files = list(tokenized)
        parts = [tokenized[f] for f in files]
        token_bases = np.cumsum([0] + [len(p.input_ids) for p in parts])[:-1]  # first token of each file
        return cls(
            input_ids=np.concatenate([p.input_ids for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            starts=np.concatenate(
                [p.offsets[:-1] + base for p, base in zip(parts, token_bases, strict=True)]
            ),
            lengths=np.concatenate([np.diff(p.offsets) for p in parts]),
            usable=np.ones(sum(p.num_samples for p in parts), dtype=bool),
            file_ids=np.concatenate([np.full(p.num_samples, i, dtype=np.int32) for i, p in enumerate(parts)]),
            locations=np.concatenate([p.locations for p in parts]),
            files=files,
            media=MediaTable.concat([p.media for p in parts]),
        )

    def samples_of(self, files: tuple[SourceFile, ...]) -> np.ndarray:
        """Indices of the usable samples of `files`, in file and record order."""
        ids = [self.files.index(f) for f in files]
        return np.flatnonzero(np.isin(self.file_ids, ids) & self.usable)

    def hold_out(self, fraction: float) -> np.ndarray:
        """The usable samples held out for evaluation (holdout.held_out_records), now unusable for training."""
        usable = np.flatnonzero(self.usable)
        keys = [f"{self.files[self.file_ids[k]].path}:{self.locations[k]}" for k in usable]
        held = usable[held_out_records(keys, fraction)]
        self.usable[held] = False
        return held

    def apply_overlong(self, max_length: int, policy: str, media: MediaSupport | None) -> dict[str, int]:
        trained = np.ones(len(self.lengths), dtype=bool)
        cuttable = np.ones(len(self.lengths), dtype=bool)
        placeholder_ids = placeholder_id_list(media)
        for k in np.flatnonzero(self.lengths > max_length):
            start, stop = self.starts[k], self.starts[k] + self.lengths[k]
            trained[k], cuttable[k] = cut_flags(
                self.input_ids[start:stop], self.labels[start:stop], max_length, placeholder_ids
            )
        result = apply_overlong(self.lengths, trained, max_length, policy, cuttable)
        self.usable[:] = False
        self.usable[result.keep] = True
        self.lengths[result.keep] = result.lengths
        return {"truncated": result.truncated, "dropped_overlong": result.dropped}

    def sample(self, k: int) -> Sample:
        start, stop = self.starts[k], self.starts[k] + self.lengths[k]
        source = self.files[self.file_ids[k]]
        sample_id = format_location(str(source.path), source.is_line_based, int(self.locations[k]))
        return Sample(
            input_ids=self.input_ids[start:stop],
            labels=self.labels[start:stop],
            sample_id=sample_id,
            media=self.media.items_of(k),
        )

    def media_counts(self, media: MediaSupport) -> dict[str, np.ndarray]:
        """Per sample: how many images, videos and visual tokens it has (vision), how many audio
        files (before splitting into clips), seconds of audio, clips and audio tokens (audio)."""
        table = self.media
        n = len(self.lengths)
        owner = np.repeat(np.arange(n), np.diff(table.offsets))

        def per_sample(rows: np.ndarray, weights=None) -> np.ndarray:
            return np.bincount(owner[rows], weights=weights, minlength=n)

        counts = {}
        if media.vision is not None:
            visual = np.flatnonzero(table.kinds != "audio")
            tokens = table.grids[visual].prod(axis=1) // media.vision.merge_size**2
            counts["images"] = per_sample(np.flatnonzero(table.kinds == "image"))
            counts["videos"] = per_sample(np.flatnonzero(table.kinds == "video"))
            counts["visual_tokens"] = per_sample(visual, tokens).astype(np.int64)
        if media.audio is not None:
            audio = np.flatnonzero(table.kinds == "audio")
            items = [table.item(row) for row in audio]
            clips = [len(clip_sample_counts(item, media.audio)) for item in items]
            counts["audios"] = per_sample(audio)
            counts["audio_clips"] = per_sample(audio, clips).astype(np.int64)
            counts["audio_seconds"] = per_sample(audio, [item.seconds for item in items])
            counts["audio_tokens"] = per_sample(audio, [media.num_tokens(item) for item in items]).astype(
                np.int64
            )
        return counts


# ---------------------------------------------------------------- the dataset


class SFTDataset:
    """Index-based SFT data: `micro_batches(epoch)` then `collate(indices)` for each one.

    Sample indices refer to the flattened, weight-expanded sample list (`num_samples` long).
    """

    def __init__(self, store: _SampleStore, sample_index: np.ndarray, settings: DataSettings, pad_token_id: int,
                 seed: int, media: MediaInputs | None = None):
        self.packing = settings.packing
        self.packing_length = settings.packing_length
        self.micro_batch_size = settings.micro_batch_size
        self.pad_token_id = pad_token_id
        self.seed = seed
        self.num_samples = len(sample_index)
        self._store = store
        self._media = media
        self._sample_index = sample_index
        self._lengths = store.lengths[sample_index]
        # Packs are computed once; only their order changes between epochs.
        self.packs = pack_best_fit_decreasing(self._lengths, self.packing_length) if self.packing else None
        self.stats = self._sample_stats()
        self.eval_data: SFTDataset | None = None  # set by build_sft_dataset (data.eval_path / eval_fraction)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Sample:
        return self._store.sample(int(self._sample_index[index]))

    def micro_batches(self, epoch: int) -> list[list[int]]:
        """This epoch's micro-batches (sample indices); a pure function of (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.packing:
            return [list(self.packs[i]) for i in rng.permutation(len(self.packs))]
        order = rng.permutation(self.num_samples)
        full = self.num_samples // self.micro_batch_size * self.micro_batch_size
        return [order[i : i + self.micro_batch_size].tolist() for i in range(0, full, self.micro_batch_size)]

    def eval_micro_batches(self) -> list[list[int]]:
        """Every sample once, in a fixed order: the packs, or micro_batch_size runs (the last one may be short)."""
        if self.packing:
            return [list(pack) for pack in self.packs]
        size = self.micro_batch_size
        return [list(range(i, min(i + size, self.num_samples))) for i in range(0, self.num_samples, size)]

    def step_source(self, grad_accum: int, rank: int, world_size: int, state: dict | None = None) -> StepBatches:
        """This rank's step source, at `state` (a checkpoint's data position; None: the start)."""
        return StepBatches.at(self, grad_accum, rank, world_size, state)

    def collate(self, indices: list[int]) -> Batch:
        return collate_samples([self[i] for i in indices], self.packing, self.pad_token_id, self._media)

    def _sample_stats(self) -> dict:
        tokens = int(self._lengths.sum())
        trained = np.concatenate([[0], np.cumsum(self._store.labels != IGNORE_INDEX)])
        starts = self._store.starts[self._sample_index]
        stats = {
            "samples": self.num_samples,
            "unique_samples": len(np.unique(self._sample_index)),
            "tokens": tokens,  # every token, prompts included
            "label_tokens": int((trained[starts + self._lengths] - trained[starts + 1]).sum()),  # trained (shifted by one)
        }
        if self.packing:
            stats["packs"] = len(self.packs)
            stats["pack_fill"] = round(tokens / (len(self.packs) * self.packing_length), 4)
        if self._media is not None:
            counts = self._store.media_counts(self._media.support)
            for name, per_sample in counts.items():
                total = per_sample[self._sample_index].sum()
                stats[name] = round(float(total), 3) if name == "audio_seconds" else int(total)
        return stats
