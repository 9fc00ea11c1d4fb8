"""Packed and padded collation: shifted labels, restarting positions, equivalence."""

from collections import Counter

import numpy as np
import torch

from lmms_engine.data.collate import collate_packed, collate_padded, shift_labels
from lmms_engine.data.types import Sample

PAD = 0


def make_samples():
    rng = np.random.default_rng(0)
    samples = []
    for k, n in enumerate([7, 3, 12, 5]):
        ids = rng.integers(1, 250, size=n).astype(np.int32)
        labels = np.where(np.arange(n) >= n // 2, ids, -100).astype(np.int32)  # second half trained
        samples.append(Sample(ids, labels, f"f.jsonl:{k + 1}"))
    return samples


def test_shift_labels():
    assert shift_labels(np.array([-100, 5, 6], dtype=np.int32)).tolist() == [5, 6, -100]


def test_packed_layout():
    samples = make_samples()
    batch = collate_packed(samples)
    total = sum(len(s) for s in samples)
    assert batch.input_ids.shape == batch.labels.shape == batch.position_ids.shape == (1, total)
    assert batch.input_ids.dtype == batch.labels.dtype == batch.position_ids.dtype == torch.long
    assert batch.cu_seqlens.dtype == torch.int32
    assert batch.cu_seqlens.tolist() == [0, 7, 10, 22, 27]
    assert batch.max_seqlen == 12 and isinstance(batch.max_seqlen, int)
    assert batch.sample_ids == [s.sample_id for s in samples]
    cu = batch.cu_seqlens.tolist()
    positions, labels, ids = batch.position_ids[0], batch.labels[0], batch.input_ids[0]
    for start, end in zip(cu[:-1], cu[1:], strict=True):
        assert positions[start:end].tolist() == list(range(end - start))  # restart per sample
        assert labels[end - 1] == -100  # no label crosses into the next sample
        trained = labels[start : end - 1] != -100
        assert torch.equal(labels[start : end - 1][trained], ids[start + 1 : end][trained])
    assert batch.num_label_tokens == int((labels != -100).sum())


def test_padded_layout():
    samples = make_samples()
    batch = collate_padded(samples, PAD)
    assert batch.input_ids.shape == (4, 12)
    assert batch.attention_mask.sum(1).tolist() == [7, 3, 12, 5]
    assert batch.input_ids[1, 3:].eq(PAD).all() and batch.labels[1, 3:].eq(-100).all()
    assert batch.position_ids[1].tolist() == [0, 1, 2] + [0] * 9
    assert batch.labels[0, 6] == -100  # last real token of a sample is not trained


def pairs(input_ids, labels, keep):
    return Counter(zip(input_ids[keep].tolist(), labels[keep].tolist(), strict=True))


def test_packed_and_padded_give_the_same_token_label_pairs():
    samples = make_samples()
    packed, padded = collate_packed(samples), collate_padded(samples, PAD)
    packed_pairs = pairs(
        packed.input_ids[0],
        packed.labels[0],
        torch.ones(packed.input_ids.shape[1], dtype=torch.bool),
    )
    padded_pairs = pairs(padded.input_ids, padded.labels, padded.attention_mask.bool())
    assert packed_pairs == padded_pairs
    assert (
        packed.num_label_tokens
        == padded.num_label_tokens
        == sum(int((s.labels[1:] != -100).sum()) for s in samples)
    )
