"""The typed micro-batch (data/batch.py) and the data protocols (data/steps.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmms_engine.data.batch import Batch
from lmms_engine.data.collate import collate_packed, collate_padded
from lmms_engine.data.steps import StepBatches, StepSource, TrainData
from lmms_engine.data.types import Sample


def _samples(lengths=(5, 2, 4)) -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i, n in enumerate(lengths):
        ids = rng.integers(0, 50, size=n).astype(np.int32)
        out.append(Sample(input_ids=ids, labels=ids.copy(), sample_id=f"s{i}"))
    return out


def test_collate_counts_document_lengths_on_the_cpu():
    assert collate_packed(_samples()).doc_lengths == [5, 2, 4]
    assert collate_padded(_samples(), pad_token_id=0).doc_lengths == [5, 2, 4]


def test_model_inputs_take_the_set_fields_of_the_asked_keys():
    packed = collate_packed(_samples())
    inputs = packed.model_inputs(("input_ids", "position_ids", "attention_mask", "pixel_values"))
    assert list(inputs) == ["input_ids", "position_ids"]  # no mask when packed, no pixels without images
    assert inputs["input_ids"] is packed.input_ids
    padded = collate_padded(_samples(), pad_token_id=0)
    assert list(padded.model_inputs(("input_ids", "attention_mask"))) == ["input_ids", "attention_mask"]
    with pytest.raises(AssertionError, match="does_not_exist"):
        packed.model_inputs(("input_ids", "does_not_exist"))


def test_unpadded_equals_packed():
    packed = collate_packed(_samples())
    unpadded = collate_padded(_samples(), pad_token_id=0).unpadded()
    for name in ("input_ids", "labels", "position_ids", "cu_seqlens"):
        assert torch.equal(getattr(unpadded, name), getattr(packed, name)), name
    assert unpadded.attention_mask is None and unpadded.max_seqlen == packed.max_seqlen == 5
    assert (unpadded.num_label_tokens, unpadded.doc_lengths) == (packed.num_label_tokens, packed.doc_lengths)
    assert packed.unpadded() is packed


def test_unpadded_keeps_mrope_rows_and_media():
    padded = collate_padded(_samples(), pad_token_id=0)
    mrope = torch.stack([padded.position_ids, padded.position_ids + 1, padded.position_ids + 2])  # (3, B, L)
    pixels = torch.ones(4, 6)
    unpadded = padded.with_fields(position_ids=mrope, pixel_values=pixels).unpadded()
    assert unpadded.position_ids.shape == (3, 1, 11)
    assert unpadded.position_ids[2, 0].tolist() == [2, 3, 4, 5, 6, 2, 3, 2, 3, 4, 5]
    assert unpadded.pixel_values is pixels


def test_to_moves_tensors_and_keeps_the_rest():
    batch = collate_packed(_samples()).with_fields(image_grid_thw=torch.tensor([[1, 2, 2]]))
    moved = batch.to(torch.device("meta"))
    assert moved.input_ids.device.type == moved.image_grid_thw.device.type == "meta"
    assert moved.sample_ids == batch.sample_ids and moved.max_seqlen == batch.max_seqlen
    assert batch.input_ids.device.type == "cpu"  # a copy: the original stays


def test_fields_and_mapping_reads_see_only_set_fields():
    batch = collate_packed(_samples())
    assert set(batch.fields()) == {"input_ids", "labels", "position_ids", "num_label_tokens", "sample_ids",
                                   "doc_lengths", "cu_seqlens", "max_seqlen"}
    assert "cu_seqlens" in batch and "attention_mask" not in batch and "nonsense" not in batch
    assert batch["max_seqlen"] == 5
    assert batch.get("max_seqlen") == 5 and batch.get("attention_mask") is None and batch.get("nonsense", 7) == 7
    with pytest.raises(KeyError):
        batch["nonsense"]
    with pytest.raises(TypeError):
        set(batch)


class _Indexed:
    packing, stats, eval_data = True, {}, None

    def micro_batches(self, epoch):
        return [[0], [1], [2], [3]]

    def collate(self, micro_batch) -> Batch:
        raise NotImplementedError

    def step_source(self, grad_accum, rank, world_size, state=None):
        return StepBatches.at(self, grad_accum, rank, world_size, state)


def test_step_batches_is_a_step_source_and_refuses_a_stream_position():
    data = _Indexed()
    assert isinstance(data, TrainData)
    source = data.step_source(2, 0, 1)
    assert isinstance(source, StepSource)
    assert source.next_step() == [[0], [1]] and source.state_dict() == {"epoch": 0, "index": 2}
    assert data.step_source(2, 0, 1, source.state_dict()).next_step() == [[2], [3]]
    with pytest.raises(ValueError, match="data.streaming=true"):
        data.step_source(2, 0, 1, {"window": 0, "readers": [], "emitted": 0, "rank": 0, "world_size": 1})
