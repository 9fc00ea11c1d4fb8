"""Sequence parallelism pieces that need no process group: padding packs to whole shards, slicing,
the loss on shard labels, and the config refusals (tests/distributed/test_sequence_parallel.py runs
the whole thing over gloo)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmms_engine.config import validate
from lmms_engine.data.collate import collate_packed
from lmms_engine.data.types import Sample
from lmms_engine.kernels.loss import cross_entropy_sum
from lmms_engine.kernels.ulysses import repeat_kv
from lmms_engine.overrides import check_cli_overrides
from lmms_engine.parallel.sequence import SequenceParallel, check_degree, check_heads, sharded_loss
from tests.conftest import compose_config


def _pack(lengths=(5, 2, 4)):
    rng = np.random.default_rng(0)
    samples = [Sample(input_ids=(ids := rng.integers(1, 50, size=n).astype(np.int32)), labels=ids.copy(),
                      sample_id=f"s{i}") for i, n in enumerate(lengths)]
    return collate_packed(samples)


def _sp(degree: int, rank: int) -> SequenceParallel:
    return SequenceParallel(degree=degree, rank=rank, group=None, data_rank=0, data_world_size=1, data_group=None)


def test_a_pack_is_padded_to_whole_shards_with_an_untrained_document():
    batch = _pack()  # 11 tokens
    padded = batch.padded_to_multiple(4)
    assert padded.input_ids.shape == (1, 12) and padded.labels.shape == (1, 12)
    assert padded.labels[0, -1].item() == -100 and padded.input_ids[0, -1].item() == 0
    assert padded.cu_seqlens.tolist() == [0, 5, 7, 11, 12]
    assert padded.position_ids[0, -1].item() == 0  # the pad document's positions start at 0
    assert padded.max_seqlen == 5
    assert (padded.num_label_tokens, padded.doc_lengths) == (batch.num_label_tokens, batch.doc_lengths)
    assert torch.equal(padded.input_ids[:, :11], batch.input_ids)
    assert batch.padded_to_multiple(11) is batch and batch.padded_to_multiple(1) is batch


def test_mrope_positions_are_padded_on_every_axis():
    batch = _pack()
    batch = batch.with_fields(position_ids=batch.position_ids.expand(3, 1, 11).clone())
    padded = batch.padded_to_multiple(8)
    assert padded.position_ids.shape == (3, 1, 16)
    assert padded.position_ids[:, 0, 11:].tolist() == [list(range(5))] * 3


def test_shards_are_contiguous_and_cover_the_sequence():
    x = torch.arange(12).view(1, 12)
    parts = [_sp(3, r).shard(x, -1) for r in range(3)]
    assert [p.tolist() for p in parts] == [[[0, 1, 2, 3]], [[4, 5, 6, 7]], [[8, 9, 10, 11]]]
    with pytest.raises(AssertionError, match="multiple of sp_degree"):
        _sp(5, 0).shard(x, -1)


def test_shard_losses_sum_to_the_whole_pack_loss():
    torch.manual_seed(0)
    hidden, weight = torch.randn(1, 12, 8), torch.randn(20, 8)
    labels = torch.randint(0, 20, (1, 12))
    labels[0, [2, 7]] = -100
    whole = cross_entropy_sum(hidden, weight, labels)
    parts = [sharded_loss(cross_entropy_sum, _sp(2, r))(_sp(2, r).shard(hidden, 1), weight, labels) for r in range(2)]
    assert torch.allclose(sum(parts), whole, atol=1e-5)


def test_repeat_kv_gives_each_query_head_its_group():
    kv = torch.arange(2).view(1, 2, 1, 1).float()
    assert repeat_kv(kv, 6).flatten().tolist() == [0, 0, 0, 1, 1, 1]


def test_degree_and_heads_errors_name_the_key_and_counts():
    with pytest.raises(ValueError, match=r"parallel.sp_degree=3 does not divide the 4 ranks"):
        check_degree(3, 4)
    with pytest.raises(ValueError, match=r"parallel.sp_degree=0 must be a positive integer"):
        check_degree(0, 4)
    with pytest.raises(ValueError, match=r"parallel.sp_degree=8 must divide the model's attention heads "
                                         r"\(num_attention_heads=12, num_key_value_heads=2\)"):
        check_heads(8, 12, 2)
    check_heads(4, 12, 2)  # kv heads not divisible: repeated, not refused


@pytest.mark.parametrize("overrides, message", [
    (["parallel=fsdp2", "parallel.sp_degree=3"], r"parallel.sp_degree=3 must divide the model's attention heads"),
    (["parallel=fsdp2", "parallel.sp_degree=2", "data.packing=false"], r"needs padding-free batches"),
    (["parallel=fsdp2", "parallel.sp_degree=0"], r"parallel.sp_degree=0 is out of range"),
    (["parallel=ddp", "+parallel.sp_degree=2"], r"runs with parallel=fsdp2 only, not lmms_engine.parallel.ddp.DDP"),
    (["model=qwen2_5_1_5b", "parallel=fsdp2", "parallel.sp_degree=8"], r"num_attention_heads=12"),
    (["model=tiny_qwen3_vl", "parallel=fsdp2", "parallel.sp_degree=2"], r"not supported for model._target_=.*qwen3_vl"),
])
def test_config_refusals(overrides, message):
    with pytest.raises(ValueError, match=message):
        validate(compose_config(*overrides))


def test_sp_degree_on_another_strategy_names_fsdp2_on_the_command_line():
    with pytest.raises(ValueError, match=r"parallel.sp_degree is a key of parallel=fsdp2 only"):
        check_cli_overrides(["parallel=zero2", "parallel.sp_degree=2"])


def test_sp_with_rmpad_on_unpacked_data_and_vl_heads_validate():
    validate(compose_config("parallel=fsdp2", "parallel.sp_degree=2", "data.packing=false", "kernels=rmpad"))
    validate(compose_config("parallel=fsdp2", "parallel.sp_degree=4", vl=True))


def test_a_million_token_packing_length_is_accepted():
    validate(compose_config("data.packing_length=1048576", "data.overlong=truncate"))
